"""The pure identify scheduler on a fake clock: pacing, FIFO, budget, live updates."""

from __future__ import annotations

import math

import pytest

from shardctl.cluster.limiter import Grant, IdentifyScheduler, Parked
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import IdentifyMargin

#: The scheduler's own arithmetic: no margin unless a test gives one.
NO_MARGIN = IdentifyMargin()


def drain(s: IdentifyScheduler[str], now: float, until: float) -> list[Grant[str]]:
    """Poll at every deadline up to ``until``, as a driver would."""
    grants = s.poll(now)
    while (d := s.next_deadline()) is not None and d <= until:
        grants += s.poll(max(d, now))
    return grants


def test_start_waits_one_interval_without_history() -> None:
    s = IdentifyScheduler[str](now=100.0, limits=Limits(interval=5.0, margin=NO_MARGIN))
    s.request("a", 0)
    assert s.poll(100.0) == []
    assert s.next_deadline() == 105.0
    assert s.poll(104.999) == []
    assert [g.key for g in s.poll(105.0)] == ["a"]


def test_given_history_skips_the_startup_wait() -> None:
    s = IdentifyScheduler[str](now=100.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={0: 97.0})
    s.request("a", 0)
    assert s.poll(100.0) == []
    assert s.next_deadline() == 102.0
    t = IdentifyScheduler[str](now=100.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    t.request("a", 0)
    assert [g.at for g in t.poll(100.0)] == [100.0]


def test_one_grant_per_bucket_per_interval_fifo() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    for i, key in enumerate("abcd"):
        s.request(key, i)  # max_concurrency 1: one bucket
    grants = drain(s, 0.0, 100.0)
    assert [(g.key, g.at) for g in grants] == [("a", 0.0), ("b", 5.0), ("c", 10.0), ("d", 15.0)]


def test_buckets_run_in_parallel_and_in_order() -> None:
    # 32 shards with max_concurrency 16: shards 0-15 together, then 16-31 (protocol §9).
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=16, interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    for shard in range(32):
        s.request(shard, shard)
    first = s.poll(0.0)
    assert [g.shard_id for g in first] == list(range(16))
    assert s.next_deadline() == 5.0
    assert [g.shard_id for g in s.poll(5.0)] == list(range(16, 32))


def test_late_poll_paces_from_the_actual_grant() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    s.request("a", 0)
    s.request("b", 0)
    assert [g.at for g in s.poll(1.5)] == [1.5]
    assert s.next_deadline() == 6.5


def test_cancelled_request_takes_no_slot() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    for key in "abc":
        s.request(key, 0)
    assert [g.key for g in s.poll(0.0)] == ["a"]
    assert s.cancel("b")
    assert not s.cancel("a")  # already granted: too late, it counts
    assert [(g.key, g.at) for g in s.poll(5.0)] == [("c", 5.0)]


def test_undeliverable_grant_gives_the_slot_to_the_next_request() -> None:
    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(interval=5.0, remaining=10, margin=NO_MARGIN),
                               last_grants={})
    for key in ("dead-1", "dead-2", "live"):
        s.request(key, 0)
    grants = s.poll(0.0, lambda g: not g.key.startswith("dead"))
    assert [(g.key, g.at) for g in grants] == [("live", 0.0)]
    assert s.remaining == 9
    assert s.next_deadline() is None


def test_duplicate_request_is_ignored() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(margin=NO_MARGIN), last_grants={})
    assert s.request("a", 3)
    assert not s.request("a", 3)
    assert len(s) == 1


def test_budget_holds_grants_until_the_reset() -> None:
    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(interval=1.0, remaining=2, total=5, reset_after=30.0,
                                             margin=NO_MARGIN), last_grants={})
    for key in "abcd":
        s.request(key, 0)
    assert [g.key for g in drain(s, 0.0, 29.0)] == ["a", "b"]
    assert s.remaining == 0
    assert s.budget_exhausted()
    assert s.next_deadline() == 30.0
    assert [(g.key, g.at) for g in drain(s, 30.0, 31.0)] == [("c", 30.0), ("d", 31.0)]
    assert s.remaining == 3
    # The refilled window is assumed to open at its first grant.
    assert s.reset_at == 30.0 + 86_400.0


