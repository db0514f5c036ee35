"""Bytes per shard of the supervisor's per-shard state, by structure (tracemalloc).

``python -m bench.supervisor_state [SHARDS]`` (default 10,000 in 4 workers) builds, without
processes or sockets, what a supervisor holds for idle READY shards, through the same calls
the running supervisor makes: each worker's ``state`` report decoded from its wire bytes
and taken by :class:`~shardctl.cluster.supervisor.ShardStatus` and
:class:`~shardctl.cluster.counters.EventTotals`, the bus's watermark in the session book,
the forwarder's sent marks (:class:`~shardctl.ipc.unsent.SentMarks`) for a READY and two
GUILD_CREATEs, and the checkpoint's records.  The forwarder's own counters (``ipc/bus.py``)
are built as it builds them, for the total.  It prints the traced bytes each structure keeps
per shard; RSS also carries the allocator's high-water mark, which this does not see.
"""

from __future__ import annotations

import gc
import secrets
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from shardctl.cluster.core.book import SessionBook
from shardctl.cluster.core.inputs import Watermark
from shardctl.cluster.counters import EventTotals
from shardctl.cluster.sessions import SessionRecord
from shardctl.cluster.supervisor import ShardStatus
from shardctl.ipc import control_messages as wire
from shardctl.ipc.unsent import ENGINE_MARGIN, SentMarks

WORKERS = 4
RESUME_URL = "wss://gateway-us-east1-b.discord.gg"
#: What an idle shard has seen once READY (bus types and counts, as a worker reports them).
COUNTS = {"READY": 1, "GUILD_CREATE": 2, "SHARD_READY": 1}
SEQ_TYPES = ("READY", "GUILD_CREATE", "GUILD_CREATE")


def _key(t: str, shard: int) -> bytes:
    """The forwarder's counter key: type NUL version shard (u32)."""
    return t.encode() + b"\0\x03" + shard.to_bytes(4, "big")


def _report_bytes(shards: range, sessions: dict[int, str]) -> bytes:
    state = wire.State(tuple(
        wire.ShardReport(i, "ready", sessions[i], RESUME_URL, 3, 0.0412, 2, 1.7e9 + i / 7,
                         None, dict(COUNTS)) for i in shards), 40000 + shards.start)
    kind, body = wire.to_wire(state)
    assert kind == "state"
    return orjson.dumps(body)


def build(n: int) -> list[tuple[str, int]]:
    """Build each structure in turn; (name, traced bytes it keeps) for each."""
    sessions = {i: secrets.token_hex(16) for i in range(n)}
    per = -(-n // WORKERS)
    reports = [_report_bytes(range(w * per, min(n, (w + 1) * per)), sessions)
               for w in range(WORKERS)]
    kept: list[Any] = []
    sizes: list[tuple[str, int]] = []

    def measure(name: str, make: Callable[[], Any]) -> None:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        kept.append(make())
        gc.collect()
        sizes.append((name, tracemalloc.get_traced_memory()[0] - before))

    def reported() -> list[wire.State]:
        out = []
        for data in reports:
            state = wire.parse("state", orjson.loads(data), sender="peer")
            assert isinstance(state, wire.State)
            out.append(state)
        return out

    def statuses() -> dict[int, ShardStatus]:
        status = {i: ShardStatus(i, worker=i // per) for i in range(n)}
        for state in reported():
            for item in state.shards:
                status[item.id].observe(item, state.pid, lambda url: True)
        return status

    def totals() -> EventTotals:
        out = EventTotals()
        for state in reported():
            for item in state.shards:
                out.observe(item.id, state.pid, item.counts)
        return out

    def book() -> SessionBook:
        b = SessionBook()
        for i in range(n):  # the strings come from each READY's own parse
            b.observe(Watermark(i, orjson.loads(f'"{sessions[i]}"'),
                                orjson.loads(f'"{RESUME_URL}"'), 3))
        return b

    counters: dict[bytes, int] = {}

    def forwarder_counters() -> dict[bytes, int]:
        for i in range(n):
            for t in (*SEQ_TYPES, "SHARD_READY"):
                key = _key(t, i)
                counters[key] = counters.get(key, 0) + 1
        return counters

    def sent_marks() -> SentMarks:
        # as the forwarder calls it, message by message (counters as they stood then)
        marks = SentMarks(1000 + ENGINE_MARGIN)
        running: dict[bytes, int] = {}
        for i in range(n):
            for seq, t in enumerate(SEQ_TYPES, 1):
                key = _key(t, i)
                bus_seq = running[key] = running.get(key, 0) + 1
                if not (bus_seq - 1) & marks.mask:
                    marks.note(key, bus_seq, seq)
                if t == "READY":
                    marks.session_started(i, seq, running)
        running.clear()
        return marks

    def checkpoint() -> dict[int, SessionRecord]:
        return {i: SessionRecord(i, sessions[i], RESUME_URL, 3) for i in range(n)}

    measure("status (ShardStatus, from 4 state reports)", statuses)
    measure("event totals (EventTotals)", totals)
    measure("session book (Watermark)", book)
    measure("sent marks (ipc/unsent.py SentMarks)", sent_marks)
    measure("checkpoint's records (SessionRecord)", checkpoint)
    measure("forwarder counters (ipc/bus.py, not changed)", forwarder_counters)
    return sizes


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 10_000
    tracemalloc.start()
    sizes = build(n)
    width = max(len(name) for name, _ in sizes)
    print(f"supervisor state per shard, {n:,} idle READY shards in {WORKERS} workers")
    for name, size in sizes:
        print(f"  {name:<{width}}  {size / n:7.0f} B")
    print(f"  {'total':<{width}}  {sum(size for _, size in sizes) / n:7.0f} B")


if __name__ == "__main__":
    main(sys.argv[1:])
