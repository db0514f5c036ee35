"""LocalSessionLimiter: one IDENTIFY per bucket per interval, FIFO within a bucket."""

from __future__ import annotations

import itertools
import math

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import DEFAULT_MARGIN, IdentifyMargin
from shardctl.worker.limiter import LocalSessionLimiter, RejectionAware, SessionLimiter

pytestmark = pytest.mark.anyio


async def _grab(limiter: LocalSessionLimiter, shard_id: int,
                log: list[tuple[int, float]]) -> None:
    async with limiter.identify(shard_id):
        log.append((shard_id, anyio.current_time()))


def test_implements_the_protocol() -> None:
    assert isinstance(LocalSessionLimiter(), SessionLimiter)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        LocalSessionLimiter(Limits(max_concurrency=0))
    with pytest.raises(ValueError):
        LocalSessionLimiter(Limits(interval=-1.0))


async def test_one_grant_per_interval_in_fifo_order() -> None:
    limiter = LocalSessionLimiter(Limits(interval=0.1))
    log: list[tuple[int, float]] = []
    async with anyio.create_task_group() as tg:
        for shard_id in range(4):
            tg.start_soon(_grab, limiter, shard_id, log)
            await anyio.wait_all_tasks_blocked()  # queue them in a known order
    assert [s for s, _ in log] == [0, 1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(log)]
    assert all(g >= 0.1 - 1e-3 for g in gaps)


async def test_buckets_are_independent() -> None:
    limiter = LocalSessionLimiter(Limits(max_concurrency=2, interval=0.3))
    log: list[tuple[int, float]] = []
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for shard_id in (0, 1):  # bucket 0 and bucket 1: both at once
            tg.start_soon(_grab, limiter, shard_id, log)
    assert len(log) == 2 and all(t - start < 0.2 for _, t in log)
    assert limiter.bucket(2) == 0 and limiter.bucket(3) == 1


async def test_slot_is_used_even_if_the_send_fails() -> None:
    limiter = LocalSessionLimiter(Limits(interval=0.2))
    with pytest.raises(RuntimeError):
        async with limiter.identify(0):
            raise RuntimeError("socket closed")
    t0 = anyio.current_time()
    async with limiter.identify(0):
        waited = anyio.current_time() - t0
    assert waited >= 0.2 - 0.02


async def test_next_grant_counts_from_the_end_of_the_send() -> None:
    limiter = LocalSessionLimiter(Limits(interval=0.1))
    async with limiter.identify(0):
        await anyio.sleep(0.1)  # a slow send
        sent_at = anyio.current_time()
    async with limiter.identify(0):
        assert anyio.current_time() - sent_at >= 0.1 - 1e-3


async def test_injected_clock_is_used() -> None:
    fake = [100.0]
    limiter = LocalSessionLimiter(Limits(interval=5.0, margin=IdentifyMargin()),
                                  clock=lambda: fake[0])
    async with limiter.identify(0):
        pass
    fake[0] = 105.0  # five fake seconds later the bucket is free without real waiting
    with anyio.fail_after(0.5):
        async with limiter.identify(0):
            pass


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 0.03)),
                                   min_size=1, max_size=6))
def test_any_arrival_pattern_keeps_pacing_per_bucket(
        mc: int, arrivals: list[tuple[int, float]]) -> None:
    interval = 0.03

    async def main() -> list[tuple[int, float, float]]:
        limiter = LocalSessionLimiter(Limits(max_concurrency=mc, interval=interval))
        log: list[tuple[int, float, float]] = []  # (shard, asked at, granted at)

        async def one(shard_id: int, delay: float) -> None:
            await anyio.sleep(delay)
            asked = anyio.current_time()
            async with limiter.identify(shard_id):
                log.append((shard_id, asked, anyio.current_time()))

        async with anyio.create_task_group() as tg:
            for shard_id, delay in arrivals:
                tg.start_soon(one, shard_id, delay)
        return log

    log = anyio.run(main, backend="asyncio")
    assert len(log) == len(arrivals)
    for bucket in range(mc):
        grants = [(asked, at) for s, asked, at in log if s % mc == bucket]
        for (_, a), (_, b) in itertools.pairwise(grants):
            assert b - a >= interval - 1e-3  # never faster than one per interval
        asked_order = [asked for asked, _ in grants]
        assert asked_order == sorted(asked_order)  # first come, first served


async def _grants_at(limiter: LocalSessionLimiter, fake: list[float], at: float) -> bool:
    """Whether shard 0's bucket grants at fake time ``at`` but not 2 ms before it."""
    fake[0] = at - 0.002
    with anyio.move_on_after(0.05):
        async with limiter.identify(0):
            return False  # too early
    fake[0] = at
    with anyio.fail_after(1):
        async with limiter.identify(0):
            return True


async def test_the_cluster_margin_applies_in_one_process_too() -> None:
    # A gateway that reads an IDENTIFY late is no kinder to a one-process bot (issue 13).
    fake = [0.0]
    limiter = LocalSessionLimiter(Limits(interval=5.0), clock=lambda: fake[0])
    async with limiter.identify(0):
        pass
    assert limiter.margins.margin(0, 5.0) == pytest.approx(DEFAULT_MARGIN.base(5.0))
    assert await _grants_at(limiter, fake, 5.0 + DEFAULT_MARGIN.base(5.0))


async def test_an_op9_widens_every_bucket_from_the_gap_being_waited_out() -> None:
    fake = [0.0]
    limiter = LocalSessionLimiter(Limits(max_concurrency=2, interval=5.0), clock=lambda: fake[0])
    assert isinstance(limiter, RejectionAware)
    async with limiter.identify(0):
        pass
    limiter.identify_rejected(0, 0.01)
    step = DEFAULT_MARGIN.step(5.0)
    assert limiter.margins.margin(0, 5.0) == pytest.approx(DEFAULT_MARGIN.base(5.0) + step)
    assert limiter.margins.margin(1, 5.0) == pytest.approx(DEFAULT_MARGIN.base(5.0) + step)
    assert await _grants_at(limiter, fake, 5.0 + DEFAULT_MARGIN.base(5.0) + step)


@pytest.mark.parametrize("interval", [math.nan, math.inf, 0.0])
def test_an_interval_no_limiter_could_keep_is_refused_in_one_process_too(
        interval: float) -> None:
    # The cluster's limiter always refused these; the in-process one took NaN (no grant
    # ever came), inf and 0 (no pacing at all).  Both now check one Limits value.
    with pytest.raises(ValueError, match="identify interval"):
        LocalSessionLimiter(Limits(interval=interval))


def test_a_budget_is_refused_rather_than_silently_not_kept() -> None:
    with pytest.raises(ValueError, match="keeps no session-start budget"):
        LocalSessionLimiter(Limits(remaining=10, total=1000))


def test_the_limits_given_are_the_limits_kept() -> None:
    limits = Limits(max_concurrency=4, interval=0.5, margin=IdentifyMargin(floor=0.1))
    limiter = LocalSessionLimiter(limits)
    assert limiter.limits is limits
    assert (limiter.max_concurrency, limiter.interval) == (4, 0.5)
    assert limiter.margins.policy is limits.margin
    assert limiter.bucket(6) == 2