def test_budget_without_reset_time_waits_for_an_update() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(remaining=0, margin=NO_MARGIN),
                               last_grants={})
    s.request("a", 0)
    assert s.poll(10.0) == []
    assert s.next_deadline() is None
    s.update(10.0, remaining=1, reset_after=100.0)
    assert [g.key for g in s.poll(10.0)] == ["a"]


def test_budget_report_in_the_same_window_only_lowers_remaining() -> None:
    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(remaining=10, total=10, reset_after=1000.0,
                                             margin=NO_MARGIN), last_grants={})
    s.request("a", 0)
    s.poll(0.0)
    assert s.remaining == 9
    # A /gateway/bot fetched before that grant still says 10: it lags, keep 9.
    s.update(1.0, remaining=10, reset_after=999.0)
    assert s.remaining == 9
    s.update(2.0, remaining=4, reset_after=998.0)
    assert s.remaining == 4
    # A later reset time means a new window: believe it.
    s.update(3.0, remaining=10, reset_after=5000.0)
    assert s.remaining == 10
    assert s.reset_at == 5003.0


def test_max_concurrency_change_rebuckets_and_never_speeds_up() -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=1, interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    for shard in range(4):
        s.request(shard, shard)
    assert [g.shard_id for g in s.poll(0.0)] == [0]
    s.update(1.0, max_concurrency=2)
    # Every new bucket starts from the latest old grant (0.0): nothing before 5.0.
    assert s.poll(4.9) == []
    assert [g.shard_id for g in s.poll(5.0)] == [1, 2]
    assert [g.shard_id for g in s.poll(10.0)] == [3]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        IdentifyScheduler[str](now=0.0, limits=Limits(interval=0.0, margin=NO_MARGIN))
    with pytest.raises(ValueError):
        IdentifyScheduler[str](now=0.0, limits=Limits(max_concurrency=0, margin=NO_MARGIN))
    with pytest.raises(ValueError):
        IdentifyScheduler[str](now=0.0, limits=Limits(interval=math.nan, margin=NO_MARGIN))
    s = IdentifyScheduler[str](now=0.0, limits=Limits(margin=NO_MARGIN))
    with pytest.raises(ValueError):
        s.request("a", -1)


def test_last_grants_round_trip() -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=2, interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    s.request(0, 0)
    s.poll(3.0)
    assert s.last_grants() == {0: 3.0}
    t = IdentifyScheduler[int](now=4.0,
                               limits=Limits(max_concurrency=2, interval=5.0, margin=NO_MARGIN),
                               last_grants=s.last_grants())
    t.request(0, 0)
    t.request(1, 1)
    assert [g.shard_id for g in t.poll(4.0)] == [1]
    assert t.next_deadline() == 8.0


def test_held_grant_paces_the_bucket_from_its_release() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=5.0)
    s.request("a", 0)
    s.request("b", 0)
    assert [g.key for g in s.poll(0.0)] == ["a"]
    assert list(s.holding()) == [("a", 0, 0.0)]
    assert s.next_deadline() == 10.0  # held: assumed sent by its limit
    assert s.release("a", 0.25)
    assert not s.release("a", 0.5)  # once
    assert s.next_deadline() == 5.25
    assert s.poll(5.0) == []
    assert [g.key for g in s.poll(5.25)] == ["b"]


def test_holder_that_never_releases_counts_as_sent_at_its_limit() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=2.0)
    s.request("a", 0)
    s.request("b", 0)
    s.poll(0.0)
    assert s.poll(6.999) == []
    assert [g.at for g in s.poll(7.0)] == [7.0]


def test_release_where_frees_a_gone_clients_holds_at_once() -> None:
    s = IdentifyScheduler[tuple[str, int]](now=0.0,
                                           limits=Limits(max_concurrency=2, interval=5.0,
                                                         margin=NO_MARGIN), last_grants={},
                                           hold_limit=30.0)
    s.request(("dead", 1), 0)
    s.request(("live", 1), 1)
    s.request(("live", 2), 0)
    s.poll(0.0)
    assert s.release_where(lambda k: k[0] == "dead", 1.0) == [("dead", 1)]
    assert s.next_deadline() == 6.0
    assert [g.key for g in s.poll(6.0)] == [("live", 2)]


