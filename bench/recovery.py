"""Figure 5: op 7 → RESUME and last heartbeat ACK → zombie detected, over 20 faults each.

All times are the sandbox's records: ``reconnect`` (op 7 sent) → the next ``resume`` of that
shard (RESUME arrived); for zombies, the sandbox stops answering heartbeats on one socket;
the last ACK is the last heartbeat it answered there (it answers at once), detection is the
client's close of that socket.  Heartbeat interval 15 s: long enough that the default ACK
timeout (7.5 % of the interval, at least 1 s: ``gateway/heartbeat.py``) is the fraction
it is at Discord's 41.25 s, short enough that 20 concurrent zombies take ~35 s.
"""

from __future__ import annotations

import random

import anyio

from bench.common import Figure, cluster, log, percentile
from shardctl.sandbox import Sandbox, SandboxConfig, Zombie

SHARDS = 20
FAULTS = 20
WORKERS = 2
HEARTBEAT_MS = 15000


async def op7(sb: Sandbox) -> list[float]:
    out = []
    for i in range(FAULTS):
        shard = i % SHARDS
        before = len(sb.records("resumed", shard))
        await sb.inject(shard, "reconnect")
        sent = sb.records("reconnect", shard)[-1].at
        await sb.wait_for(lambda s=shard, b=before: len(sb.records("resumed", s)) > b, 10.0)
        resume = next(r for r in sb.records("resume", shard) if r.at >= sent)
        out.append(resume.at - sent)
        await anyio.sleep(0.05)
    return out


async def zombies(sb: Sandbox) -> tuple[list[float], list[float]]:
    """(last ACK → close, unanswered beat → close), in heartbeat intervals."""
    rng = random.Random(7)
    interval = sb.config.heartbeat_interval
    marks: dict[int, tuple[int, float]] = {}

    async def one(shard: int) -> None:
        await anyio.sleep(rng.uniform(0, interval))
        conn = sb.live_connections(shard)[0]
        marks[shard] = (conn.id, sb.now())
        await conn.apply(Zombie(True), sb.now())

    async with anyio.create_task_group() as tg:
        for shard in range(FAULTS):
            tg.start_soon(one, shard)
    await sb.wait_for(lambda: all(
        any(r.conn == conn_id for r in sb.records("client_close", shard))
        for shard, (conn_id, _) in marks.items()), 10 * interval)
    from_ack, from_beat = [], []
    for shard, (conn_id, at) in marks.items():
        beats = [r for r in sb.records("heartbeat", shard) if r.conn == conn_id]
        acked = [r for r in beats if r.at < at]
        unanswered = [r for r in beats if r.at >= at]
        close = next(r for r in sb.records("client_close", shard) if r.conn == conn_id)
        if acked:
            from_ack.append((close.at - acked[-1].at) / interval)
        if unanswered:
            from_beat.append((close.at - unanswered[0].at) / interval)
    return from_ack, from_beat


async def run(quick: bool) -> list[Figure]:
    cfg = SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=0.05,
                        guilds_per_shard=1, members_per_guild=5,
                        heartbeat_interval_ms=HEARTBEAT_MS, record_dispatches=False)
    log(f"recovery: {FAULTS} x op 7, {FAULTS} x zombie (heartbeat {HEARTBEAT_MS} ms)")
    async with Sandbox(cfg) as sb, cluster(sb, processes=WORKERS, identify_interval=0.05):
        await anyio.sleep(1.5 * HEARTBEAT_MS / 1000)  # every socket has an answered beat
        resumes = await op7(sb)
        from_ack, from_beat = await zombies(sb)
        violations = len(sb.violations)
    p99 = percentile(resumes, 99) * 1e3
    z99 = percentile(from_ack, 99)
    b99 = percentile(from_beat, 99)
    log(f"  op 7 → RESUME p50 {percentile(resumes, 50) * 1e3:.1f} ms p99 {p99:.1f} ms; "
        f"zombie: last ACK → close p99 {z99:.2f} intervals, unanswered beat → close "
        f"{b99:.2f}; {violations} violations")
    return [
        Figure("5 op 7 → RESUME p99", round(p99, 2), "ms", 100.0, "< 100 ms (ratio < 1)", 1.0,
               extra={"samples_ms": [round(x * 1e3, 2) for x in resumes],
                      "p50_ms": percentile(resumes, 50) * 1e3}),
        Figure("5 last ACK → zombie closed p99", round(z99, 3), "intervals", 1.1,
               "≤ 1.1 intervals (ratio ≤ 1)", 1.0,
               extra={"samples": [round(x, 3) for x in from_ack]}),
        Figure("5 unanswered beat → closed p99", round(b99, 3), "intervals", 1.1,
               "informational (see note)", note="the beat the zombie swallowed → close",
               extra={"samples": [round(x, 3) for x in from_beat]}),
    ]
