"""Figure 2: startup pace of 256 shards (max_concurrency 16, interval 0.25 s, 4 workers).

Both ends are the sandbox's own records on one clock: the first accepted IDENTIFY's arrival
and the last READY sent.  The ideal is ``(ceil(N / mc) - 1) * interval`` plus one READY round
trip, taken as the median IDENTIFY → READY time of the same run.  Pacing violations are
IDENTIFYs the sandbox refused or flagged (it enforces one per bucket per interval).
"""

from __future__ import annotations

import math
import statistics

from bench.common import Figure, cluster, log
from shardctl.sandbox import Sandbox, SandboxConfig

SHARDS = 256
MAX_CONCURRENCY = 16
INTERVAL = 0.25
WORKERS = 4


async def measure(shards: int = SHARDS) -> dict[str, float]:
    cfg = SandboxConfig(shard_count=shards, max_concurrency=MAX_CONCURRENCY,
                        identify_interval=INTERVAL, guilds_per_shard=1,
                        members_per_guild=5, record_dispatches=False,
                        session_start_total=100_000)
    async with Sandbox(cfg) as sb, cluster(sb, processes=WORKERS, identify_interval=INTERVAL):
        identifies = sb.records("identify")
        readies = sb.records("ready")
        rejected = sb.records("identify_rejected")
        # A refused IDENTIFY is also a violation record: count each event once.
        violations = [v for v in sb.violations
                      if "identify" in v.rule and v.rule != "identify_pacing"]
    first = min(r.at for r in identifies)
    last = max(r.at for r in readies)
    ident_at = {r.shard_id: r.at for r in identifies}
    rtt = statistics.median(r.at - ident_at[r.shard_id] for r in readies)
    ideal = (math.ceil(shards / MAX_CONCURRENCY) - 1) * INTERVAL + rtt
    return {"span": last - first, "ideal": ideal, "rtt": rtt,
            "identifies": len(identifies), "violations": len(rejected) + len(violations)}


async def run(quick: bool) -> list[Figure]:
    log(f"startup: {SHARDS} shards, max_concurrency {MAX_CONCURRENCY}, interval {INTERVAL} s, "
        f"{WORKERS} workers")
    got = await measure()
    log(f"  first IDENTIFY → all READY {got['span']:.3f} s, ideal {got['ideal']:.3f} s, "
        f"{got['violations']} violations")
    return [
        Figure("2 startup pace", round(got["span"], 3), "s", round(got["ideal"], 3),
               "≤ 1.02x ideal", 1.02, extra=got),
        Figure("2 pacing violations", got["violations"], "count", None, "0", 0,
               compare="value"),
    ]
