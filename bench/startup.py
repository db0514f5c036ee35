"""Figure 2: startup pace against a sandbox that stamps IDENTIFYs as a loaded server does.

Three start-ups, 4 workers each, against the sandbox's default arrival stamps (when its event
loop's handler reads the frame): Discord's own pace (64 shards, max_concurrency 16, 5 s),
a compressed and jittery one (64 shards, max_concurrency 4, 0.2 s, every frame read a random
0-15 ms late; the only one of ``--quick``) and 256 shards at max_concurrency 16 and 0.25 s.
Both ends are the sandbox's own records on one clock: the first accepted IDENTIFY's arrival
and the last READY sent.  The ideal is ``(ceil(N / mc) - 1) * interval`` plus one READY round
trip, taken as the median IDENTIFY → READY time of the same run; every gap also pays the
limiter's margin (15 ms + 1 % of the interval), which is what the jittery run's 1.10x leaves
room for.  The 256-shard run is measured against the paced ideal (each gap an interval plus
the margin), as the limiter's own overhead at scale.  Op 9 counts the
IDENTIFYs the sandbox refused as too fast for their bucket (plus any other IDENTIFY
violation).  The cluster runs at nice 10 (see :data:`NICE`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from bench.common import Figure, cluster, log
from shardctl.gateway.pacing import DEFAULT_MARGIN
from shardctl.sandbox import Sandbox, SandboxConfig

WORKERS = 4
#: The cluster runs below the sandbox's priority: on 2 shared cores, the sandbox's own
#: lateness would otherwise follow the bot's load, which Discord's never does (its load is
#: what the arrival jitter stands for).
NICE = 10


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    shards: int
    max_concurrency: int
    interval: float
    jitter_ms: float
    limit: float
    #: Measured against the paced ideal (every gap an interval plus the margin): what the
    #: limiter's own machinery adds, at scale.
    paced: bool = False

    @property
    def name(self) -> str:
        jitter = f", {self.jitter_ms:g} ms jitter" if self.jitter_ms else ""
        return (f"{self.label} ({self.shards} shards, mc {self.max_concurrency}, "
                f"{self.interval:g} s{jitter})")


#: The 256-shard run's pace (``--peers`` starts discord.py at it too).
MAX_CONCURRENCY = 16
INTERVAL = 0.25
BIG = Case("at scale", 256, MAX_CONCURRENCY, INTERVAL, 0.0, 1.02, paced=True)
JITTERY = Case("jittery", 64, 4, 0.2, 15.0, 1.10)
CASES = (Case("Discord's pace", 64, 16, 5.0, 15.0, 1.02), JITTERY, BIG)
#: --quick: the jittery start-up only (Discord's pace takes 15 s, 256 shards 7 s more).
QUICK_CASES = (JITTERY,)


async def measure(case: Case) -> dict[str, float]:
    cfg = SandboxConfig(shard_count=case.shards, max_concurrency=case.max_concurrency,
                        identify_interval=case.interval, arrival_jitter_ms=case.jitter_ms,
                        guilds_per_shard=1, members_per_guild=5, record_dispatches=False,
                        session_start_total=100_000, seed=13)
    async with Sandbox(cfg) as sb, cluster(sb, processes=WORKERS, nice=NICE,
                                           identify_interval=case.interval):
        identifies = sb.records("identify")
        readies = sb.records("ready")
        rejected = sb.records("identify_rejected")
        # A refused IDENTIFY is also a violation record: count each event once.
        violations = [v for v in sb.violations
                      if "identify" in v.rule and v.rule != "identify_pacing"]
    first = min(r.at for r in identifies)
    last = max(r.at for r in readies)
    ident_at: dict[int | None, float] = {}
    for r in identifies:  # a shard refused once has a later, accepted IDENTIFY
        ident_at.setdefault(r.shard_id, r.at)
    rtt = statistics.median(r.at - ident_at[r.shard_id] for r in readies)
    gap = case.interval + (DEFAULT_MARGIN.base(case.interval) if case.paced else 0.0)
    ideal = (math.ceil(case.shards / case.max_concurrency) - 1) * gap + rtt
    return {"span": last - first, "ideal": ideal, "rtt": rtt,
            "identifies": len(identifies), "op9": len(rejected) + len(violations)}


async def run(quick: bool) -> list[Figure]:
    figures = []
    for case in QUICK_CASES if quick else CASES:
        log(f"startup: {case.name}, {WORKERS} workers")
        got = await measure(case)
        log(f"  first IDENTIFY → all READY {got['span']:.3f} s, ideal {got['ideal']:.3f} s "
            f"({got['span'] / got['ideal']:.3f}x), {got['op9']} IDENTIFYs answered with op 9")
        ideal = "paced ideal (interval + margin per gap)" if case.paced else "ideal"
        figures += [
            Figure(f"2 startup pace, {case.name}", round(got["span"], 3), "s",
                   round(got["ideal"], 3), f"≤ {case.limit:.2f}x {ideal}", case.limit,
                   extra=got),
            Figure(f"2 op 9, {case.label}", got["op9"], "count", None, "0", 0,
                   compare="value"),
        ]
    return figures
