from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardctl.cluster.restarts import RestartPolicy


def test_crash_loop_is_refused_after_max_restarts_in_window() -> None:
    policy = RestartPolicy(max_restarts=3, window=60.0)
    assert [policy.record(t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert policy.record(3.0) is None


def test_old_restarts_leave_the_window() -> None:
    policy = RestartPolicy(max_restarts=2, window=10.0)
    assert policy.record(0.0) == 0.0
    assert policy.record(5.0) == 0.0
    assert policy.record(16.0) == 0.0


def test_backoff_doubles_and_is_capped() -> None:
    policy = RestartPolicy(max_restarts=10, window=100.0, base_delay=0.5, max_delay=3.0)
    assert [policy.record(float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@given(st.lists(st.floats(0, 1000, allow_nan=False), max_size=50))
def test_never_more_restarts_than_allowed_in_any_window(times: list[float]) -> None:
    policy = RestartPolicy(max_restarts=3, window=10.0)
    allowed = [t for t in sorted(times) if policy.record(t) is not None]
    for t in allowed:
        assert sum(1 for u in allowed if t - 10.0 < u <= t) <= 3
