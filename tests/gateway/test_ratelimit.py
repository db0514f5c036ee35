"""Outbound rate limits (protocol §9), driven by a fake clock."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.errors import ConfigurationError
from shardctl.gateway import ratelimit
from shardctl.gateway.ratelimit import PRESENCE_LIMIT, CommandRateLimit, SlidingWindow


def test_public_names_and_documented_limits() -> None:
    for name in ratelimit.__all__:
        assert hasattr(ratelimit, name)
    assert PRESENCE_LIMIT == (5, 20.0)
    limiter = CommandRateLimit()
    assert (limiter.limit, limiter.per, limiter.reserve) == (120, 60.0, 10)


def test_sliding_window_allows_limit_then_frees_a_slot_exactly_per_seconds_later() -> None:
    window = SlidingWindow(3, 10.0)
    assert [window.try_acquire(t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, True, False]
    assert window.next_free(3.0) == 10.0
    assert not window.try_acquire(9.999)
    assert window.try_acquire(10.0)  # the slot taken at 0 covers [0, 10) only
    assert window.next_free(10.0) == 11.0
    assert window.remaining(11.5) == 1  # 2.0 and 10.0 still held
    assert window.remaining(12.0) == 2


def test_sliding_window_next_free_is_now_when_a_slot_is_free() -> None:
    window = SlidingWindow(2, 5.0)
    assert window.next_free(7.0) == 7.0
    window.try_acquire(7.0)
    assert window.next_free(8.0) == 8.0


def test_sliding_window_reset_forgets_everything() -> None:
    window = SlidingWindow(1, 60.0)
    assert window.try_acquire(0.0)
    assert not window.try_acquire(1.0)
    window.reset()
    assert window.try_acquire(1.0)


def test_time_going_backwards_counts_as_the_latest_time() -> None:
    window = SlidingWindow(1, 10.0)
    assert window.try_acquire(100.0)
    assert not window.try_acquire(50.0)
    assert window.next_free(50.0) == 110.0


@pytest.mark.parametrize(("limit", "per"), [(0, 1.0), (-1, 1.0), (True, 1.0), (1.5, 1.0),
                                            (1, 0.0), (1, -1.0), (1, float("inf")),
                                            (1, float("nan")), (1, "1")])
def test_sliding_window_refuses_nonsense(limit: object, per: object) -> None:
    with pytest.raises(ConfigurationError):
        SlidingWindow(limit, per)  # type: ignore[arg-type]


@pytest.mark.parametrize(("limit", "reserve"), [(10, 10), (10, 11), (10, -1), (10, True)])
def test_command_limit_refuses_a_reserve_that_leaves_no_room(limit: int, reserve: int) -> None:
    with pytest.raises(ConfigurationError, match="reserve"):
        CommandRateLimit(limit=limit, reserve=reserve)


def test_commands_stop_at_limit_minus_reserve_and_heartbeats_still_go() -> None:
    limiter = CommandRateLimit()
    sent = sum(limiter.try_acquire(0.0) for _ in range(200))
    assert sent == 110
    assert limiter.next_free(0.0) == 60.0
    assert limiter.next_free(0.0, priority=True) == 0.0
    assert all(limiter.try_acquire(1.0, priority=True) for _ in range(10))
    assert not limiter.try_acquire(1.0, priority=True)
    assert limiter.next_free(1.0, priority=True) == 60.0


def test_priority_sends_share_the_total_with_commands() -> None:
    limiter = CommandRateLimit(limit=5, per=10.0, reserve=2)
    assert all(limiter.try_acquire(0.0, priority=True) for _ in range(4))
    assert limiter.remaining(0.0) == 1
    assert limiter.try_acquire(0.0)
    assert not limiter.try_acquire(0.0)
    assert not limiter.try_acquire(0.0, priority=True)
    assert limiter.next_free(0.0) == 10.0


def test_reset_starts_a_new_connections_budget() -> None:
    limiter = CommandRateLimit(limit=2, per=60.0, reserve=1)
    assert limiter.try_acquire(0.0)
    assert not limiter.try_acquire(0.0)
    limiter.reset()
    assert limiter.try_acquire(0.0)


# -- invariants under any arrival pattern ---------------------------------------------------

#: Quarter-second steps land exactly on window edges; arbitrary floats check the rest.
_steps = st.lists(
    st.tuples(st.integers(0, 24).map(lambda q: q / 4) | st.floats(0, 7.5), st.booleans()),
    max_size=150,
)


def _max_in_any_window(times: list[float], per: float) -> int:
    """The most events in any half-open interval [a, a + per); maxima start at an event."""
    times = sorted(times)
    return max((sum(1 for u in times if t <= u < t + per) for t in times), default=0)


def _in_trailing_window(times: list[float], now: float, per: float) -> int:
    return sum(1 for t in times if t + per > now)


@settings(max_examples=200, deadline=None)
@given(steps=_steps, limit=st.integers(1, 8), per=st.sampled_from([10.0, 3.0, 0.7]))
def test_sliding_window_never_exceeds_limit_in_any_window(
    steps: list[tuple[float, bool]], limit: int, per: float
) -> None:
    window, now, taken = SlidingWindow(limit, per), 0.0, []
    for delta, _ in steps:
        now += delta
        expected_free = window.next_free(now)
        if window.try_acquire(now):
            assert expected_free == now
            taken.append(now)
        else:
            assert expected_free > now
            # Full: exactly `limit` slots are held in the trailing window.
            assert _in_trailing_window(taken, now, per) == limit
    assert _max_in_any_window(taken, per) <= limit


@settings(max_examples=200, deadline=None)
@given(steps=_steps, limit=st.integers(2, 12), per=st.sampled_from([10.0, 3.0, 0.7]),
       data=st.data())
def test_command_limit_invariants(
    steps: list[tuple[float, bool]], limit: int, per: float, data: st.DataObject
) -> None:
    reserve = data.draw(st.integers(0, limit - 1))
    limiter, now = CommandRateLimit(limit=limit, per=per, reserve=reserve), 0.0
    normal: list[float] = []
    prio: list[float] = []
    for delta, priority in steps:
        now += delta
        if limiter.try_acquire(now, priority=priority):
            (prio if priority else normal).append(now)
            continue
        if priority:
            # A priority send is refused only when the whole window is used up, and then
            # priority sends themselves hold at least `reserve` of it.
            assert _in_trailing_window(normal + prio, now, per) == limit
            assert _in_trailing_window(prio, now, per) >= reserve
        elif _in_trailing_window(prio, now, per) < reserve:
            # Commands saturated their share: a heartbeat must still get through right now.
            assert limiter.next_free(now, priority=True) == now
            assert limiter.try_acquire(now, priority=True)
            prio.append(now)
    assert _max_in_any_window(normal + prio, per) <= limit
    assert _max_in_any_window(normal, per) <= limit - reserve


@settings(max_examples=200, deadline=None)
@given(steps=_steps, priority=st.booleans(), probe=st.floats(0, 20))
def test_next_free_is_the_earliest_time_a_send_succeeds(
    steps: list[tuple[float, bool]], priority: bool, probe: float
) -> None:
    limiter, now = CommandRateLimit(limit=6, per=10.0, reserve=2), 0.0
    for delta, kind in steps:
        now += delta
        limiter.try_acquire(now, priority=kind)
    at = now + probe
    free = limiter.next_free(at, priority=priority)
    assert free >= at
    assert copy.deepcopy(limiter).try_acquire(free, priority=priority)
    if free > at:
        assert not copy.deepcopy(limiter).try_acquire(at, priority=priority)
        earlier = max(at, free - 1e-6)
        if earlier < free:
            assert not copy.deepcopy(limiter).try_acquire(earlier, priority=priority)
