"""The session limiter across real worker processes, judged by the sandbox (DESIGN.md §6).

The test process runs the sandbox (our Discord) and the limiter service; every worker is an
OS process (``limiter_worker.py``) running real Shards that share one LimiterClient.  What
counts is what the sandbox saw: the arrival time and bucket of every IDENTIFY it accepted.

Every bucket starts free, and the workers ask for slots only once all their shards are
connected (``limiter_worker.py`` holds the requests at a gate until told ``open``): the burst
of every shard opening its socket at once, on a machine that may have two cores, is not what
these tests measure; the pace is.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import DEFAULT_MARGIN
from shardctl.sandbox import Record, Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKER = Path(__file__).with_name("limiter_worker.py")
INTERVAL = 0.2
PROBE = 0.05
#: Scheduling noise allowed on top of a gap: a grant and a release each cross two processes.
SLACK = 0.05
#: The contract: first→last IDENTIFY within 2 % of the paced span, every gap an interval
#: plus the margin (the 64-shard test).
MAX_SPAN_RATIO = 1.02
#: From the gates opening to the first grant of every bucket.
START_DELAY = 0.5


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="slc-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


def sandbox_config(shard_count: int, max_concurrency: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shard_count, max_concurrency=max_concurrency,
                         identify_interval=INTERVAL, heartbeat_interval_ms=60_000,
                         guilds_per_shard=1, members_per_guild=1, seed=1)


async def _line(stdout: BufferedByteReceiveStream) -> str:
    return (await stdout.receive_until(b"\n", 64)).decode()


@asynccontextmanager
async def workers(endpoint: str, gateway: str, shard_count: int, processes: int
                  ) -> AsyncIterator[list[Process]]:
    """Start ``processes`` workers (shards dealt round-robin), let them connect together once
    every one is up, and stop them all on exit: stdin closed, then SIGKILL if need be."""
    started: list[Process] = []
    try:
        for k in range(processes):
            ids = range(k, shard_count, processes)
            started.append(await anyio.open_process(
                [sys.executable, str(WORKER), endpoint, gateway, str(shard_count),
                 *map(str, ids)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None))
        with anyio.fail_after(15):
            for process in started:
                assert process.stdout is not None
                assert await _line(BufferedByteReceiveStream(process.stdout)) == "up"
        for process in started:
            assert process.stdin is not None
            await process.stdin.send(b"go\n")
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for process in started:
                if process.stdin is not None:
                    await process.stdin.aclose()
            for process in started:
                with anyio.move_on_after(5):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def open_gates(sb: Sandbox, processes: Sequence[Process], shard_count: int,
                     server: SessionLimiterService | None = None) -> None:
    """Once every shard has its HELLO, let the workers ask the limiter for slots.

    With ``server``, every bucket's first grant waits for one common instant, by which all
    requests are queued: the workers reading their gate at slightly different moments is
    not the pace this measures.
    """
    await sb.wait_for(lambda: len(sb.records("hello")) == shard_count, timeout=15)
    if server is not None:
        server.hold_until(anyio.current_time() + START_DELAY)
    for process in processes:
        assert process.stdin is not None
        await process.stdin.send(b"open\n")


def identifies_by_bucket(records: Sequence[Record]) -> dict[int, list[float]]:
    by_bucket: dict[int, list[float]] = {}
    for record in sorted(records, key=lambda r: r.at):
        by_bucket.setdefault(record["bucket"], []).append(record.at)
    return by_bucket


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def assert_paced(sb: Sandbox) -> dict[int, list[float]]:
    """No violation, no op 9, and one accepted IDENTIFY per bucket per interval at most."""
    assert not sb.violations
    assert not sb.records("identify_rejected")
    assert not sb.records("invalid_session")
    by_bucket = identifies_by_bucket(sb.records("identify"))
    for bucket, times in by_bucket.items():
        assert all(gap >= INTERVAL for gap in gaps(times)), (bucket, gaps(times))
    return by_bucket


async def test_64_shards_in_4_processes_identify_at_the_ideal_pace(endpoint: str) -> None:
    shard_count, mc = 64, 4
    server = SessionLimiterService(endpoint, Limits(max_concurrency=mc, interval=INTERVAL),
                                   last_grants={})
    async with Sandbox(sandbox_config(shard_count, mc)) as sb, anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with workers(endpoint, sb.gateway_url, shard_count, 4) as processes:
            await open_gates(sb, processes, shard_count, server)
            await sb.wait_for(lambda: len(sb.records("ready")) == shard_count, timeout=15)
            by_bucket = assert_paced(sb)
            identifies = sb.records("identify")
        assert [p.returncode for p in processes] == [0] * 4  # stdin closed: clean shutdown
        tg.cancel_scope.cancel()

    assert sorted(r.shard_id or 0 for r in identifies) == list(range(shard_count))
    assert sorted(len(times) for times in by_bucket.values()) == [shard_count // mc] * mc
    # Each gap is the interval, the margin (15 ms + 1 % of it: 17 ms) and the wake-up and send
    # after the slot (~1 ms): measured 1.005-1.007 on a 2-core host running the sandbox, the
    # limiter and 4 workers at once.  A lost or late slot would add a whole gap (+6.7 %).
    paced = (math.ceil(shard_count / mc) - 1) * (INTERVAL + DEFAULT_MARGIN.base(INTERVAL))
    times = [r.at for r in identifies]
    span = max(times) - min(times)
    print(f"first->last IDENTIFY {span:.4f} s, paced {paced:.3f} s, ratio {span / paced:.4f}")
    assert span <= MAX_SPAN_RATIO * paced, (span, paced)


async def test_killing_a_worker_mid_startup_costs_the_others_at_most_its_slot(
        endpoint: str) -> None:
    shard_count, mc, victim = 24, 2, 1
    server = SessionLimiterService(endpoint, Limits(max_concurrency=mc, interval=INTERVAL),
                                   last_grants={}, probe_interval=PROBE)
    survivors = {s for s in range(shard_count) if s % 3 != victim}

    def identified(shards: set[int]) -> int:
        return sum(1 for r in sb.records("identify") if r.shard_id in shards)

    async with Sandbox(sandbox_config(shard_count, mc)) as sb, anyio.create_task_group() as tg:
        await tg.start(server.serve)
        async with workers(endpoint, sb.gateway_url, shard_count, 3) as processes:
            await open_gates(sb, processes, shard_count)
            doomed = set(range(victim, shard_count, 3))
            # Some of its shards have identified, the rest wait (or one holds a grant).
            await sb.wait_for(lambda: identified(doomed) >= 2, timeout=10)
            processes[victim].kill()
            killed_at = anyio.current_time()
            await sb.wait_for(
                lambda: survivors <= {r.shard_id for r in sb.records("ready")}, timeout=15)
            by_bucket = assert_paced(sb)
        tg.cancel_scope.cancel()

    assert identified(doomed) < len(doomed), "the kill came too late to test anything"
    paced_gap = INTERVAL + DEFAULT_MARGIN.base(INTERVAL)
    for bucket, times in by_bucket.items():
        after = [b - a for a, b in itertools.pairwise(times) if b > killed_at]
        # The dead process may have held the bucket's slot (granted, IDENTIFY maybe never
        # sent): that grant is spent (DESIGN.md §6), the probe notices the dead holder
        # within about PROBE, and the next grant comes one interval after that.  So one gap
        # per bucket may reach 2 paced gaps (interval + margin) + PROBE; any longer one, or
        # a second long one, would be a slot lost for good.  A grant sent after the kill
        # fails to send and goes to the next request at once.
        assert all(gap < 2 * paced_gap + PROBE + SLACK for gap in after), (bucket, after)
        assert sum(gap >= INTERVAL + SLACK for gap in after) <= 1, (bucket, after)