def test_release_paces_from_sent_at_clamped_to_start_and_release() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=5.0)
    for key in "abcd":
        s.request(key, 0)
    s.poll(0.0)
    assert s.release("a", 0.25, sent_at=0.125)  # believed: the send ended at 0.125
    assert s.next_deadline() == 5.125
    assert [g.key for g in s.poll(5.125)] == ["b"]
    assert s.release("b", 5.5, sent_at=1.0)  # before its start: impossible, so start
    assert s.next_deadline() == 10.125
    s.poll(10.125)
    assert s.release("c", 10.25, sent_at=99.0)  # after its release arrived: the release
    assert s.next_deadline() == 15.25


def test_a_lead_issues_the_grant_early_with_the_slot_as_its_start() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=5.0)
    s.request("a", 0, lead=0.5)
    s.request("b", 0, lead=0.5)
    s.request("c", 0)
    (a,) = s.poll(0.0)
    assert (a.at, a.start) == (0.0, 0.0)  # a free bucket: no reason to wait
    assert s.release("a", 0.25, sent_at=0.125)
    assert s.next_deadline() == 4.625
    (b,) = s.poll(4.625)
    assert (b.at, b.start) == (4.625, 5.125)
    assert list(s.holding()) == [("b", 0, 5.125)]
    # Released before its start (the waiter was cancelled): the slot still counts from start.
    assert s.release("b", 4.75, sent_at=4.75)
    assert s.next_deadline() == 10.125  # "c" has no lead
    (c,) = s.poll(10.125)
    assert c.at == c.start == 10.125


def test_an_early_grant_held_too_long_counts_from_its_start() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=2.0)
    s.request("a", 0)
    s.request("b", 0, lead=1.0)
    s.poll(0.0)
    (b,) = s.poll(6.0)  # "a" expired at 2.0: free at 7.0, granted 1.0 ahead
    assert (b.at, b.start) == (6.0, 7.0)
    s.request("c", 0)
    assert s.next_deadline() == 14.0  # start 7.0 + hold limit 2.0 + interval


def test_lead_must_be_a_finite_non_negative_number() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(margin=NO_MARGIN))
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="lead"):
            s.request("a", 0, lead=bad)


def test_starts_are_never_a_rounding_error_short_of_the_interval() -> None:
    # 2758.262130019 + 0.1 rounds down: a judge subtracting the two would see 0.0999999...
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=0.1, margin=NO_MARGIN),
                               last_grants={0: 2758.262130019})
    s.request("a", 0)
    (a,) = s.poll(s.next_deadline() or 0.0)
    assert a.start - 2758.262130019 >= 0.1


def test_hold_until_delays_every_bucket_and_never_hastens_one() -> None:
    from shardctl.cluster.limiter import IdentifyScheduler

    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(max_concurrency=2, interval=1.0, margin=NO_MARGIN),
                               last_grants={1: 4.5})
    s.hold_until(3.0)
    s.request("a", 0)
    s.request("b", 1)
    assert s.poll(2.9) == []
    assert [g.shard_id for g in s.poll(3.0)] == [0]          # bucket 0: held until 3.0
    assert [g.shard_id for g in s.poll(5.5)] == [1]          # bucket 1: 4.5 + 1.0, not 3.0


def test_a_gate_holds_every_bucket_until_opened_and_never_hastens_one() -> None:
    from shardctl.cluster.limiter import IdentifyScheduler

    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(max_concurrency=2, interval=1.0, margin=NO_MARGIN),
                               last_grants={1: 0.5})
    s.gate(10.0)
    s.request("a", 0)
    s.request("b", 1)
    assert s.poll(5.0) == []
    assert s.next_deadline() == 10.0
    s.gate(1.2)  # moved earlier: a gate is policy, not knowledge of past grants
    assert [g.shard_id for g in s.poll(1.2)] == [0]
    s.request("c", 1)
    s.gate(None)
    assert [g.shard_id for g in s.poll(1.49)] == []          # bucket 1 still 0.5 + 1.0
    assert [(g.shard_id, g.start) for g in s.poll(1.5)] == [(1, 1.5)]


# -- the margin: floor + relative part, widened by op 9, narrowed by clean grants -----------


def test_every_gap_gets_the_floor_plus_the_relative_margin() -> None:
    margin = IdentifyMargin(floor=0.25, relative=0.05)  # 0.25 + 5 % of 5 s = 0.5 s
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=margin), last_grants={},
                               hold_limit=5.0)
    for key in "abc":
        s.request(key, 0)
    assert [g.key for g in s.poll(0.0)] == ["a"]
    assert s.release("a", 0.25, sent_at=0.125)
    assert s.margin(0) == 0.5
    assert s.next_deadline() == 5.625  # sent + interval + margin
    assert [g.key for g in s.poll(5.625)] == ["b"]
    assert s.release("b", 6.0)  # no sent_at believed: paced from the release, margin too
    assert s.next_deadline() == 11.5


