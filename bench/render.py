"""``python -m bench.render [--shards N]``: what ``/metrics`` and ``status`` cost the supervisor.

Not a figure of ``scripts/bench`` (that one, figure 8, runs a real 10,000-shard cluster for
10 minutes): a seconds-long check of the answer paths alone.  A :class:`Supervisor` that is
never entered holds ``N`` synthetic shards in 4 workers, reported the way workers report them
(``ShardStatus.observe``, ``EventTotals.observe``); its real ``/metrics`` server and its real
control loop answer requests over loopback, while a task on the same event loop wakes every
millisecond and records the longest gap between two wake-ups (the loop's longest stall).
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_process
import httpx
import orjson

from shardctl.cluster.metrics import serve_metrics
from shardctl.cluster.supervisor import ShardStatus, Supervisor
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc import control_messages as wire
from shardctl.ipc.control import ControlServer
from shardctl.ipc.status import request_status

WORKERS = 4
TYPES = ("READY", "GUILD_CREATE", "MESSAGE_CREATE", "SHARD_DISCONNECT", "SHARD_RESUMED")


def synthetic(shards: int) -> Supervisor:
    """A supervisor holding ``shards`` READY shards with latencies and event counts."""
    rng = random.Random(14)
    sup = Supervisor(token="bench-token", api_url="http://127.0.0.1:9", processes=WORKERS)
    per = -(-shards // WORKERS)
    sup.slots = [WorkerSlot(w, list(range(w * per, min(shards, (w + 1) * per))))
                 for w in range(WORKERS)]
    now = time.time()
    for slot in sup.slots:
        slot.pid = 10_000 + slot.index
        for shard_id in slot.shard_ids:
            counts = {t: rng.randrange(1, 5_000_000) for t in TYPES}
            report = wire.ShardReport(
                shard_id, "ready", session_id=f"s{shard_id:032x}",
                resume_gateway_url="wss://gateway.discord.gg", seq=rng.randrange(1, 10**6),
                latency=rng.uniform(0.02, 0.2), guilds=rng.randrange(0, 2_500),
                last_event=now - rng.uniform(0, 60), counts=counts)
            status = sup._status[shard_id] = ShardStatus(shard_id, worker=slot.index)
            status.observe(report, slot.pid, lambda _url: True)
            sup.event_totals.observe(shard_id, slot.pid, counts)
    return sup


class GcPauses:
    """The collector's pauses longer than 3 ms (``--gc``): they stop every thread."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif (took := time.perf_counter() - self._start) > 0.003:
            self.pauses.append((info["generation"], round(took * 1000, 1)))


class StallMeter:
    """The longest time the loop took to wake a task that asked to sleep ``tick`` s."""

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self.longest = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(self.tick)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - self.tick)
            last = now


def scrape_once(port: int) -> tuple[float, int]:
    """In a client process: seconds and bytes of one ``GET /metrics``."""
    t0 = time.perf_counter()
    got = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60)
    got.raise_for_status()
    return time.perf_counter() - t0, len(got.content)


def status_once(endpoint: str, shards: int) -> tuple[float, int]:
    """In a client process: seconds and JSON bytes of one ``status`` as the CLI asks it."""
    t0 = time.perf_counter()
    body = anyio.run(request_status, endpoint, backend="asyncio")
    took = time.perf_counter() - t0
    assert len(body["shards"]) == shards
    return took, len(orjson.dumps(body))


async def measure(shards: int, rounds: int, gc_pauses: GcPauses | None = None) -> None:
    sup = synthetic(shards)
    gc.collect()  # the set-up's debt: a full collection would come due during the first answers
    if gc_pauses is not None:
        gc.callbacks.append(gc_pauses)
    with tempfile.TemporaryDirectory(prefix="sc-") as tmp:
        control = ControlServer(f"ipc://{Path(tmp) / 'control.sock'}")
        sup._control = control
        meter = StallMeter()
        async with anyio.create_task_group() as tg:
            sup._tg = tg
            port = await tg.start(serve_metrics, sup, 0)
            tg.start_soon(sup._control_loop, control)
            tg.start_soon(meter.run)
            # The clients are other processes, as Prometheus and the CLI are: their parsing
            # is not the supervisor's.
            for name, ask in (("/metrics", functools.partial(scrape_once, port)),
                              ("status", functools.partial(status_once, control.endpoint,
                                                           shards))):
                took, stalls = [], []
                for _ in range(rounds):
                    meter.longest = 0.0
                    seconds, size = await anyio.to_process.run_sync(ask)
                    took.append(seconds)
                    stalls.append(meter.longest)
                if gc_pauses is not None:
                    print(f"  each: {[round(x * 1000) for x in took]} ms, stalls "
                          f"{[round(x * 1000, 1) for x in stalls]} ms; gc pauses (generation, "
                          f"ms) {gc_pauses.pauses}")
                    gc_pauses.pauses.clear()
                print(f"{name:9} {shards} shards: median {statistics.median(took) * 1000:6.1f} ms,"
                      f" max {max(took) * 1000:6.1f} ms; longest loop stall "
                      f"{max(stalls) * 1000:5.1f} ms; {size:,} bytes")
            tg.cancel_scope.cancel()
        control.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gc", action="store_true",
                        help="print each answer's time and stall, and the collector's pauses")
    args = parser.parse_args()
    anyio.run(measure, args.shards, args.rounds, GcPauses() if args.gc else None,
              backend="asyncio")


if __name__ == "__main__":
    main()
