"""Lifecycle event names: one definition, and the bus types README.md promises."""

from __future__ import annotations

from shardctl.gateway import lifecycle
from shardctl.ipc import events

#: README "Event types": the lifecycle types a consumer can subscribe to.
DOCUMENTED_BUS_TYPES = {"SHARD_READY", "SHARD_RESUMED", "SHARD_DISCONNECT", "INVALID_SESSION",
                        "RESHARD"}


def test_the_bus_carries_exactly_the_documented_lifecycle_types() -> None:
    assert lifecycle.BUS_TYPES == DOCUMENTED_BUS_TYPES
    assert events.LIFECYCLE_TYPES is lifecycle.BUS_TYPES


def test_the_shards_disconnect_is_published_as_shard_disconnect() -> None:
    # lacord's output name stays DISCONNECT; on the bus every lifecycle type names the shard.
    assert lifecycle.BUS_TYPE[lifecycle.DISCONNECT] == "SHARD_DISCONNECT"
    names = (lifecycle.SHARD_READY, lifecycle.SHARD_RESUMED, lifecycle.INVALID_SESSION)
    assert all(lifecycle.BUS_TYPE[n] == n for n in names)
