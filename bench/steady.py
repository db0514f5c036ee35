"""Figure 6: CPU per event of the whole pipeline at a steady, realistic load.

Issue 14's second regime: not a saturated blast (where batches grow large and wake-ups are
amortised) but a fixed rate well under the machine's capacity, where every event can cost
each process a wake-up.  The sandbox sends MESSAGE_CREATE at a fixed rate spread evenly over
the shards (figure 4's paced sender, :func:`bench.latency.generate`) for a fixed time:
16 shards x 250 events/s and 256 shards x 16 events/s, zlib-stream.  The pipeline is the
supervisor, 2 workers and a ``shardctl.Consumer`` process reading each event's ``d``; the
reference is one process doing websocket receive + inflate + JSON parse for the same shards
at the same rate (:mod:`bench.reference`).  CPU is utime + stime from the first event sent to
the reader's last event.  The consumer also stamps each event, so the table shows what the
pipeline adds to latency (worker receive stamp → consumer receive, one clock).  The
supervisor's CPU per event is printed against the floor of any forwarding process at the
same rate: libzmq's own C proxy, one message per event (:mod:`bench.hop_floor`).  Last,
16 x 250/s again with the workers' batching window (``--publish-window-ms``,
``BENCH_PUBLISH_WINDOW_MS``, default 2): what coalescing saves and what latency it costs
(full runs only).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    BATCH_WINDOW_MS,
    INTENTS,
    PUBLISH_WINDOW_MS,
    Figure,
    child,
    cluster,
    cpu_seconds,
    log,
    percentile,
    wait_subscribed,
)
from bench.latency import generate
from bench.throughput import split
from shardctl.sandbox import Sandbox, SandboxConfig

WORKERS = 2


@dataclass(frozen=True, slots=True)
class Regime:
    shards: int
    per_shard: float  # events/s per shard

    @property
    def name(self) -> str:
        return f"{self.shards} x {self.per_shard:g}/s"

    @property
    def rate(self) -> float:
        return self.shards * self.per_shard

    def total(self, seconds: float) -> int:
        return int(self.per_shard * seconds) * self.shards


REGIMES = (Regime(16, 250.0), Regime(256, 16.0))


def sandbox_config(regime: Regime) -> SandboxConfig:
    return SandboxConfig(shard_count=regime.shards, max_concurrency=regime.shards,
                         identify_interval=0.05, guilds_per_shard=1, record_dispatches=False,
                         replay_buffer=256, session_start_total=100_000)


async def paced(sb: Sandbox, regime: Regime, seconds: float, pids: list[int],
                finished: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Send at the regime's rate; CPU of ``pids`` from the start to the reader's report."""
    await anyio.sleep(0.5)  # let the READY burst's garbage settle
    per0 = [cpu_seconds(pid) for pid in pids]
    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        result: dict[str, Any] = {}

        async def read() -> None:
            result.update(await finished())

        tg.start_soon(read)
        sent = await generate(sb, seconds, regime.rate)
    per1 = [cpu_seconds(pid) for pid in pids]
    span = time.monotonic() - t0
    count = result.get("count", 0)
    used = [b - a for a, b in zip(per0, per1, strict=True)]
    return {"sent": sent, "count": count, "missed": result.get("missed", 0),
            "lost": max(sent - count, result.get("missed", 0)), "span_s": span,
            "cpu_s": sum(used), "cpu_us": sum(used) * 1e6 / count if count else float("nan"),
            "cpu_us_per_process": [round(u * 1e6 / max(1, count), 2) for u in used],
            "core_pct_per_process": [round(u * 100 / span, 1) for u in used]}


def added_latency(stamps: Path) -> dict[str, float]:
    """Worker receive stamp → consumer receive, from consumer_proc's ``--stamps`` file."""
    added = []
    for line in stamps.read_text().splitlines():
        _, _, ns, worker_ns = (int(x) for x in line.split())
        added.append((ns - worker_ns) / 1e6)
    return {"added_p50_ms": percentile(added, 50), "added_p99_ms": percentile(added, 99)}


async def run_pipeline(regime: Regime, seconds: float,
                       publish_window_ms: float = 0.0) -> dict[str, Any]:
    total = regime.total(seconds)
    with tempfile.TemporaryDirectory() as tmp:
        stamps = Path(tmp) / "stamps"
        async with Sandbox(sandbox_config(regime)) as sb, \
                cluster(sb, processes=WORKERS, identify_interval=0.05,
                        batch_window_ms=BATCH_WINDOW_MS,
                        publish_window_ms=publish_window_ms) as c, \
                child("consumer_proc", *c.consumer_args(), "--expect", str(total),
                      "--idle", "5", "--parse", "--stamps", str(stamps)) as consumer:
            await wait_subscribed(sb, consumer)
            got = await paced(sb, regime, seconds, [*c.pids, consumer.pid],
                              lambda: consumer.expect("count", seconds + 60.0))
            got["violations"] = len(sb.violations)
        got.update(added_latency(stamps))
    return got


