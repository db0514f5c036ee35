"""Figure 1: events/s and CPU µs per event of the whole pipeline vs a one-process reference.

The sandbox prepares ``per_shard`` MESSAGE_CREATE per shard, already compressed and framed
(:class:`~shardctl.sandbox.Blast`), then writes them as fast as each socket drains.  16 shards
run in 2 worker processes; a ``shardctl.Consumer`` process reads each event's ``d``.  CPU is
the kernel's utime + stime of the supervisor, both workers and the consumer between the start
of the blast and the consumer's last event; the reference loop (receive, inflate, parse) is
read the same way over the same stream.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import anyio

from bench.common import (
    INTENTS,
    Figure,
    child,
    cluster,
    cpu_seconds,
    log,
    wait_subscribed,
)
from shardctl.ipc.status import request_status
from shardctl.sandbox import Blast, Sandbox, SandboxConfig

SHARDS = 16
WORKERS = 2
#: e.g. "py-spy record --rate 200 --nonblocking": profile each measured process.
PROFILE_CMD = os.environ.get("BENCH_PROFILE", "")


def sandbox_config(replay_buffer: int = 256) -> SandboxConfig:
    """``replay_buffer``: a cluster's run keeps a whole blast per session (below)."""
    return SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=0.05,
                         guilds_per_shard=2, record_dispatches=False,
                         replay_buffer=replay_buffer, session_start_total=100_000)


