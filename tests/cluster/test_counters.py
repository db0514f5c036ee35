"""Event counts reported by workers stay cumulative across worker restarts."""

from __future__ import annotations

from shardctl.cluster.counters import EventTotals


def test_counts_of_a_replaced_worker_are_kept() -> None:
    totals = EventTotals()
    totals.observe(3, pid=100, counts={"READY": 1, "MESSAGE_CREATE": 10})
    totals.observe(3, pid=100, counts={"READY": 1, "MESSAGE_CREATE": 25})
    assert totals.totals(3) == {"READY": 1, "MESSAGE_CREATE": 25}
    # The respawned worker counts from zero again; the sum never goes down.
    totals.observe(3, pid=200, counts={"SHARD_RESUMED": 1, "MESSAGE_CREATE": 2})
    assert totals.totals(3) == {"READY": 1, "MESSAGE_CREATE": 27, "SHARD_RESUMED": 1}
    assert totals.total(3) == 29
    assert totals.totals(4) == {}


def test_malformed_counts_are_ignored() -> None:
    totals = EventTotals()
    totals.observe(0, pid=1, counts=None)
    totals.observe(0, pid=1, counts={"A": -1, "B": "x", "C": 2})
    assert totals.totals(0) == {"C": 2}


def test_a_snapshot_keeps_its_counts_when_a_worker_is_replaced() -> None:
    # /metrics renders a snapshot in a thread while the loop takes new reports: the
    # snapshot's dicts must never change under it, or a counter could go down.
    totals = EventTotals()
    totals.observe(3, pid=100, counts={"READY": 1, "MESSAGE_CREATE": 10})
    totals.observe(4, pid=100, counts={"READY": 1})
    bases, currents = totals.snapshot()
    totals.observe(3, pid=200, counts={"SHARD_RESUMED": 1})
    totals.observe(3, pid=300, counts={"MESSAGE_CREATE": 5})
    assert (bases[3], currents[3]) == ({}, {"READY": 1, "MESSAGE_CREATE": 10})
    assert (bases[4], currents[4]) == ({}, {"READY": 1})
    bases, currents = totals.snapshot()
    assert {**bases[3]} == {"READY": 1, "MESSAGE_CREATE": 10, "SHARD_RESUMED": 1}
    assert currents[3] == {"MESSAGE_CREATE": 5}
