"""Figure 8: 10,000 idle zlib-stream shards in 4 workers, held for 10 minutes (full run only).

The sandbox runs as a fleet of processes on one port (:mod:`shardctl.sandbox.fleet`): one
Python process cannot hold 10,000 sockets and answer every beat on time.  /gateway/bot grants
``max_concurrency`` 256 (what Discord gives very large bots) at Discord's 5 s per bucket, so
the cluster's READY time has an ideal of ``(ceil(N / 256) - 1) * 5`` s; the fleet checks that
pace over all its members.

- READY: seconds from starting the supervisor to every shard READY, against the ideal pace.
- RSS per shard: /proc/<pid>/statm of the workers at N shards, minus an empty cluster's
  (one shard per worker), over N - 4; the same with the supervisor counted, beside it.
- The hold: for ``--scale-minutes`` the fleet counts new IDENTIFYs, RESUMEs, closes, drops,
  rule violations and beats later than the sandbox's tolerance (heartbeat_interval x 1.25);
  every one is a fault.  The longest gap between two beats of a socket is printed.
- Start-up pace: pairs of IDENTIFYs of one bucket the fleet stamped less than 5 s apart,
  over all its processes (each stamps on its own busy event loop, as Discord's servers do),
  a row of its own: a start-up fault is not a fault of the hold.
- ``shardctl status --json`` and ``/metrics``: the slowest answer of several asked during
  the hold (the status request on the control channel as the CLI sends it, and the CLI run
  as a process, which adds Python's start-up), against 1 s.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import anyio
import httpx

from bench.common import Cluster, Figure, cluster, log, total_rss
from shardctl.ipc.status import request_status
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.sandbox.fleet import Fleet, fleet, order_warnings

WORKERS = 4
LIMIT_KB = 60.0
ANSWER_LIMIT = 1.0
INTERVAL = 5.0
FAULT_KINDS = ("identify", "resume", "client_close", "server_close", "drop", "violation",
               "late_heartbeats")


@dataclass(frozen=True, slots=True)
class Settings:
    shards: int = 10_000
    minutes: float = 10.0
    max_concurrency: int = 256
    sandbox_processes: int = 4


def config(shards: int, max_concurrency: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=min(shards, max_concurrency),
                         identify_interval=INTERVAL, guilds_per_shard=1, members_per_guild=5,
                         record_dispatches=False, session_start_total=100_000)


def shortest_gap(cfg: SandboxConfig, identifies: list[tuple[int, float]]) -> float:
    """The shortest gap between two IDENTIFYs of one bucket as the fleet stamped them."""
    last: dict[int, float] = {}
    shortest = math.inf
    for shard, at in sorted(identifies, key=lambda x: x[1]):
        bucket = shard % cfg.max_concurrency
        if bucket in last:
            shortest = min(shortest, at - last[bucket])
        last[bucket] = at
    return shortest


def ideal_ready(shards: int, max_concurrency: int) -> float:
    return (math.ceil(shards / min(shards, max_concurrency)) - 1) * INTERVAL


async def empty_rss() -> tuple[int, int]:
    """(supervisor, workers) RSS of a cluster holding one shard per worker."""
    async with Sandbox(config(WORKERS, WORKERS)) as sb, \
            cluster(sb, processes=WORKERS, identify_interval=INTERVAL) as c:
        await anyio.sleep(3.0)
        return total_rss([c.supervisor]), total_rss(c.workers)


async def answers(c: Cluster) -> dict[str, float]:
    """Seconds each of status (control channel), the status CLI and /metrics took."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    with anyio.fail_after(30.0):
        body = await request_status(c.control)
    out["status"] = time.perf_counter() - t0
    out["ready_in_status"] = float(body["summary"]["states"].get("ready", 0))
    t0 = time.perf_counter()
    cli = await anyio.run_process(
        [sys.executable, "-c", "from shardctl.cli import main; main()", "status", "--json",
         "--control-endpoint", c.control, "--timeout", "30"], check=False)
    out["status_cli"] = time.perf_counter() - t0
    out["status_cli_bytes"] = float(len(cli.stdout))
    async with httpx.AsyncClient(timeout=30.0) as http:
        t0 = time.perf_counter()
        got = await http.get(f"http://127.0.0.1:{c.metrics}/metrics")
        out["metrics"] = time.perf_counter() - t0
        out["metrics_bytes"] = float(len(got.content))
    return out


async def hold(f: Fleet, c: Cluster, seconds: float
               ) -> tuple[dict[str, int], list[dict[str, float]]]:
    """Counts the fleet saw during ``seconds``, and the status/metrics answers asked meanwhile."""
    await f.fresh()
    before = f.counts()
    samples = [await answers(c)]
    deadline = anyio.current_time() + seconds
    ask_every = max(5.0, seconds / 5)
    while (left := deadline - anyio.current_time()) > 0:
        await anyio.sleep(min(ask_every, left))
        if deadline - anyio.current_time() > 1.0:
            samples.append(await answers(c))
            log(f"  scale: {samples[-1]}")
    await f.fresh()
    after = f.counts()
    return {k: after[k] - before.get(k, 0) for k in after}, samples


