"""The per-peer request budget of the control channel (cluster/peers.py)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.cluster.peers import PeerBudget


def test_a_burst_then_the_steady_rate(caplog: pytest.LogCaptureFixture) -> None:
    budget = PeerBudget(rate=10.0, burst=20.0)
    assert all(budget.allow(b"a", 0.0) for _ in range(20))
    assert not budget.allow(b"a", 0.0)
    assert budget.allow(b"b", 0.0), "peers have budgets of their own"
    assert budget.allow(b"a", 0.1) and not budget.allow(b"a", 0.1)  # 10/s: one per 0.1 s
    assert [budget.allow(b"a", 10.0) for _ in range(21)].count(True) == 20  # refilled, capped
    assert budget.refused == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and b"a".hex() in warnings[0].getMessage()


def test_memory_stays_bounded_however_many_peers_connect() -> None:
    budget = PeerBudget(rate=1.0, burst=1.0, max_peers=8)
    for n in range(1000):
        budget.allow(n.to_bytes(4, "big"), 0.0)
    assert len(budget._buckets) == 8


def test_first_says_yes_once_per_peer_and_topic() -> None:
    budget = PeerBudget()
    budget.allow(b"a", 0.0)
    assert budget.first(b"a", "register") and not budget.first(b"a", "register")
    assert budget.first(b"a", "other")


@given(st.lists(st.floats(0, 0.5), max_size=200), st.floats(0.5, 50), st.integers(1, 30))
def test_never_more_than_the_burst_plus_the_rate_over_the_time(
        gaps: list[float], rate: float, burst: int) -> None:
    budget = PeerBudget(rate=rate, burst=float(burst))
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += budget.allow(b"p", now)
    assert allowed <= burst + rate * now + 1e-6


def test_peers_without_credentials_share_one_budget_however_many_connect() -> None:
    budget = PeerBudget(rate=10.0, burst=20.0, anonymous_rate=5.0, anonymous_burst=8.0)
    answered = sum(budget.allow(n.to_bytes(4, "big"), 0.0, anonymous=True)
                   for n in range(100))
    assert answered == 8
    assert budget.allow(b"operator", 0.0), "peers with credentials do not share it"
    assert sum(budget.allow(n.to_bytes(4, "big"), 1.0, anonymous=True)
               for n in range(100, 200)) == 5