def test_the_margin_policy_refuses_what_is_not_a_margin() -> None:
    for bad in ({"floor": -0.001}, {"floor": math.inf}, {"floor": math.nan},
                {"relative": -0.01}, {"relative": 1.0}, {"relative": math.nan},
                {"max_steps": -1}, {"decay_after": 0}):
        with pytest.raises(ValueError):
            IdentifyMargin(**bad)  # type: ignore[arg-type]


def two_buckets(margin: IdentifyMargin) -> IdentifyScheduler[int]:
    """A scheduler with max_concurrency 2 at Discord's 5 s, under ``margin``."""
    return IdentifyScheduler[int](
        now=0.0, limits=Limits(max_concurrency=2, interval=5.0, margin=margin), last_grants={})


def test_an_op9_widens_every_bucket_from_the_gaps_being_waited_out() -> None:
    """The lag behind an op 9 is the gateway's: bucket 1 need not be answered with op 9
    before it waits longer too."""
    margin = IdentifyMargin(floor=0.25)
    s = two_buckets(margin)
    for shard in range(4):
        s.request(shard, shard)
    assert [g.shard_id for g in s.poll(0.0)] == [0, 1]
    assert s.identify_rejected(2 * 7) == (0.25, 0.5)  # shard 14: bucket 0
    assert s.margins() == {0: 0.5, 1: 0.5}
    assert s.rejections() == {0: 1, 1: 0} and s.rejections_total == 1
    assert s.poll(5.25) == []  # bucket 1 waits out the wider gap too
    assert s.next_deadline() == 5.5
    assert [g.shard_id for g in s.poll(5.5)] == [2, 3]


def test_an_op9_under_the_widened_margin_widens_further_a_late_one_does_not() -> None:
    margin = IdentifyMargin(floor=0.25)
    s = two_buckets(margin)
    for shard in range(4):
        s.request(shard, shard)
    assert [g.shard_id for g in s.poll(0.0)] == [0, 1]  # both gaps had the base margin
    assert s.identify_rejected(0) == (0.25, 0.5)
    # bucket 1's op 9 is of the same episode (its IDENTIFY went with the base margin too)
    assert s.identify_rejected(1) == (0.5, 0.5)
    assert [g.shard_id for g in s.poll(5.5)] == [2, 3]  # these gaps had 0.5
    assert s.identify_rejected(2) == (0.5, 0.75)  # 0.5 was not enough either


def test_every_bucket_narrows_back_when_the_widened_one_does() -> None:
    margin = IdentifyMargin(floor=0.25, decay_after=2)
    s = two_buckets(margin)
    s.identify_rejected(0)
    for key in range(4):
        s.request(key, 2 * key)  # all in bucket 0
    now = 0.0
    margins = []
    while (deadline := s.next_deadline()) is not None:
        now = max(now, deadline)
        assert len(s.poll(now)) == 1
        margins.append(s.margins())
    assert margins[1] == {0: 0.25, 1: 0.25}  # 2 clean grants of bucket 0: one step back
    assert margins[0] == {0: 0.5, 1: 0.5}


def test_an_op9_costs_no_extra_slot_and_jumps_no_queue() -> None:
    s = IdentifyScheduler[str](now=0.0,
                               limits=Limits(interval=5.0, remaining=10,
                                             margin=IdentifyMargin(floor=0.25)), last_grants={})
    s.request("a", 0)
    s.request("b", 0)
    s.poll(0.0)
    s.identify_rejected(0)  # "a" got op 9: its slot and its session start stay spent
    assert s.remaining == 9
    s.request("a-again", 0)  # the shard asks anew, behind "b"
    assert [g.key for g in drain(s, 0.0, 20.0)] == ["b", "a-again"]
    assert s.remaining == 7


