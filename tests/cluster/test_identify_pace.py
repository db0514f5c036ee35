"""``shardctl run`` against a sandbox that stamps IDENTIFYs as a loaded server does (issue 13).

The sandbox stamps each client frame when its event loop's handler reads it (the default),
and with ``arrival_jitter_ms`` reads every frame a random 0..J ms late: two IDENTIFYs of one
bucket, on different connections, get different lateness, and the second may look early by
up to J plus whatever the loop was busy with.  The cluster runs as ``shardctl run`` in its
own process (the supervisor, the limiter and 4 workers) at nice 10, the sandbox in this one:
Discord's servers never share a CPU with the bot (their load is what the jitter stands for),
and on 2 cores the sandbox's lateness would otherwise follow the bot's.  What
counts is what the sandbox saw: every IDENTIFY of a bucket reached the host (the kernel's
receive time, recorded beside each stamp) an interval plus the margin after the previous
one; no IDENTIFY refused (op 9) unless this machine's own loop, reading one late, made it
(then at most one per bucket, in one episode); and the start-up span (first IDENTIFY to last
READY) close to the ideal ``(ceil(N / mc) - 1) * interval`` plus one READY round trip.

The test machine's noise is outside the world the test models: with both cores busy, the
sandbox's loop read an IDENTIFY 5.4 ms late and, with a 14.3 ms jitter draw against the
next one's 0.6 ms, stamped the next of its bucket 198 ms after it though the kernel had
them 217 ms apart (3 runs of 63; CI saw the same in 3 of ~10 clean-clone runs).
"""

from __future__ import annotations

import itertools
import math
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
from clusterkit import TOKEN, short_dir