async def run_reference(regime: Regime, seconds: float) -> dict[str, Any]:
    async with Sandbox(sandbox_config(regime)) as sb, \
            child("reference", "--url", sb.gateway_url, "--compress", "zlib-stream",
                  "--shards", str(regime.shards), "--expect", str(regime.total(seconds)),
                  "--intents", str(INTENTS)) as ref:
        await ref.expect("ready", 120.0)
        return await paced(sb, regime, seconds, [ref.pid],
                           lambda: ref.expect("count", seconds + 60.0))


async def hop_floor(rate: float, count: int) -> float:
    """CPU per message of libzmq's own proxy at ``rate`` (:mod:`bench.hop_floor`)."""
    async with child("hop_floor", "--rate", str(rate), "--count", str(count)) as floor:
        got = await floor.expect("cpu_us", 120.0)
    return float(got["cpu_us"])


async def run(quick: bool) -> list[Figure]:
    seconds = 2.5 if quick else 10.0
    figures: list[Figure] = []
    refs: dict[Regime, dict[str, Any]] = {}
    for regime in REGIMES:
        log(f"steady {regime.name} ({regime.rate:.0f} events/s, {seconds:g} s): reference")
        ref = await run_reference(regime, seconds)
        log(f"  reference: {ref['cpu_us']:.1f} µs/event, {ref['count']}/{ref['sent']}")
        refs[regime] = ref
        floor = await hop_floor(regime.rate, regime.total(seconds))
        log(f"  libzmq proxy floor: {floor:.1f} µs/message")
        log(f"steady {regime.name}: pipeline, {WORKERS} workers, a parsing consumer")
        got = await run_pipeline(regime, seconds)
        log(f"  pipeline: {got['cpu_us']:.1f} µs/event ({split(got, 1)}), lost {got['lost']}, "
            f"added latency p50 {got['added_p50_ms']:.2f} ms, p99 {got['added_p99_ms']:.2f} ms")
        name = f"6 {regime.name}"
        if not quick:  # the same stream through the least pipeline of this shape
            from bench import floor as least  # it builds on this module

            figures += await least.against(name, ref, got, compression="zlib-stream",
                                           shards=regime.shards, paced_rate=regime.rate,
                                           per_shard=int(regime.per_shard * seconds),
                                           limit="2x", digits=1)
        figures += [
            Figure(f"{name} cpu/event ({split(got, 1)})", round(got["cpu_us"], 1), "µs",
                   round(ref["cpu_us"], 1), "≤ 2x reference", 2.0,
                   extra={"pipeline": got, "reference": ref, "seconds": seconds}),
            Figure(f"{name} supervisor cpu/event (reference: libzmq's C proxy, same rate)",
                   got["cpu_us_per_process"][0], "µs", round(floor, 1),
                   "≤ 1 µs", 1.0, compare="value"),
            Figure(f"{name} added latency p99 (worker → consumer)",
                   round(got["added_p99_ms"], 3), "ms", None, "informational (what coalescing "
                   "may cost)"),
            Figure(f"{name} events lost", got["lost"], "events", None, "0", 0,
                   compare="value"),
        ]
    if quick:  # its cluster's start-up would take --quick past two minutes
        return figures
    return figures + await coalesced(REGIMES[0], refs[REGIMES[0]], seconds)


async def coalesced(regime: Regime, ref: dict[str, Any], seconds: float) -> list[Figure]:
    """The same regime with the workers' batching window (``--publish-window-ms``): fewer
    messages, so fewer wake-ups on every hop, for the latency the p99 row shows.  Against
    the reference measured above for the same regime."""
    window = PUBLISH_WINDOW_MS
    log(f"steady {regime.name}: pipeline with a {window:g} ms publish window")
    got = await run_pipeline(regime, seconds, publish_window_ms=window)
    log(f"  pipeline: {got['cpu_us']:.1f} µs/event ({split(got, 1)}), lost {got['lost']}, "
        f"added latency p50 {got['added_p50_ms']:.2f} ms, p99 {got['added_p99_ms']:.2f} ms")
    name = f"6 {regime.name}, {window:g} ms publish window"
    return [
        Figure(f"{name} cpu/event ({split(got, 1)})", round(got["cpu_us"], 1), "µs",
               round(ref["cpu_us"], 1), "≤ 2x reference", 2.0,
               extra={"pipeline": got, "seconds": seconds, "publish_window_ms": window}),
        Figure(f"{name} added latency p99 (worker → consumer)", round(got["added_p99_ms"], 3),
               "ms", None, "informational (what the window costs)"),
        Figure(f"{name} events lost", got["lost"], "events", None, "0", 0, compare="value"),
    ]
