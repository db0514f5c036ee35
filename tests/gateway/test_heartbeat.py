"""Heartbeat schedule, zombie rule and latency (protocol §3), on a fake clock."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.gateway.backoff import backoff
from shardctl.gateway.heartbeat import ACK_TIMEOUT_MIN, Heartbeat, default_ack_timeout


def test_first_beat_is_interval_times_jitter() -> None:
    hb = Heartbeat(40.0, now=100.0, jitter=0.25)
    assert hb.next_beat == pytest.approx(110.0)
    assert not hb.due(109.9)
    assert hb.due(110.0)


@given(st.floats(0.0, 1.0), st.floats(0.001, 100.0))
def test_first_beat_within_zero_and_interval(jitter: float, interval: float) -> None:
    hb = Heartbeat(interval, now=5.0, jitter=jitter)
    assert 5.0 <= hb.next_beat <= 5.0 + interval


def test_beats_follow_every_interval_and_ack_gives_latency() -> None:
    hb = Heartbeat(10.0, now=0.0, jitter=0.0)
    hb.sent(0.0)
    assert hb.next_beat == 10.0 and hb.awaiting_ack
    assert hb.acked(0.125) == pytest.approx(0.125)
    assert hb.latency == pytest.approx(0.125) and not hb.awaiting_ack
    assert not hb.is_zombie(10.0)


def test_missing_ack_when_next_beat_due_is_zombie() -> None:
    # The protocol's rule alone: an ACK timeout as long as the interval.
    hb = Heartbeat(10.0, now=0.0, jitter=0.0, ack_timeout=10.0)
    hb.sent(0.0)
    assert not hb.is_zombie(9.99)
    assert hb.is_zombie(10.0)


def test_an_ack_later_than_the_ack_timeout_is_a_zombie() -> None:
    hb = Heartbeat(40.0, now=0.0, jitter=0.0)
    assert hb.ack_timeout == pytest.approx(3.0)  # 7.5 % of the interval
    assert hb.deadline() == 0.0 and hb.ack_deadline() == math.inf
    hb.sent(0.0)
    assert hb.deadline() == pytest.approx(3.0)
    assert not hb.is_zombie(2.99)
    assert hb.is_zombie(3.0)
    hb.acked(2.5)
    assert not hb.is_zombie(39.0) and hb.deadline() == 40.0


def test_the_default_ack_timeout_has_a_floor_and_never_exceeds_the_interval() -> None:
    assert default_ack_timeout(41.25) == pytest.approx(3.09375)
    assert default_ack_timeout(5.0) == ACK_TIMEOUT_MIN
    assert default_ack_timeout(0.6) == 0.6  # the protocol's rule alone
    with pytest.raises(ValueError, match="ack_timeout"):
        Heartbeat(1.0, now=0.0, jitter=0.0, ack_timeout=0.0)


def test_requested_beat_resets_timer() -> None:
    hb = Heartbeat(10.0, now=0.0, jitter=0.5)
    hb.sent(2.0)
    assert hb.next_beat == 12.0


def test_unsolicited_ack_does_not_set_latency() -> None:
    hb = Heartbeat(10.0, now=0.0, jitter=0.0)
    assert hb.acked(1.0) is None and hb.latency is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_interval_is_protocol_error(bad: float) -> None:
    with pytest.raises(ProtocolError):
        Heartbeat(bad, now=0.0, jitter=0.5)


def test_backoff_grows_with_jitter_and_caps() -> None:
    delays = backoff(random.Random(1), first=1.0, factor=2.0, cap=8.0)
    values = [next(delays) for _ in range(8)]
    assert 0.0 <= values[0] <= 1.0
    assert 1.0 <= values[1] <= 2.0
    assert 2.0 <= values[2] <= 4.0
    assert all(4.0 <= v <= 8.0 for v in values[4:])
    other = backoff(random.Random(2), first=1.0, factor=2.0, cap=8.0)
    assert values != [next(other) for _ in range(8)]


def test_a_connection_that_delivers_frames_is_judged_by_the_protocol_rule_only() -> None:
    hb = Heartbeat(40.0, now=0.0, jitter=0.0)
    hb.sent(0.0)
    hb.heard = True  # a dispatch arrived after the beat: the ACK is queued behind data
    assert hb.ack_deadline() == math.inf and hb.deadline() == 40.0
    assert not hb.is_zombie(39.99)
    assert hb.is_zombie(40.0)
    hb.sent(40.0)  # a new beat: silence is judged afresh
    assert not hb.heard and hb.ack_deadline() == pytest.approx(43.0)