def test_widening_is_bounded_and_narrows_back_after_clean_grants() -> None:
    margin = IdentifyMargin(floor=0.25, max_steps=2, decay_after=2)
    s = IdentifyScheduler[int](now=0.0, limits=Limits(interval=5.0, margin=margin), last_grants={})
    for _ in range(5):
        s.identify_rejected(0)
    assert s.margin(0) == margin.widest(5.0) == 0.75
    for key in range(6):
        s.request(key, 0)
    margins = []
    now = 0.0
    while (deadline := s.next_deadline()) is not None:
        now = max(now, deadline)
        assert len(s.poll(now)) == 1
        margins.append(s.margin(0))
    # One step back after every 2 clean grants, never below the base.
    assert margins == [0.75, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_a_zero_margin_still_widens_on_op9() -> None:
    s = IdentifyScheduler[int](now=0.0, limits=Limits(interval=0.2, margin=NO_MARGIN),
                               last_grants={})
    assert s.identify_rejected(0) == (0.0, pytest.approx(0.002))  # 1 % of the interval


def test_a_max_concurrency_change_keeps_the_widest_margin_for_every_new_bucket() -> None:
    s = two_buckets(IdentifyMargin(floor=0.25))
    s.identify_rejected(1)
    s.update(0.0, max_concurrency=4)
    assert s.margins() == {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5}
    assert s.rejections() == {0: 0, 1: 0, 2: 0, 3: 0} and s.rejections_total == 1


class CountingScheduler(IdentifyScheduler[str]):
    """Counts bucket look-ups: the work a deadline costs, whatever the machine's speed."""

    lookups = 0

    def bucket_of(self, shard_id: int) -> int:
        self.lookups += 1
        return super().bucket_of(shard_id)


def test_a_deadline_with_many_held_grants_costs_one_pass_over_the_holds() -> None:
    # 10,000 shards at max_concurrency 256: 256 grants held at once while thousands wait.
    # A deadline looked at every hold once per bucket (256 x 256 look-ups) and the
    # supervisor spent its start-up there, answering the limiter late.
    s = CountingScheduler(now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN,
                                                 max_concurrency=256),
                          hold_limit=60.0)
    for shard in range(2048):
        s.request(f"r{shard}", shard)
    assert len(s.poll(10.0)) == 256  # one per bucket, all held (none released)
    s.lookups = 0
    deadline = s.next_deadline()
    assert deadline is not None and deadline >= 15.0
    assert s.lookups <= 2 * 256
    held_bucket_ends = {b: s.last_grants()[b] for b in (0, 255)}
    assert held_bucket_ends == {0: 70.0, 255: 70.0}  # held grants count until hold_limit


def test_requests_set_aside_and_put_back_keep_their_places() -> None:
    # A client whose connection dropped gets its queue back as it was: ahead of everything
    # that arrived meanwhile, in its old order.
    s = IdentifyScheduler[tuple[str, int]](
        now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN), last_grants={},
        owner=lambda key: key[0])
    for n in range(3):
        s.request(("a", n), 0)
        s.request(("b", n), 0)
    parked = s.set_aside(lambda key: key[0] == "a")
    assert [p.key for p in parked] == [("a", 0), ("a", 1), ("a", 2)]
    assert s.waiting_of("a") == [] and s.owners() == ["b"] and len(s) == 3
    s.request(("c", 0), 0)
    s.request(("a", 1), 0)  # asked again meanwhile: keeps this later place
    assert s.put_back(parked) == 2
    assert sorted(s.waiting_of("a")) == [("a", 0), ("a", 1), ("a", 2)]
    order = [g.key for g in drain(s, 0.0, 100.0)]
    assert order == [("a", 0), ("b", 0), ("b", 1), ("a", 2), ("b", 2), ("c", 0), ("a", 1)]
    assert s.owners() == []


def test_an_undeliverable_grant_is_handed_back_with_its_place() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={})
    for key in "abc":
        s.request(key, 0)
    parked: list[Parked[str]] = []
    grants = s.poll(0.0, lambda g: g.key != "a", parked.append)
    assert [g.key for g in grants] == ["b"]  # the slot went to the next request at once
    assert [p.key for p in parked] == ["a"]
    s.put_back(parked)
    assert [(g.key, g.at) for g in drain(s, 0.0, 100.0)] == [("a", 5.0), ("c", 10.0)]


def test_a_held_grant_can_be_looked_up_by_key() -> None:
    s = IdentifyScheduler[str](now=0.0, limits=Limits(interval=5.0, margin=NO_MARGIN),
                               last_grants={}, hold_limit=10.0)
    s.request("a", 3)
    assert s.held("a") is None
    [grant] = s.poll(0.0)
    assert s.held("a") == (3, grant.start)
    s.release("a", 1.0)
    assert s.held("a") is None
