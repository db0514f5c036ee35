"""The sandbox's rule classes on a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from shardctl.sandbox.rules import (
    HeartbeatMonitor,
    IdentifyPacer,
    MemberRequestLimiter,
    SessionBudget,
    SlidingWindow,
)


def test_sliding_window_allows_limit_then_refuses_until_oldest_ages_out() -> None:
    w = SlidingWindow(3, 10.0)
    assert [w.hit(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert w.hit(9.9) is False
    assert w.hit(10.5) is False  # 1.0, 2.0, 9.9 and 10.5 are inside (0.5, 10.5]
    w2 = SlidingWindow(3, 10.0)
    for t in (0.0, 1.0, 2.0):
        w2.hit(t)
    assert w2.hit(10.0) is True  # the event at 0.0 left the window


def test_fixed_window_resets_at_boundary() -> None:
    w = SlidingWindow(2, 10.0, fixed=True)
    assert [w.hit(0), w.hit(1), w.hit(2)] == [True, True, False]
    assert w.hit(10.0) is True


@given(st.lists(st.floats(min_value=0, max_value=1000), min_size=1, max_size=300))
def test_sliding_window_never_admits_more_than_limit_in_any_window(times: list[float]) -> None:
    times.sort()
    w = SlidingWindow(5, 20.0)
    admitted = [t for t in times if w.hit(t)]
    for i, t in enumerate(admitted):
        assert sum(1 for u in admitted[: i + 1] if t - u < 20.0) <= 5


def test_heartbeat_deadline_is_interval_plus_tolerance_from_last_beat() -> None:
    hb = HeartbeatMonitor(1.0, 0.25, hello_at=100.0)
    assert hb.deadline() == 101.25
    assert not hb.expired(101.25) and hb.expired(101.26)
    assert abs(hb.beat(100.4) - 0.4) < 1e-9
    assert hb.deadline() == 100.4 + 1.25


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=100),
       st.integers(min_value=1, max_value=4))
def test_pacer_accepted_identifies_per_bucket_are_interval_apart(
        times: list[float], mc: int) -> None:
    pacer = IdentifyPacer(mc, 5.0)
    for i, t in enumerate(sorted(times)):
        pacer.try_acquire(i, t)
    for history in pacer.history.values():
        assert all(b - a >= 5.0 for a, b in itertools.pairwise(history))


def test_pacer_rejected_try_does_not_restart_window_and_buckets_are_independent() -> None:
    pacer = IdentifyPacer(2, 5.0)
    assert pacer.try_acquire(0, 0.0)
    assert pacer.try_acquire(1, 0.1)  # another bucket
    assert not pacer.try_acquire(2, 4.0)  # bucket 0 again, too soon
    assert pacer.try_acquire(2, 5.0)  # 5 s after the accepted one, not the rejected one


def test_session_budget_counts_accepted_starts_and_resets_after_window() -> None:
    b = SessionBudget(total=2, remaining_at_start=2, window=100.0)
    assert b.reset_after_ms(0.0) == 100_000
    assert b.take(10.0) and b.remaining(10.0) == 1
    assert b.reset_after_ms(60.0) == 50_000
    assert b.take(20.0) and b.remaining(20.0) == 0
    assert not b.take(30.0) and b.revoked
    fresh = SessionBudget(total=2, remaining_at_start=2, window=100.0)
    fresh.take(0.0)
    assert fresh.remaining(100.0) == 2


def test_member_request_limiter_is_per_guild() -> None:
    lim = MemberRequestLimiter(30.0)
    assert lim.retry_after(1, 0.0) == 0.0
    assert lim.retry_after(1, 10.0) == 20.0
    assert lim.retry_after(2, 10.0) == 0.0
    assert lim.retry_after(1, 30.0) == 0.0