from shardctl.gateway.machine import INVALID_SESSION_DELAY
from shardctl.gateway.pacing import DEFAULT_MARGIN
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Arrival jitter of the compressed run (issue 13's figure).
JITTER_MS = 15.0


@dataclass(frozen=True, slots=True)
class Tried:
    """One IDENTIFY as the sandbox saw it: accepted, or answered with op 9 (``refused``)."""

    shard: int
    bucket: int
    at: float  # its stamp, what the sandbox judged: read by the loop, plus the jitter
    received: float  # when it reached this host: the kernel's receive time
    jitter: float
    refused: bool

    @property
    def lag(self) -> float:
        """How late this machine's loop read it: noise outside the world the test models,
        where Discord's lateness in reading an IDENTIFY is the jitter."""
        return self.at - self.jitter - self.received


@dataclass(frozen=True, slots=True)
class Pace:
    span: float
    ideal: float
    tried: tuple[Tried, ...]
    readies: dict[int, float]  # shard -> when its (last) READY went

    @property
    def ratio(self) -> float:
        return self.span / self.ideal

    @property
    def op9(self) -> list[Tried]:
        return [t for t in self.tried if t.refused]

    def closest(self, when: Callable[[Tried], float]) -> float:
        """The shortest gap between IDENTIFYs of one bucket, each taken at ``when``."""
        gaps = [math.inf]
        for bucket in {t.bucket for t in self.tried}:
            times = sorted(when(t) for t in self.tried if t.bucket == bucket)
            gaps += [b - a for a, b in itertools.pairwise(times)]
        return min(gaps)

    def __str__(self) -> str:
        lags = sorted(t.lag for t in self.tried)
        return (f"span {self.span:.3f} s, ideal {self.ideal:.3f} s, ratio {self.ratio:.3f}, "
                f"{len(self.op9)} op 9 {self.op9}; the sandbox loop read IDENTIFYs "
                f"{lags[len(lags) // 2] * 1000:.1f} ms late (median), {lags[-1] * 1000:.1f} "
                f"ms at most; a bucket's closest two {self.closest(lambda t: t.received):.4f} "
                f"s apart at the host, {self.closest(lambda t: t.at):.4f} s as stamped")


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
        tried = tuple(
            Tried(r.shard_id, r["bucket"], r.at, r["received"], r["jitter"],
                  r.kind == "identify_rejected")
            for r in sb.recorder.records
            if r.kind == "identify" or (r.kind == "identify_rejected"
                                        and r["reason"] == "pacing"))
        readies = {r.shard_id: r.at for r in sb.records("ready")}
    # The span and its ideal are the shards' never answered with op 9: a refused shard
    # waits out the client's 1-5 s back-off (protocol §6) and is judged on its own
    # (`assert_refused_came_back`).
    refused = {t.shard for t in tried if t.refused}
    first = {}
    for t in tried:
        first.setdefault(t.shard, t.at)
    # The last READY came the sandbox's own IDENTIFY -> READY time after its shard's
    # IDENTIFY (the sandbox stamps both): that time is the sandbox's, not the pace's, so the
    # ideal takes the last shard's own rather than the median (one slow READY of the last
    # round on a loaded machine counted against the pace: 1.025x, seen once).
    last = max((s for s in readies if s not in refused), key=readies.__getitem__)
    rtt = readies[last] - first[last]
    ideal = (math.ceil(shards / mc) - 1) * cfg.identify_interval + rtt
    pace = Pace(readies[last] - min(t.at for t in tried), ideal, tried, readies)
    print(pace)
    return pace


#: What a loaded 2-core machine may add to a start-up beyond the margins (seconds, or a tenth
#: of the interval when that is more): the workers run at nice 10 beside the sandbox.
LOAD_ALLOWANCE = 0.1

#: How much sooner than the client's pace an IDENTIFY may reach this host.  The client paces
#: a bucket from when its previous send ended, and the kernel stamps a segment as the send
#: puts it on loopback, before it ends: only turning the kernel's clock into the loop's is
#: left (microseconds; seen: never below the pace at 0.1 ms resolution).
HOST_EPSILON = 0.001


def load_allowance(cfg: SandboxConfig) -> float:
    interval = cfg.identify_interval
    return min(max(LOAD_ALLOWANCE, interval / 10), interval / 2)


def paced_span(pace: Pace, cfg: SandboxConfig) -> float:
    """The longest start-up that lost no slot: the ideal, every gap's margin, and the load's
    allowance.  A lost slot costs a whole interval more than this allows (the allowance is
    at most half of one).  Fixed ratios (1.10x, 1.02x) left 30 ms and 105 ms for the load and
    failed in CI and with one core busy.  After an op 9 every bucket's margin is a step wider
    (at most a step per op 9): the gaps after the first op 9 pay it."""
    interval = cfg.identify_interval
    gaps = math.ceil(cfg.shard_count / cfg.max_concurrency) - 1
    span = pace.ideal + gaps * DEFAULT_MARGIN.base(interval) + load_allowance(cfg)
    if pace.op9:
        refused = {t.shard for t in pace.op9}
        end = max(t.at for t in pace.tried if t.shard not in refused)
        later = math.ceil(max(0.0, end - pace.op9[0].at) / interval)
        steps = min(len(pace.op9), DEFAULT_MARGIN.max_steps)
        span += later * steps * DEFAULT_MARGIN.step(interval)
    return span


def assert_the_client_paced_every_bucket(pace: Pace, cfg: SandboxConfig) -> None:
    """What the client controls, measured at this host: every IDENTIFY (accepted or not)
    reached it at least the interval and the base margin after its bucket's previous one."""
    least = cfg.identify_interval + DEFAULT_MARGIN.base(cfg.identify_interval) - HOST_EPSILON
    close = []
    for bucket in range(cfg.max_concurrency):
        arrived = sorted(t.received for t in pace.tried if t.bucket == bucket)
        close += [(bucket, round(b - a, 4)) for a, b in itertools.pairwise(arrived)
                  if b - a < least]
    assert not close, f"(bucket, gap) closer than {least:.4f} s at the host: {close}; {pace}"


def assert_only_this_machine_caused_op9(pace: Pace, cfg: SandboxConfig) -> None:
    """An op 9 passes only when this machine's loop made it: stamped at its arrival plus its
    jitter (Discord's lateness, the world the test models), each refused IDENTIFY would have
    come an interval after the accepted one before it.  And then at most one per bucket, all
    in one slow episode: the client widens every bucket's margin after the first, so no
    IDENTIFY reaching the host more than an interval after it may be refused (issue 13)."""
    interval = cfg.identify_interval
    accepted: dict[int, Tried] = {}  # bucket -> the one the sandbox's pacer compared with
    for t in pace.tried:  # in the order the sandbox judged them
        if not t.refused:
            accepted[t.bucket] = t
            continue
        before = accepted[t.bucket]
        modelled = (t.received + t.jitter) - (before.received + before.jitter)
        assert modelled >= interval, (
            f"shard {t.shard}'s IDENTIFY would have been refused without this machine's "
            f"lag too ({modelled:.4f} s after {before}); {pace}")
    buckets = [t.bucket for t in pace.op9]
    assert len(buckets) == len(set(buckets)), f"two op 9 in a bucket: {pace}"
    if pace.op9:
        late = [t for t in pace.op9 if t.received > pace.op9[0].at + interval]
        assert not late, f"op 9 after the margin widened: {late}; {pace}"


def assert_refused_shards_came_back(pace: Pace, cfg: SandboxConfig) -> None:
    """A shard answered with op 9 IDENTIFYs again after the client's back-off (protocol §6:
    1-5 s) as soon as its bucket allows, and is READY."""
    interval = cfg.identify_interval
    for op9 in pace.op9:
        again = [t for t in pace.tried if t.shard == op9.shard and t.at > op9.at]
        assert again and not again[0].refused and op9.shard in pace.readies, f"{op9}; {pace}"
        before = [t.received for t in pace.tried
                  if t.bucket == op9.bucket and t.received < again[0].received]
        free = max(before) + interval + DEFAULT_MARGIN.widest(interval)
        due = max(op9.at + INVALID_SESSION_DELAY[1], free) + load_allowance(cfg)
        assert again[0].received <= due, f"{again[0]} after {due:.3f}; {pace}"


def assert_paced(pace: Pace, cfg: SandboxConfig) -> None:
    """Issue 13's figure, split by who is answerable: the client's pace at the host, op 9
    only from this machine's own lateness (and handled as Discord asks), and the span."""
    assert_the_client_paced_every_bucket(pace, cfg)
    assert_only_this_machine_caused_op9(pace, cfg)
    assert_refused_shards_came_back(pace, cfg)
    bound = paced_span(pace, cfg)
    assert pace.span <= bound, f"longer than {bound:.3f} s: {pace}"


async def test_a_jittery_loop_stamping_gateway_sees_no_identify_too_fast() -> None:
    # 64 shards / 4 processes / max_concurrency 4 / 0.2 s, every frame read 0-15 ms late.
    # Every gap pays the margin (17 ms): 15 gaps make the span 1.09x the ideal 3 s.
    cfg = SandboxConfig(shard_count=64, max_concurrency=4, identify_interval=0.2,
                        arrival_jitter_ms=JITTER_MS, guilds_per_shard=1, members_per_guild=5,
                        heartbeat_interval_ms=41250, session_start_total=100_000, seed=13)
    assert_paced(await start_up(cfg, 4), cfg)


async def test_at_discords_pace_the_start_up_takes_the_ideal_span_without_op9() -> None:
    # 64 shards / 4 processes / max_concurrency 16 / 5 s: 16 IDENTIFYs a round reach the
    # sandbox together and its loop reads them one after another, each 0-15 ms late too.
    cfg = SandboxConfig(shard_count=64, max_concurrency=16, identify_interval=5.0,
                        arrival_jitter_ms=JITTER_MS, guilds_per_shard=1, members_per_guild=5,
                        heartbeat_interval_ms=41250, session_start_total=100_000, seed=13)
    assert_paced(await start_up(cfg, 4), cfg)
