"""``shardctl run`` against a sandbox that stamps IDENTIFYs as a loaded server does (issue 13).

The sandbox stamps each client frame when its event loop's handler reads it (the default),
and with ``arrival_jitter_ms`` reads every frame a random 0..J ms late: two IDENTIFYs of one
bucket, on different connections, get different lateness, and the second may look early by
up to J plus whatever the loop was busy with.  The cluster runs as ``shardctl run`` in its
own process (the supervisor, the limiter and 4 workers) at nice 10, the sandbox in this one:
Discord's servers never share a CPU with the bot (their load is what the jitter stands for),
and on 2 cores the sandbox's lateness would otherwise follow the bot's.  What
counts is what the sandbox saw: no IDENTIFY refused (op 9), and the start-up span (first
IDENTIFY to last READY) close to the ideal ``(ceil(N / mc) - 1) * interval`` plus one READY
round trip.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
from clusterkit import TOKEN, short_dir

from shardctl.gateway.pacing import DEFAULT_MARGIN
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Arrival jitter of the compressed run (issue 13's figure).
JITTER_MS = 15.0


@dataclass(frozen=True, slots=True)
class Pace:
    span: float
    ideal: float
    op9: int

    @property
    def ratio(self) -> float:
        return self.span / self.ideal


@asynccontextmanager
async def shardctl_run(sb: Sandbox, shards: int, processes: int, interval: float,
                       *extra: str) -> AsyncIterator[anyio.abc.Process]:
    """``shardctl run`` against ``sb`` in a child process; SIGTERM (then SIGKILL) on exit."""
    with short_dir() as run_dir:
        env = {"SHARDCTL_RUNTIME_DIR": str(run_dir), "PATH": "/usr/bin:/bin"}
        process = await anyio.open_process(
            ["nice", "-n", "10", sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
             "--api-url", sb.api_url, "--processes", str(processes), "--shards", str(shards),
             "--identify-interval", str(interval), "--state-file", str(run_dir / "s.json"),
             "--log-level", "WARNING", "--log-format", "json", *extra],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None)
        try:
            yield process
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(15):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def start_up(cfg: SandboxConfig, processes: int, *extra: str) -> Pace:
    """Run a cluster until every shard is READY; the pace the sandbox saw."""
    shards, mc = cfg.shard_count, cfg.max_concurrency
    async with Sandbox(cfg) as sb, shardctl_run(sb, shards, processes,
                                               cfg.identify_interval, *extra):
        await sb.wait_for(lambda: len({r.shard_id for r in sb.records("ready")}) == shards,
                          timeout=90)
        identifies, readies = sb.records("identify"), sb.records("ready")
        op9 = len(sb.records("identify_rejected"))
    first = {}
    for r in identifies:
        first.setdefault(r.shard_id, r.at)
    # The last READY came the sandbox's own IDENTIFY -> READY time after its shard's
    # IDENTIFY (the sandbox stamps both): that time is the sandbox's, not the pace's, so the
    # ideal takes the last shard's own rather than the median (one slow READY of the last
    # round on a loaded machine counted against the pace: 1.025x, seen once).
    last = max(readies, key=lambda r: r.at)
    rtt = last.at - first[last.shard_id]
    ideal = (math.ceil(shards / mc) - 1) * cfg.identify_interval + rtt
    pace = Pace(max(r.at for r in readies) - min(r.at for r in identifies), ideal, op9)
    print(f"first IDENTIFY -> last READY {pace.span:.3f} s, ideal {pace.ideal:.3f} s, "
          f"ratio {pace.ratio:.3f}, {pace.op9} IDENTIFYs answered with op 9")
    return pace


#: What a loaded 2-core machine may add to a start-up beyond the margins (seconds, or a tenth
#: of the interval when that is more): the workers run at nice 10 beside the sandbox.
LOAD_ALLOWANCE = 0.1


def paced_span(pace: Pace, cfg: SandboxConfig) -> float:
    """The longest start-up that lost no slot: the ideal, every gap's margin, and the load's
    allowance.  A lost slot costs a whole interval more than this allows (the allowance is
    at most half of one).  Fixed ratios (1.10x, 1.02x) left 30 ms and 105 ms for the load and
    failed in CI and with one core busy."""
    interval = cfg.identify_interval
    gaps = math.ceil(cfg.shard_count / cfg.max_concurrency) - 1
    allowance = min(max(LOAD_ALLOWANCE, interval / 10), interval / 2)
    return pace.ideal + gaps * DEFAULT_MARGIN.base(interval) + allowance


async def test_a_jittery_loop_stamping_gateway_sees_no_identify_too_fast() -> None:
    # 64 shards / 4 processes / max_concurrency 4 / 0.2 s, every frame read 0-15 ms late.
    # Every gap pays the margin (17 ms): 15 gaps make the span 1.09x the ideal 3 s.
    cfg = SandboxConfig(shard_count=64, max_concurrency=4, identify_interval=0.2,
                        arrival_jitter_ms=JITTER_MS, guilds_per_shard=1, members_per_guild=5,
                        heartbeat_interval_ms=41250, session_start_total=100_000, seed=13)
    pace = await start_up(cfg, 4)
    assert pace.op9 == 0, pace
    assert pace.span <= paced_span(pace, cfg), pace


async def test_at_discords_pace_the_start_up_takes_the_ideal_span_without_op9() -> None:
    # 64 shards / 4 processes / max_concurrency 16 / 5 s: 16 IDENTIFYs a round reach the
    # sandbox together and its loop reads them one after another, each 0-15 ms late too.
    cfg = SandboxConfig(shard_count=64, max_concurrency=16, identify_interval=5.0,
                        arrival_jitter_ms=JITTER_MS, guilds_per_shard=1, members_per_guild=5,
                        heartbeat_interval_ms=41250, session_start_total=100_000, seed=13)
    pace = await start_up(cfg, 4)
    assert pace.op9 == 0, pace
    assert pace.span <= paced_span(pace, cfg), pace
