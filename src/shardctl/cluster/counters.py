"""Cumulative per-shard event counts that survive worker restarts.

A worker reports, with every state report, how many events of each bus type each of its
shards has seen since *that worker process* started.  A respawned worker starts again from
zero, so the supervisor keeps, per shard, the totals of the processes before the current
one and adds the current one's report: the sum only ever grows, as a Prometheus counter
must.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from shardctl.gateway.lifecycle import SHARD_DISCONNECT, SHARD_RESUMED

#: Bus names of the lifecycle events the counters single out (DESIGN.md §4).
DISCONNECT: Final = SHARD_DISCONNECT
RESUMED: Final = SHARD_RESUMED
#: Every successful IDENTIFY ends with exactly one READY dispatch.
READY: Final = "READY"


#: The base of a shard no earlier process counted for (most shards, most of the time): one
#: shared empty mapping rather than an empty dict each; never changed, only replaced.
_NO_BASE: Final[Mapping[str, int]] = MappingProxyType({})


class _ShardTotals:
    __slots__ = ("base", "current", "pid")

    def __init__(self) -> None:
        self.pid: int | None = None
        self.base: Mapping[str, int] = _NO_BASE
        self.current: dict[str, int] = {}


class EventTotals:
    """``observe(shard, pid, counts)`` after each report; ``totals(shard)`` at any time."""

    def __init__(self) -> None:
        self._shards: dict[int, _ShardTotals] = {}

    def observe(self, shard_id: int, pid: int | None, counts: Any) -> None:
        if not isinstance(counts, Mapping):
            return
        entry = self._shards.setdefault(shard_id, _ShardTotals())
        if pid != entry.pid:
            # A new process: what the old one counted is final; fold it into the base (a new
            # dict: a snapshot being read off the loop keeps the old one whole).
            if entry.current:
                base = dict(entry.base)
                for name, value in entry.current.items():
                    base[name] = base.get(name, 0) + value
                entry.base = base
            entry.pid, entry.current = pid, {}
        entry.current = {str(k): int(v) for k, v in counts.items()
                         if isinstance(v, int) and v >= 0}

    def snapshot(self) -> tuple[dict[int, Mapping[str, int]], dict[int, Mapping[str, int]]]:
        """Per shard, the two dicts whose sum is :meth:`totals`: (bases, currents).

        Cheap (no count is copied) and safe to read from another thread: ``observe`` only
        ever replaces these dicts, never changes one (``/metrics`` renders off the loop).
        Two flat dicts rather than a pair per shard: nothing per shard for the garbage
        collector to track.
        """
        shards = self._shards
        return ({i: e.base for i, e in shards.items()},
                {i: e.current for i, e in shards.items()})

    def totals(self, shard_id: int) -> dict[str, int]:
        entry = self._shards.get(shard_id)
        if entry is None:
            return {}
        out = dict(entry.base)
        for name, value in entry.current.items():
            out[name] = out.get(name, 0) + value
        return out

    def total(self, shard_id: int) -> int:
        """Every event of one shard, of every type."""
        return sum(self.totals(shard_id).values())
