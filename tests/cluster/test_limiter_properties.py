"""Properties of the identify scheduler for any arrival pattern (hypothesis, fake clock).

- pacing: no two grants of one bucket closer than the interval, and none closer than the
  interval to any grant made before a ``max_concurrency`` change;
- no idle interval: while a bucket has a queue, its next grant comes exactly when the
  interval allows (the driver polls at ``next_deadline()``);
- FIFO per bucket; every request that is not cancelled is granted exactly once;
- the session-start budget is never exceeded in any window;
- early grants and ``sent_at``: consecutive grant starts of a bucket are an interval apart at
  least, and an honest holder's send (any time in [start, release], reported no earlier
  than it happened) is an interval before the next start at least, however the report is
  clamped;
- the margin: whatever op 9s are reported when, every send of a bucket is an interval plus
  its base margin after the previous one at least, plus every step its op 9s added that has
  not been taken back; no op 9 adds, refunds or reorders a grant.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.cluster.limiter import Grant, IdentifyScheduler
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import IdentifyMargin

#: The scheduler's own arithmetic: no margin unless a test gives one.
NO_MARGIN = IdentifyMargin()

INTERVAL = 5.0

# Dyadic steps keep the fake clock's sums exact, so "at least 5.0 apart" is tested exactly
# (4.96875 and 5.03125 probe both sides of the interval).
times = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.5, 4.96875, 5.0, 5.03125, 7.5, 12.0])


@dataclass
class Run:
    scheduler: IdentifyScheduler[int]
    now: float = 0.0
    grants: list[Grant[int]] = field(default_factory=list)
    arrival: dict[int, float] = field(default_factory=dict)
    shard: dict[int, int] = field(default_factory=dict)
    cancelled: set[int] = field(default_factory=set)
    mc_changes: list[tuple[float, int]] = field(default_factory=list)
    epoch: dict[int, int] = field(default_factory=dict)  # key -> mc changes before its grant

    def poll(self) -> None:
        for g in self.scheduler.poll(self.now):
            self.grants.append(g)
            self.epoch[g.key] = len(self.mc_changes)
        # The due times it keeps between changes are the ones it would work out afresh.
        kept = self.scheduler.next_deadline()
        self.scheduler._touch()
        assert self.scheduler.next_deadline() == kept

    def advance(self, to: float) -> None:
        """Poll at every deadline up to ``to``, then at ``to`` itself."""
        while (d := self.scheduler.next_deadline()) is not None and d <= to:
            self.now = max(self.now, d)
            self.poll()
        self.now = max(self.now, to)
        self.poll()

    def finish(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            d = self.scheduler.next_deadline()
            if d is None:
                return
            self.advance(d)
        raise AssertionError("scheduler did not drain")


def play(run: Run, ops: list[tuple[str, float, int]]) -> None:
    play_some(run, ops)
    run.finish()


def play_some(run: Run, ops: list[tuple[str, float, int]]) -> None:
    for kind, dt, arg in ops:
        key = len(run.arrival)
        run.advance(run.now + dt)
        s = run.scheduler
        if kind == "arrive":
            s.request(key, arg)
            run.arrival[key], run.shard[key] = run.now, arg
        elif kind == "cancel" and key:
            victim = arg % key
            if s.cancel(victim):
                run.cancelled.add(victim)
        elif kind == "mc":
            if arg != s.max_concurrency:
                run.mc_changes.append((run.now, arg))
            s.update(run.now, max_concurrency=arg)
        run.poll()


arrive = st.tuples(st.just("arrive"), times, st.integers(0, 11))
cancel = st.tuples(st.just("cancel"), times, st.integers(0, 1000))
change_mc = st.tuples(st.just("mc"), times, st.integers(1, 4))


def check_every_request_granted_once(run: Run) -> None:
    granted = [g.key for g in run.grants]
    assert len(granted) == len(set(granted))
    assert set(granted) == set(run.arrival) - run.cancelled
    assert not set(granted) & run.cancelled


@settings(max_examples=300, deadline=None)
@given(
    mc=st.integers(1, 4),
    history=st.booleans(),
    ops=st.lists(st.one_of(arrive, arrive, cancel), max_size=40),
)
def test_pacing_fifo_and_no_idle_interval(
    mc: int, history: bool, ops: list[tuple[str, float, int]]
) -> None:
    start = 100.0
    s = IdentifyScheduler[int](now=start,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL,
                                             margin=NO_MARGIN),
                               last_grants={} if history else None)
    run = Run(s, now=start)
    play(run, ops)
    check_every_request_granted_once(run)

    by_bucket: dict[int, list[Grant[int]]] = {}
    for g in run.grants:
        assert g.bucket == run.shard[g.key] % mc
        by_bucket.setdefault(g.bucket, []).append(g)
    for grants in by_bucket.values():
        # Without history every bucket acts as if it granted at start.
        previous = -float("inf") if history else start
        for g in grants:
            assert g.at - previous >= INTERVAL
            # No idle interval: granted the moment both the request and the slot existed.
            assert g.at == max(run.arrival[g.key], previous + INTERVAL)
            previous = g.at
        # FIFO within the bucket.
        arrivals = [run.arrival[g.key] for g in grants]
        keys = [g.key for g in grants]
        assert arrivals == sorted(arrivals)
        assert keys == sorted(keys)


@settings(max_examples=300, deadline=None)
@given(
    mc=st.integers(1, 4),
    ops=st.lists(st.one_of(arrive, arrive, arrive, cancel, change_mc), max_size=40),
)
def test_max_concurrency_changes_never_break_pacing(
    mc: int, ops: list[tuple[str, float, int]]
) -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL,
                                             margin=NO_MARGIN))
    run = Run(s)
    play(run, ops)
    check_every_request_granted_once(run)

    for i, g2 in enumerate(run.grants):
        for g1 in run.grants[:i]:
            e1, e2 = run.epoch[g1.key], run.epoch[g2.key]
            # Same bucket in one epoch, or any grant before a change: at least an interval.
            if (e1 == e2 and g1.bucket == g2.bucket) or e1 != e2:
                assert g2.at - g1.at >= INTERVAL, (g1, g2, run.mc_changes)


@settings(max_examples=300, deadline=None)
@given(
    remaining=st.integers(0, 6),
    total=st.integers(1, 6),
    reset_after=st.sampled_from([1.0, 20.0, 60.0]),
    window=st.sampled_from([15.0, 40.0]),
    mc=st.integers(1, 3),
    ops=st.lists(st.one_of(arrive, arrive, cancel), max_size=30),
)
def test_budget_is_never_exceeded_and_grants_are_held_not_refused(  # noqa: PLR0917
    remaining: int, total: int, reset_after: float, window: float, mc: int,
    ops: list[tuple[str, float, int]],
) -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL,
                                             remaining=remaining, total=total,
                                             reset_after=reset_after, window=window,
                                             margin=NO_MARGIN), last_grants={})
    run = Run(s)
    play(run, ops)
    # Held, not refused: with refills, every waiting request is eventually granted.
    check_every_request_granted_once(run)

    # Replay the windows: the first ends at reset_after with `remaining` starts; each later
    # one opens at its first grant, lasts `window` and allows `total`.
    grants = sorted(g.at for g in run.grants)
    first = [t for t in grants if t < reset_after]
    assert len(first) <= remaining
    rest = [t for t in grants if t >= reset_after]
    while rest:
        opened = rest[0]
        inside = [t for t in rest if t < opened + window]
        assert len(inside) <= total
        rest = rest[len(inside):]
    # Pacing still holds per bucket.
    by_bucket: dict[int, list[float]] = {}
    for g in run.grants:
        by_bucket.setdefault(g.bucket, []).append(g.at)
    for ats in by_bucket.values():
        assert all(b - a >= INTERVAL for a, b in itertools.pairwise(ats))


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.one_of(arrive, arrive, cancel), min_size=1, max_size=30),
    dead=st.sets(st.integers(0, 30)),
)
def test_undeliverable_grants_waste_no_slot(
    ops: list[tuple[str, float, int]], dead: set[int]
) -> None:
    # A grant that cannot be delivered (its client is gone) is not a slot spent: the live
    # grants alone must still satisfy "no idle interval".
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(interval=INTERVAL, remaining=1000, margin=NO_MARGIN),
                               last_grants={})
    run = Run(s)
    orig_poll = s.poll

    def poll(now: float, deliver: object = None) -> list[Grant[int]]:
        return orig_poll(now, lambda g: g.key not in dead)

    s.poll = poll  # type: ignore[method-assign,assignment]
    play(run, ops)
    live = [k for k in run.arrival if k not in run.cancelled and k not in dead]
    assert sorted(g.key for g in run.grants) == sorted(live)
    assert s.remaining == 1000 - len(live)
    previous = -float("inf")
    for g in run.grants:
        assert g.at - previous >= INTERVAL
        # Each live grant came as soon as it could: no slot went to a dead request.
        waiting_since = run.arrival[g.key]
        assert g.at == max(waiting_since, previous + INTERVAL)
        previous = g.at


@settings(max_examples=300, deadline=None)
@given(
    mc=st.integers(1, 3),
    hold_limit=st.sampled_from([0.5, 2.5, 10.0]),
    ops=st.lists(
        st.one_of(arrive, arrive, cancel, st.tuples(st.just("release"), times,
                                                    st.integers(0, 100))),
        max_size=40,
    ),
)
def test_held_grants_pace_the_bucket_from_their_release(
    mc: int, hold_limit: float, ops: list[tuple[str, float, int]]
) -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL,
                                             margin=NO_MARGIN), last_grants={},
                               hold_limit=hold_limit)
    run = Run(s)
    released: dict[int, float] = {}
    rest: list[tuple[str, float, int]] = []
    for op in ops:
        if op[0] != "release":
            rest.append(op)
            continue
        # Interleave releases with the other operations at their own time offsets.
        run_ops, rest = rest, []
        play_some(run, run_ops)
        run.advance(run.now + op[1])
        held = sorted(k for k, _, _ in s.holding())
        if held:
            key = held[op[2] % len(held)]
            assert s.release(key, run.now)
            released[key] = run.now
        run.poll()
    play_some(run, rest)
    run.finish()
    check_every_request_granted_once(run)

    by_bucket: dict[int, list[Grant[int]]] = {}
    for g in run.grants:
        by_bucket.setdefault(g.bucket, []).append(g)
    for grants in by_bucket.values():
        ended = -float("inf")
        for g in grants:
            # The next grant comes an interval after the holder released, or after its
            # hold limit if it never did; never earlier, and no later (no idle interval).
            assert g.at == max(run.arrival[g.key], ended + INTERVAL)
            ended = released.get(g.key, g.at + hold_limit)
            assert ended <= g.at + hold_limit


leads = st.sampled_from([0.0, 0.0, 0.5, 2.5, 7.5])
# Where a release puts its sent_at: before the start (clamped), in [start, release] or after
# the release (clamped), or absent; and where the holder's real send was, in [start, release].
report = st.sampled_from(["none", "early", "start", "mid", "now", "late"])


@settings(max_examples=400, deadline=None)
@given(
    mc=st.integers(1, 3),
    hold_limit=st.sampled_from([0.5, 2.5, 10.0]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("arrive"), times, st.integers(0, 11), leads),
            st.tuples(st.just("cancel"), times, st.integers(0, 1000), leads),
            st.tuples(st.just("release"), times, st.integers(0, 100), report),
        ),
        max_size=40,
    ),
)
def test_early_grants_and_sent_at_never_bring_two_sends_closer_than_the_interval(
    mc: int, hold_limit: float, ops: list[tuple[str, float, int, object]]
) -> None:
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL,
                                             margin=NO_MARGIN), last_grants={},
                               hold_limit=hold_limit)
    run = Run(s)
    lead: dict[int, float] = {}
    sent: dict[int, float] = {}  # key -> when its IDENTIFY really left (if it was released)
    paced: dict[int, float] = {}  # key -> the time its bucket is paced from (the clamp)
    released: dict[int, int] = {}
    released_at: dict[int, float] = {}
    cancelled_at: dict[int, float] = {}
    for kind, dt, arg, extra in ops:
        run.advance(run.now + dt)
        key = len(run.arrival)
        if kind == "arrive":
            assert isinstance(extra, float)
            s.request(key, arg, lead=extra)
            run.arrival[key], run.shard[key], lead[key] = run.now, arg, extra
        elif kind == "cancel" and key and s.cancel(arg % key):
            run.cancelled.add(arg % key)
            cancelled_at[arg % key] = run.now
        elif kind == "release":
            held = sorted((k, start) for k, _, start in s.holding())
            if held:
                k, start = held[arg % len(held)]
                # The holder sent (if it could: its start has come) somewhere in
                # [start, now], and reports that time or later, or nothing.
                actual = start + (run.now - start) / 2 if run.now >= start else None
                at = {"none": None, "early": start - 1.0, "start": start,
                      "mid": actual, "now": run.now, "late": run.now + 1.0}[str(extra)]
                if actual is None:
                    sent[k] = -float("inf")  # released before its start: nothing was sent
                else:
                    sent[k] = actual
                    if at is not None and at < actual:
                        at = actual  # honest clients report the end of the send, or later
                assert s.release(k, run.now, sent_at=at)
                paced[k] = max(start, run.now if at is None else min(at, run.now))
                released[k] = len(run.grants)  # grants issued before this release
                released_at[k] = run.now
        run.poll()
    run.finish()
    check_every_request_granted_once(run)

    by_bucket: dict[int, list[Grant[int]]] = {}
    for g in run.grants:
        by_bucket.setdefault(g.bucket, []).append(g)
        # Early by no more than the request's lead, and only early, never late.
        assert g.at <= g.start <= g.at + lead[g.key]
    for grants in by_bucket.values():
        previous: Grant[int] | None = None
        previous_send = previous_start = -float("inf")
        order = {grant.key: i for i, grant in enumerate(run.grants)}
        for g in grants:
            assert g.start - previous_start >= INTERVAL
            assert g.start - previous_send >= INTERVAL
            # Exact: the grant comes as early as its lead allows (FIFO: not before the
            # previous one), its start as soon as the previous hold's end allows; issued
            # while that hold lasts, the hold counts to its limit.
            earliest = max(run.arrival[g.key], -float("inf") if previous is None else previous.at,
                           *(t for k, t in cancelled_at.items()  # requests queued ahead of it
                             if run.shard[k] % mc == g.bucket and k < g.key
                             and (previous is None or k > previous.key)))
            free = -float("inf") if previous is None else previous.start + hold_limit + INTERVAL
            if previous is not None and order[g.key] >= released.get(previous.key, len(order)):
                free = paced[previous.key] + INTERVAL
                earliest = max(earliest, released_at[previous.key])
            assert g.at == max(earliest, free - lead[g.key])
            assert g.start == max(g.at, free)
            previous, previous_start = g, g.start
            # Unreleased holders are assumed to send as late as their hold limit allows.
            previous_send = max(g.start, sent.get(g.key, g.start + hold_limit))


@settings(max_examples=300, deadline=None)
@given(
    mc=st.integers(1, 3),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("arrive"), times, st.integers(0, 11)),
            st.tuples(st.just("release"), times, st.integers(0, 100)),
            st.tuples(st.just("op9"), times, st.integers(0, 100)),
        ),
        max_size=40,
    ),
)
def test_any_op9_pattern_keeps_the_margin_and_the_queue(
    mc: int, ops: list[tuple[str, float, int]]
) -> None:
    hold_limit = 12.0
    policy = IdentifyMargin(floor=0.25, max_steps=2, decay_after=2)  # dyadic: exact sums
    s = IdentifyScheduler[int](now=0.0,
                               limits=Limits(max_concurrency=mc, interval=INTERVAL, margin=policy),
                               last_grants={}, hold_limit=hold_limit)
    run = Run(s)
    used: dict[int, float] = {}  # grant key -> the margin its gap got
    floor: dict[int, float] = {}  # bucket -> the margin its next grant must get at least
    sent: dict[int, float] = {}  # key -> when its IDENTIFY left (released ones)
    released: dict[int, int] = {}  # key -> grants issued before its release

    def poll() -> None:
        before = s.margins()
        for g in s.poll(run.now):
            run.grants.append(g)
            used[g.key] = before[g.bucket]
            assert used[g.key] >= floor.get(g.bucket, 0.0)
            floor.pop(g.bucket, None)

    run.poll = poll  # type: ignore[method-assign]
    for kind, dt, arg in ops:
        run.advance(run.now + dt)
        key = len(run.arrival)
        if kind == "arrive":
            s.request(key, arg)
            run.arrival[key], run.shard[key] = run.now, arg
        elif kind == "release" and (held := sorted(k for k, _, _ in s.holding())):
            k = held[arg % len(held)]
            assert s.release(k, run.now, sent_at=run.now)
            sent[k], released[k] = run.now, len(run.grants)
        elif kind == "op9" and run.grants:
            g = run.grants[arg % len(run.grants)]
            remaining, waiting = s.remaining, list(s.waiting())
            before, after = s.identify_rejected(g.shard_id)
            # every bucket takes the widest bucket's margin: at least the one step this op 9
            # gave its own bucket, at most one step over what a grant's gap had
            one_step = policy.base(INTERVAL) + policy.step(INTERVAL)
            had = max(used.values(), default=policy.base(INTERVAL))
            assert max(before, one_step) <= after <= min(max(before, had + 0.25),
                                                         policy.widest(INTERVAL))
            assert set(s.margins().values()) == {after}
            floor[g.bucket] = one_step  # the bucket's next grant gets this at least
            assert (s.remaining, list(s.waiting())) == (remaining, waiting)
        run.poll()
    run.finish()
    check_every_request_granted_once(run)
    order = {g.key: i for i, g in enumerate(run.grants)}
    by_bucket: dict[int, list[Grant[int]]] = {}
    for g in run.grants:
        by_bucket.setdefault(g.bucket, []).append(g)
        assert policy.base(INTERVAL) <= used[g.key] <= policy.widest(INTERVAL)
    for grants in by_bucket.values():
        assert [g.key for g in grants] == sorted(g.key for g in grants)  # FIFO per bucket
        for previous, g in itertools.pairwise(grants):
            # Sent at its release if released before this grant, else at its hold limit.
            ended = (sent[previous.key]
                     if order[g.key] >= released.get(previous.key, len(order))
                     else previous.start + hold_limit)
            assert g.start - ended >= INTERVAL + used[g.key]