async def run(quick: bool, settings: Settings | None = None) -> list[Figure]:
    s = settings or Settings()
    title = f"8 scale {s.shards:,} shards"
    if quick:
        return [Figure(f"{title} {s.minutes:g} min", None, "", None,
                       "full run only (skipped by --quick)")]
    log(f"scale: empty cluster ({WORKERS} shards in {WORKERS} workers)")
    base_sup, base_workers = await empty_rss()
    cfg = config(s.shards, s.max_concurrency)
    ideal = ideal_ready(s.shards, s.max_concurrency)
    log(f"scale: {s.shards} shards, {WORKERS} workers, sandbox fleet of "
        f"{s.sandbox_processes} processes, max_concurrency {cfg.max_concurrency} "
        f"(ideal READY {ideal:.0f} s)")
    async with fleet(cfg, s.sandbox_processes) as f:
        t0 = time.monotonic()
        async with cluster(f, processes=WORKERS, identify_interval=INTERVAL,
                           ready_timeout=ideal * 2 + 300, metrics=True) as c:
            ready_s = time.monotonic() - t0
            log(f"  all READY in {ready_s:.1f} s")
            await anyio.sleep(5.0)  # READY/GUILD_CREATE garbage collected
            sup, workers = total_rss([c.supervisor]), total_rss(c.workers)
            per_kb = (sup + workers - base_sup - base_workers) / (s.shards - WORKERS) / 1024
            worker_kb = (workers - base_workers) / (s.shards - WORKERS) / 1024
            log(f"  RSS supervisor {base_sup / 2**20:.0f} → {sup / 2**20:.0f} MB, workers "
                f"{base_workers / 2**20:.0f} → {workers / 2**20:.0f} MB: {per_kb:.1f} KB "
                f"per shard ({worker_kb:.1f} in the workers)")
            log(f"scale: holding for {s.minutes:g} min")
            got, samples = await hold(f, c, s.minutes * 60)
        pace = f.pace_violations()
        order = order_warnings(cfg, f.identifies)
        max_gap = f.max_gap
    faults = sum(got[k] for k in FAULT_KINDS)
    shortest = shortest_gap(cfg, f.identifies)
    log(f"  hold: {got}, bot-wide pace: {pace[:3] or 'ok'}, longest beat gap "
        f"{max_gap:.3f} intervals")
    status = max(x["status"] for x in samples)
    status_cli = max(x["status_cli"] for x in samples)
    metrics = max(x["metrics"] for x in samples)
    not_ready = s.shards - min(int(x["ready_in_status"]) for x in samples)
    extra = {"settings": {"shards": s.shards, "minutes": s.minutes, "workers": WORKERS,
                          "max_concurrency": cfg.max_concurrency,
                          "sandbox_processes": s.sandbox_processes},
             "hold": got, "pace": pace[:20], "order_warnings": order, "max_gap_intervals": max_gap,
             "samples": samples, "rss": {"base_supervisor": base_sup,
                                         "base_workers": base_workers,
                                         "supervisor": sup, "workers": workers}}
    return [
        Figure(f"{title} READY (max_concurrency {cfg.max_concurrency}, "
               f"{s.sandbox_processes} sandbox processes)", round(ready_s, 1), "s",
               ideal, "informational (reference: the ideal pace at 5 s per bucket)",
               extra=extra),
        Figure(f"{title} workers' RSS per shard", round(worker_kb, 1), "KB",
               LIMIT_KB, f"≤ {LIMIT_KB:g} KB (ratio ≤ 1)", 1.0),
        Figure(f"{title} cluster RSS per shard (supervisor + workers)", round(per_kb, 1),
               "KB", LIMIT_KB, "informational (the supervisor's share included)"),
        Figure(f"{title} held {s.minutes:g} min: faults (beats {got['heartbeat']:,}, "
               f"longest gap {max_gap:.2f} intervals)", faults + not_ready, "faults", None,
               "0 (all READY; no late beat, close, IDENTIFY or RESUME)", 0,
               compare="value"),
        Figure(f"{title} start-up: IDENTIFYs of a bucket stamped < {INTERVAL:g} s apart by "
               f"the fleet (shortest {shortest:.2f} s)", len(pace), "pairs", None,
               "0 (bot-wide, over every sandbox process)", 0, compare="value"),
        Figure(f"{title} status --json answer (CLI process {status_cli:.2f} s)",
               round(status, 3), "s", ANSWER_LIMIT, f"≤ {ANSWER_LIMIT:g} s", 1.0),
        Figure(f"{title} /metrics answer", round(metrics, 3), "s", ANSWER_LIMIT,
               f"≤ {ANSWER_LIMIT:g} s", 1.0),
    ]
