"""Which shards run where: parsing shard-id ranges and spreading shards over workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shardctl.errors import ConfigurationError

#: More shards than any bot runs (the largest run tens of thousands): a bigger count or id
#: is a typo, and would only exhaust memory planning it.
MAX_SHARDS: Final = 1_000_000


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """The ``(first, last)`` ranges of ``"0-15"``, ``"3"`` or ``"0-3,8,10-11"``: the syntax
    alone, so a typo is refused before Discord is asked for the shard count."""
    ranges: list[tuple[int, int]] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ConfigurationError(
                f"invalid shard id range {part!r}: expected N or A-B") from None
        if lo < 0 or hi < lo:
            raise ConfigurationError(f"invalid shard id range {part!r}")
        if hi >= MAX_SHARDS:
            raise ConfigurationError(
                f"shard id {hi} is out of range: ids are below {MAX_SHARDS}")
        ranges.append((lo, hi))
    if not ranges:
        raise ConfigurationError(f"no shard ids in {text!r}")
    return ranges


def parse_shard_ids(text: str, shard_count: int) -> list[int]:
    """Parse ``"0-15"``, ``"3"`` or ``"0-3,8,10-11"`` into sorted unique ids below the count."""
    ids: set[int] = set()
    for lo, hi in parse_ranges(text):
        if hi >= shard_count:
            raise ConfigurationError(
                f"shard id {hi} is out of range for {shard_count} shards (ids 0-{shard_count - 1})")
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def plan(shard_ids: Sequence[int], processes: int) -> list[list[int]]:
    """Deal shards to workers round-robin.

    Consecutive shard ids fall in different identify buckets, so dealing them round-robin
    spreads each identify round (and its burst of READY/GUILD_CREATE work) over every worker.
    """
    if processes < 1:
        raise ConfigurationError(f"processes must be at least 1 (got {processes})")
    ordered = sorted(set(shard_ids))
    workers = min(processes, len(ordered)) or 1
    return [ordered[i::workers] for i in range(workers)]
