"""Chaos: 16 shards for 2 minutes under random faults from a seeded schedule.

A steady stream of MESSAGE_CREATE goes to every shard while faults land on random shards
(op 7 and op 9 both ways, TCP drops, zombies, closes 4000/4007/4008/4009, a corrupt and a
non-JSON frame, server heartbeat requests), on random workers (kill -9, SIGSTOP) and on
the whole gateway (a short outage).  At the end, the ``chaoskit`` contract must hold:
every message sent reaches the consumer process exactly once and every session is
contiguous; IDENTIFYs are exactly the first 16 plus one per session-ending fault; no
pacing or other protocol violation.  ``CHAOS_SEED`` replays a run; ``CHAOS_SECONDS``
shortens it locally.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections import Counter
from typing import Any

import anyio
import pytest
from chaoskit import Cluster, cluster, sandbox_config
from clusterkit import accepted_identifies, resumes

from shardctl.cluster.restarts import RestartPolicy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SEED = int(os.environ.get("CHAOS_SEED", "20261128"))
DURATION = float(os.environ.get("CHAOS_SECONDS", "120"))
SHARDS = 16

#: Faults on one shard's socket, with their weights.  ``True``: the session survives.
SOCKET_FAULTS: list[tuple[Any, bool, int]] = [
    ("reconnect", True, 4),
    (("invalid_session", True), True, 2),
    (("invalid_session", False), False, 2),
    ("drop", True, 4),
    ("zombie", True, 2),
    (("close", 4000), True, 2),
    (("close", 4008), True, 1),
    (("close", 4007), False, 1),
    (("close", 4009), False, 1),
    ("corrupt_frame", True, 2),
    ("not_json", True, 2),
    ("request_heartbeat", True, 2),
]


class Chaos:
    def __init__(self, c: Cluster, rng: random.Random) -> None:
        self.c, self.rng = c, rng
        self.injected: Counter[str] = Counter()
        self.ending: Counter[int] = Counter()  # shard → session-ending faults it got
        self.quiet_until: dict[int, float] = {}

    def calm(self, shard: int) -> bool:
        """A live, authenticated session, not just (re)started, with no fault in flight."""
        sb, now = self.c.sb, self.c.sb.now()
        if now < self.quiet_until.get(shard, 0.0):
            return False
        conns = sb.live_connections(shard)
        if len(conns) != 1 or not conns[0].authed or conns[0].session is None:
            return False
        starts = sb.records("ready", shard) + sb.records("resumed", shard)
        return bool(starts) and now - max(r.at for r in starts) > 0.5

    async def socket_fault(self) -> None:
        calm = [s for s in self.c.shards if self.calm(s)]
        if not calm:
            return
        shard = self.rng.choice(calm)
        fault, keeps, _ = self.rng.choices(SOCKET_FAULTS, [w for *_, w in SOCKET_FAULTS])[0]
        await self.c.sb.inject(shard, fault)
        self.injected[str(fault)] += 1
        if not keeps:
            self.ending[shard] += 1
        # A zombie takes up to two heartbeat intervals to notice; op 9 false waits 1-5 s.
        self.quiet_until[shard] = self.c.sb.now() + 10.0

    async def process_fault(self) -> None:
        """kill -9 or SIGSTOP a worker whose shards are all calm; wait until they resumed."""
        calm = [slot for slot in self.c.sup.slots
                if slot.pid is not None and all(self.calm(s) for s in slot.shard_ids)]
        if not calm:
            return
        slot = self.rng.choice(calm)
        kind = self.rng.choice(["kill", "stop"])
        pid = slot.pid
        assert pid is not None
        before = {s: resumes(self.c.sb, s) for s in slot.shard_ids}
        os.kill(pid, signal.SIGKILL if kind == "kill" else signal.SIGSTOP)
        self.injected[kind] += 1
        if kind == "stop":
            self.c.excused.update(("heartbeat_late", s) for s in slot.shard_ids)
        try:
            await self.healed(before)
        finally:
            if kind == "stop":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    async def outage(self) -> None:
        """The whole gateway refuses connections for a while, once every shard is calm."""
        await anyio.sleep(max(0.0, max(self.quiet_until.values(), default=0.0)
                              - self.c.sb.now()) + 0.6)
        if not all(self.calm(s) for s in self.c.shards):
            return
        before = {s: resumes(self.c.sb, s) for s in self.c.shards}
        await self.c.sb.inject(None, ("refuse_connections", self.rng.uniform(0.5, 2.0)))
        self.injected["outage"] += 1
        await self.healed(before)

    async def healed(self, before: dict[int, int]) -> None:
        sb = self.c.sb
        await sb.wait_for(lambda: all(resumes(sb, s) > n for s, n in before.items()),
                          timeout=40)

    async def run(self, duration: float) -> None:
        start = anyio.current_time()
        end = start + duration
        outages = [start + duration * 0.4, start + duration * 0.8]
        # Whatever the seed, a worker goes down at least once (from 60 % of the run on).
        process_due = start + duration * 0.6
        while anyio.current_time() < end:
            # A fault every 0.3-1.5 s; about one in ten takes a whole worker down.
            await anyio.sleep(self.rng.uniform(0.3, 1.5))
            worker_faults = self.injected["kill"] + self.injected["stop"]
            if outages and anyio.current_time() >= outages[0]:
                outages.pop(0)
                await self.outage()
            elif self.rng.random() < 0.1 or (
                    not worker_faults and anyio.current_time() >= process_due):
                await self.process_fault()
            else:
                await self.socket_fault()


def history(c: Cluster, shard: int) -> list[str]:
    kinds = {"fault", "identify", "identify_rejected", "resume", "resume_rejected",
             "invalid_session", "server_close", "client_close", "drop"}
    return [f"{r.at:.2f} {r.kind} {r.details.get('fault') or r.details.get('code') or ''}"
            for r in c.sb.record if r.shard_id == shard and r.kind in kinds]


async def stream(c: Cluster, stop: anyio.Event) -> None:
    """One message per shard every 100 ms (160 events/s) until told to stop."""
    while not stop.is_set():
        await c.push(1)
        with anyio.move_on_after(0.1):
            await stop.wait()


@pytest.mark.timeout(240)
async def test_chaos_16_shards_2_minutes_seeded_faults() -> None:
    rng = random.Random(SEED)
    # Beats every 4 s (the sandbox closes a silent socket after 5 s), so a frozen worker,
    # found after 2.5 s of missed liveness beats, is replaced before Discord would notice.
    config = sandbox_config(SHARDS, heartbeat_interval_ms=4000, seed=SEED)
    async with cluster(SHARDS, 4, config=config, beat_interval=0.5, liveness_timeout=2.5,
                       restart_policy=lambda: RestartPolicy(max_restarts=20, window=60.0)
                       ) as c:
        first = accepted_identifies(c.sb)
        assert first == SHARDS
        chaos = Chaos(c, rng)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream, c, stop)
            await chaos.run(DURATION)
            # Let the last faults play out (op 9 false waits up to 5 s before identifying).
            await anyio.sleep(max(0.0, max(chaos.quiet_until.values(), default=0.0)
                                  - c.sb.now()))
            stop.set()
        await c.settle(timeout=60)
        print(f"chaos seed {SEED}: {sum(chaos.injected.values())} faults "
              f"{dict(chaos.injected)}; {len(c.sent)} messages")
        assert sum(chaos.injected.values()) >= DURATION / 2
        assert chaos.injected["outage"] and chaos.injected["kill"] + chaos.injected["stop"]
        c.assert_exactly_once()
        for shard in c.shards:
            assert accepted_identifies(c.sb, shard) == 1 + chaos.ending[shard], (
                f"shard {shard}: {chaos.ending[shard]} session-ending faults, but "
                f"{history(c, shard)}")
        assert not c.sb.records("resume_rejected")