def start_profilers(pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """One ``$BENCH_PROFILE`` per measured process, writing /tmp/spy-<pid>.svg."""
    return [subprocess.Popen([*PROFILE_CMD.split(), "-o", f"/tmp/spy-{pid}.svg",
                              "--pid", str(pid)]) for pid in pids]


async def blast(sb: Sandbox, per_shard: int, pids: list[int], finished: Any
                ) -> dict[str, Any]:
    """Prepare, start the clock, go; ``finished()`` returns the reader's final report."""
    b = Blast(sb, per_shard)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        await b.prepared.wait()
        per0 = [cpu_seconds(pid) for pid in pids]
        cpu0, t0 = sum(per0), time.monotonic_ns()
        b.go()
        if PROFILE_CMD:
            spies = start_profilers(pids)
        report: dict[str, Any] = await finished()
        per1 = [cpu_seconds(pid) for pid in pids]
        cpu1 = sum(per1)
        if PROFILE_CMD:
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait()
    count = report["count"]
    span = max(1, report["last_ns"] - t0) / 1e9
    return {"count": count, "events_s": count / span, "cpu_us": (cpu1 - cpu0) * 1e6 / count
            if count else float("nan"), "cpu_s": cpu1 - cpu0, "span_s": span,
            # what the sandbox sent: a shard whose session was not live when the blast
            # started (between two connections) is not sent to, which no reader can count
            "blasted": sum(last - first + 1 for first, last in b.sent.values()),
            "blasted_shards": len(b.sent),
            "missed": report.get("missed", 0),
            "cpu_us_per_process": [round((b1 - a0) * 1e6 / max(1, count), 2)
                                   for a0, b1 in zip(per0, per1, strict=True)],
            "core_pct_per_process": [round((b1 - a0) * 100 / span, 1)
                                     for a0, b1 in zip(per0, per1, strict=True)]}


async def run_cluster(compression: str, per_shard: int, workers: int = WORKERS
                      ) -> dict[str, Any]:
    expect = SHARDS * per_shard
    # A blast keeps its sockets silent while the sandbox compresses it, and a heartbeat sent
    # then is ACKed only after it (sandbox.Blast); a worker that hears nothing for its ACK
    # timeout (3 s at this interval) closes the socket as a zombie and RESUMEs, which Discord
    # answers with everything missed.  The sandbox must be able to, or the run counts the
    # blast's own silence as the cluster's loss (once in ~20 runs on a loaded machine).
    async with Sandbox(sandbox_config(replay_buffer=per_shard + 1_000)) as sb, \
            cluster(sb, processes=workers, identify_interval=0.05,
                    compression=compression) as c, \
            child("consumer_proc", *c.consumer_args(), "--expect", str(expect),
                  "--idle", "10", "--parse") as consumer:
        await wait_subscribed(sb, consumer)
        await anyio.sleep(0.5)  # let the READY burst's garbage settle
        since = len(sb.record)
        # order: supervisor, workers..., consumer (pipeline_rows reads it so)
        result = await blast(sb, per_shard, [*c.pids, consumer.pid],
                             lambda: consumer.expect("count", 300.0))
        result["violations"] = len(sb.violations)
        result["lost"] = result["blasted"] - result["count"]
        if result["blasted"] != expect:
            log(f"  the sandbox sent {result['blasted']} events, not {expect}: "
                f"{SHARDS - result['blasted_shards']} shard(s) not live at the start")
        if result["lost"] > 0:
            await explain_loss(sb, c.control, since)
        return result


#: what the sandbox saw of a connection's life (no dispatches, beats or warnings)
_LIFE = frozenset({"blast", "connect", "identify", "identify_rejected", "ready", "resume",
                   "resume_rejected", "resumed", "client_close", "server_close", "drop",
                   "invalid_session", "reconnect", "fault", "violation"})


async def explain_loss(sb: Sandbox, control: str, since: int) -> None:
    """What a run that lost events leaves to go on: every connection's life in the
    sandbox since the blast was prepared, and the supervisor's seq per shard (a shard stuck
    below its blast's last s is the one that lost)."""
    for rec in sb.record[since:]:
        if rec.kind in _LIFE:
            log(f"  sandbox: {rec.kind} shard {rec.shard_id} conn {rec.conn} {rec.details}")
    if not control:
        return
    with anyio.move_on_after(5.0):
        body = await request_status(control)
        log("  supervisor seq per shard: " + ", ".join(
            f"{row['id']}:{row['state']}@{row['seq']}" for row in body["shards"]))


async def run_reference(compression: str, per_shard: int) -> dict[str, Any]:
    expect = SHARDS * per_shard
    async with Sandbox(sandbox_config()) as sb, \
            child("reference", "--url", sb.gateway_url, "--compress", compression,
                  "--shards", str(SHARDS), "--expect", str(expect),
                  "--intents", str(INTENTS)) as ref:
        await ref.expect("ready", 60.0)
        await anyio.sleep(0.5)
        return await blast(sb, per_shard, [ref.pid], lambda: ref.expect("count", 300.0))


def supervisor_rows(prefix: str, got: dict[str, Any]) -> list[Figure]:
    """Issue 14's supervisor target ≤ 1 µs of its CPU per event; its share of a core here
    (2 workers) is informational: the target row is :func:`four_workers`'."""
    return [
        Figure(f"{prefix} supervisor cpu/event", got["cpu_us_per_process"][0], "µs", None,
               "≤ 1 µs", 1.0, compare="value"),
        Figure(f"{prefix} supervisor % of a core", got["core_pct_per_process"][0], "%", None,
               "informational (2 workers)"),
    ]


async def four_workers(per_shard: int) -> list[Figure]:
    """Issue 14: with 4 workers the supervisor must not cap the cluster: < 10 % of a core
    at the cluster's maximum (a saturated zlib-stream blast; this machine has 2 cores)."""
    log(f"throughput zlib-stream: cluster, 4 workers, {SHARDS} x {per_shard} events")
    got = await run_cluster("zlib-stream", per_shard, workers=4)
    log(f"  pipeline: {got['events_s']:.0f} ev/s ({split(got)}), supervisor "
        f"{got['core_pct_per_process'][0]} % of a core, lost {got['lost']}")
    sup_us = got["cpu_us_per_process"][0]
    return [
        Figure("1 zlib 4 workers: supervisor % of a core", got["core_pct_per_process"][0], "%",
               None, f"< 10 % at the cluster's maximum ({got['events_s']:,.0f} events/s; "
               f"the supervisor alone caps at {1e6 / max(0.01, sup_us):,.0f})",
               10.0, compare="value", extra=got),
        Figure("1 zlib 4 workers: events lost", max(got["lost"], got["missed"]), "events", None,
               f"0 ({got['missed']:,} seen as bus gaps: a consumer over 100,000 events "
               "behind loses)", 0, compare="value"),
    ]


def split(got: dict[str, Any], digits: int = 2) -> str:
    """µs per event: supervisor / workers / consumer (blast's pid order)."""
    per = got["cpu_us_per_process"]
    return f"supervisor {per[0]}, workers {sum(per[1:-1]):.{digits}f}, consumer {per[-1]}"


async def run(quick: bool) -> list[Figure]:
    compressions = tuple(os.environ.get("BENCH_COMPRESSIONS", "zlib-stream,zstd-stream")
                         .split(","))
    per_shard = 4000 if quick else 15000
    figures: list[Figure] = []
    for compression in compressions:
        log(f"throughput {compression}: reference loop, {SHARDS} x {per_shard} events")
        ref = await run_reference(compression, per_shard)
        log(f"  reference: {ref['events_s']:.0f} ev/s, {ref['cpu_us']:.2f} µs/event")
        log(f"throughput {compression}: cluster, {WORKERS} workers, a parsing consumer")
        got = await run_cluster(compression, per_shard)
        log(f"  pipeline: {got['events_s']:.0f} ev/s, {got['cpu_us']:.2f} µs/event "
            f"({split(got)}), supervisor {got['core_pct_per_process'][0]} % of a core, "
            f"lost {got['lost']}")
        short = compression.split("-")[0]
        if not quick:  # the same blast through the least pipeline of this shape
            from bench import floor  # it builds on this module

            figures += await floor.against(f"1 {short}", ref, got, compression=compression,
                                           shards=SHARDS, paced_rate=None,
                                           per_shard=per_shard, limit="1.5x")
        figures += [
            Figure(f"1 throughput {short}", round(got["events_s"]), "events/s",
                   round(ref["events_s"]), "informational (reference: the one-process loop)",
                   extra={"cluster": got, "reference": ref}),
            Figure(f"1 cpu/event {short} (pipeline: {split(got)})", round(got["cpu_us"], 2),
                   "µs", round(ref["cpu_us"], 2), "≤ 1.5x reference (aim 1.3x)", 1.5),
            *supervisor_rows(f"1 {short}", got),
            Figure(f"1 events lost {short}", max(got["lost"], got["missed"]), "events", None,
                   "0", 0, compare="value"),
        ]
    if "zlib-stream" in compressions:
        figures += await four_workers(per_shard)
    return figures
