"""Shard lifecycle event names, defined once (DESIGN.md §4; lacord's output events).

A shard reports them among its dispatches: the machine emits them, the Shard's ``output``
callback receives them, the worker publishes them on the event bus, and the supervisor
counts them.  They live here, the lowest layer, so that gateway/, worker/, ipc/ and
cluster/ all read the same strings without importing upward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

SHARD_READY: Final = "SHARD_READY"
SHARD_RESUMED: Final = "SHARD_RESUMED"
INVALID_SESSION: Final = "INVALID_SESSION"
#: The connection closed: lacord's name, what the Shard's ``output`` callback receives.
DISCONNECT: Final = "DISCONNECT"
#: The same event on the bus, where every lifecycle type says it is about a shard
#: (README "Event types").
SHARD_DISCONNECT: Final = "SHARD_DISCONNECT"

#: The cluster switched its event bus to a new shard set (a reshard): published by the
#: supervisor, not by a shard, once per shard id of the new set (README "Resharding").
RESHARD: Final = "RESHARD"

#: Shard event name → its type on the bus.
BUS_TYPE: Final[Mapping[str, str]] = {
    SHARD_READY: SHARD_READY,
    SHARD_RESUMED: SHARD_RESUMED,
    INVALID_SESSION: INVALID_SESSION,
    DISCONNECT: SHARD_DISCONNECT,
}
#: Lifecycle types on the bus: no gateway ``s``, and flushed at once rather than batched.
BUS_TYPES: Final = frozenset({*BUS_TYPE.values(), RESHARD})
