"""Figure 3: RSS of the whole cluster per idle zlib-stream shard, and the 2,500-shard soak.

RSS is summed over the supervisor and every worker (/proc/<pid>/statm), first for a cluster
of one shard per worker (the "empty" cluster: processes, imports, sockets, no load), then for
N idle shards; the figure is the difference per additional shard, against the 80 KB limit.
The soak (full run only) holds 2,500 shards in 4 workers for 5 minutes: it passes when the
sandbox saw no late heartbeat, no client close, no new IDENTIFY or RESUME in that time.
"""

from __future__ import annotations

import gc

import anyio

from bench.common import Figure, cluster, log, total_rss
from shardctl.sandbox import Sandbox, SandboxConfig

WORKERS = 4
LIMIT_KB = 80.0


def config(shards: int, **kw: object) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=min(shards, 64),
                         identify_interval=0.05, guilds_per_shard=1, members_per_guild=5,
                         record_dispatches=False, session_start_total=100_000, **kw)  # type: ignore[arg-type]


async def cluster_rss(shards: int) -> int:
    async with Sandbox(config(shards)) as sb, \
            cluster(sb, processes=WORKERS, identify_interval=0.05,
                    ready_timeout=300.0) as c:
        await anyio.sleep(3.0)  # READY/GUILD_CREATE garbage collected, allocator settled
        rss = total_rss(c.pids)
    gc.collect()
    return rss


async def soak(shards: int, seconds: float) -> dict[str, int]:
    kinds = ("identify", "resume", "client_close", "server_close", "drop")
    async with Sandbox(config(shards)) as sb, \
            cluster(sb, processes=WORKERS, identify_interval=0.05, ready_timeout=600.0):
        before = {k: len(sb.records(k)) for k in kinds}
        violations_before = len(sb.violations)
        beats_before = len(sb.records("heartbeat"))
        await anyio.sleep(seconds)
        after = {k: len(sb.records(k)) - before[k] for k in kinds}
        after["violations"] = len(sb.violations) - violations_before
        after["heartbeats"] = len(sb.records("heartbeat")) - beats_before
        late = [r for r in sb.records("heartbeat")[beats_before:]
                if r.get("gap", 0) > sb.config.heartbeat_interval * 1.25]
        after["late_heartbeats"] = len(late)
    return after


async def run(quick: bool) -> list[Figure]:
    shards = 400 if quick else 1000
    base_shards = WORKERS
    log(f"memory: empty cluster ({base_shards} shards in {WORKERS} workers)")
    base = await cluster_rss(base_shards)
    log(f"memory: {shards} idle zlib-stream shards")
    loaded = await cluster_rss(shards)
    per_kb = (loaded - base) / (shards - base_shards) / 1024
    log(f"  RSS {base / 2**20:.1f} MB → {loaded / 2**20:.1f} MB: {per_kb:.1f} KB per shard")
    figures = [
        Figure(f"3 RSS per shard ({shards})", round(per_kb, 1), "KB", LIMIT_KB,
               f"< {LIMIT_KB:g} KB (ratio < 1)", 1.0,
               extra={"base_rss": base, "loaded_rss": loaded, "shards": shards}),
        Figure(f"3 cluster RSS ({shards})", round(loaded / 2**20, 1), "MB",
               round(base / 2**20, 1), "informational (reference: empty cluster)"),
    ]
    if quick:
        figures.append(Figure("3 soak 2,500 shards 5 min", None, "", None,
                              "full run only (skipped by --quick)"))
        return figures
    log("memory: soak, 2,500 shards in 4 workers for 5 minutes")
    got = await soak(2500, 300.0)
    bad = (got["identify"] + got["resume"] + got["client_close"] + got["server_close"]
           + got["drop"] + got["violations"] + got["late_heartbeats"])
    log(f"  soak: {got}")
    figures.append(Figure("3 soak 2,500 shards 5 min", bad, "faults", None,
                          "0 (READY held, every heartbeat on time)", 0, compare="value",
                          extra=got))
    return figures
