"""The session-start scheduler: who may IDENTIFY, and when.  Pure: no I/O, no clock reads.

Discord allows one IDENTIFY per 5 s per *bucket*, the bucket being
``shard_id % max_concurrency``, for the whole bot across every process and host
(gateway-protocol.md §9), and a daily budget of session starts
(``session_start_limit.remaining``, refilled ``reset_after`` from now: milliseconds in
Discord's answer, seconds everywhere here).  Identifying too
fast costs an op 9; going past the budget resets the token.  So this scheduler errs on the
slow side everywhere:

- per-bucket FIFO queues; one grant per bucket per ``interval`` measured from the previous
  grant's actual time, never from when it was due;
- with ``hold_limit`` set, a grant is *held* until the requester releases it (its IDENTIFY is
  sent) and the next grant of the bucket comes ``interval`` after the release: grants reach
  different processes with different delays, releases are causally after the send, so
  IDENTIFYs leave at least ``interval`` apart in real time.  A release may say when the send
  ended (``sent_at``, in the caller's clock: only a requester known to share it may be
  believed); the bucket is then paced from that moment, clamped to [grant start, release
  handled], which removes the release's trip from every gap without ever pacing from before
  the send.  A holder that never releases is assumed to have sent by ``start + hold_limit``;
- a request may be granted up to its ``lead`` before its slot: the grant then carries a
  ``start`` (the slot) before which its requester must not IDENTIFY, which hides the grant's
  trip.  Pacing is by start times: consecutive starts of a bucket are ``interval`` apart at
  least.  The slot is spent when the grant is issued, as for any grant;
- a scheduler that starts without knowing the previous grant times treats every bucket as
  if it had granted at start (another process may have identified a moment ago);
- an empty budget *holds* grants until the refill, it never refuses them;
- a ``max_concurrency`` change re-buckets the queue and starts every new bucket from the
  latest grant in any old bucket, since Discord's keys under the new value are unknowable;
- a budget report for the current window can only lower ``remaining``: ``/gateway/bot`` is a
  snapshot that lags the grants made since it was fetched;
- every gap gets a *margin* on top of the interval (:class:`IdentifyMargin`): Discord stamps
  an IDENTIFY when some server of its fleet reads it, late by that server's load and the
  network, and two IDENTIFYs of a bucket travel different connections, so the second may
  look early by the difference.  The margin is a floor plus a part of the interval, and
  widens per bucket when Discord answers one of its IDENTIFYs with op 9
  (:meth:`IdentifyScheduler.identify_rejected`): one step per op 9, bounded, one step back
  after a run of clean grants.  An op 9 refunds nothing (the slot and the budget stay spent)
  and queues nothing: the shard asks again and waits its turn like any request.

Time is the caller's ``now`` (seconds, any monotonic clock).  The driver calls
:meth:`IdentifyScheduler.poll` at :meth:`IdentifyScheduler.next_deadline` and after every
request; ``poll`` hands each due grant to an optional ``deliver`` callback, and a grant the
callback could not deliver (its requester is gone) consumes nothing: the slot goes to the
next request at once.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from shardctl.gateway.limits import (
    DEFAULT_LIMITS,
    Limits,
    check_count,
    check_max_concurrency,
    check_seconds,
)
from shardctl.gateway.pacing import BucketMargins, IdentifyMargin
from shardctl.gateway.sharding import bucket_for

__all__ = ["Grant", "IdentifyScheduler", "Parked"]

K = TypeVar("K", bound=Hashable)

SAME_WINDOW_SLACK: Final = 1.0
"""Two reported reset times closer than this describe the same window (REST latency)."""


@dataclass(frozen=True, slots=True)
class Grant(Generic[K]):
    """Permission for the request ``key`` (shard ``shard_id``) to IDENTIFY, issued at ``at``,
    to be used from ``start`` on (``start > at`` only for a request with a ``lead``)."""

    key: K
    shard_id: int
    bucket: int
    at: float
    start: float


@dataclass(slots=True)
class _Waiting(Generic[K]):
    key: K
    shard_id: int
    order: int  # global arrival order: FIFO per bucket, and across buckets when budget is short
    lead: float = 0.0  # how long before its slot it may be granted


@dataclass(frozen=True, slots=True)
class Parked(Generic[K]):
    """A request taken out of the queues with its place kept (see ``set_aside``)."""

    entry: _Waiting[K]

    @property
    def key(self) -> K:
        return self.entry.key


class IdentifyScheduler(Generic[K]):
    """Per-bucket FIFO queues of IDENTIFY requests, paced by interval and budget.

    ``key`` identifies one request (hashable, unique among waiting requests).  ``limits``:
    the pace, margin and budget to start with (:class:`~shardctl.gateway.limits.Limits`;
    :meth:`update` changes them while running).  ``last_grants`` (bucket -> grant time, in
    the clock of ``now``) is the complete record of recent grants: buckets missing from it
    are free at once.  Without it every bucket waits one ``interval`` from ``now`` before
    its first grant.  ``hold_limit`` (seconds) turns on held grants: see :meth:`release`.
    ``owner(key)`` names a key's requester, for :meth:`waiting_of` and :meth:`owners`.
    """

    def __init__(
        self,
        *,
        now: float,
        limits: Limits = DEFAULT_LIMITS,
        last_grants: Mapping[int, float] | None = None,
        hold_limit: float | None = None,
        owner: Callable[[K], Hashable] | None = None,
    ) -> None:
        self._mc = limits.max_concurrency
        self._margin = limits.margin
        self._margins = BucketMargins(self._margin)
        self._rejections: dict[int, int] = {}  # bucket -> IDENTIFYs answered with op 9
        self.rejections_total = 0
        self._hold_limit = None if hold_limit is None else check_seconds(hold_limit,
                                                                         "hold_limit")
        self._holds: dict[K, tuple[int, float]] = {}  # key -> (shard_id, grant start)
        #: bucket -> latest held grant's start + hold_limit; None: rebuild from _holds.  One
        #: pass over the holds per change, not one per bucket per deadline (10,000 shards).
        self._held_until: dict[int, float] | None = None
        self._interval = limits.interval
        self._window = limits.window
        self._queues: dict[int, deque[_Waiting[K]]] = {}
        self._index: dict[K, _Waiting[K]] = {}
        #: owner -> its waiting keys, in arrival order: what one requester waits for without
        #: a pass over everyone's requests (a pong per ping per client, 10,000 waiting)
        self._owner = owner
        self._owned: dict[Hashable, dict[K, None]] = {}
        self._order = 0
        # Unknown history: assume every bucket granted at `now`; known: use it, -inf if absent.
        self._default_last = now if last_grants is None else -math.inf
        self._gate = -math.inf
        self._last: dict[int, float] = dict(last_grants or {})
        self._remaining = limits.remaining
        self._total = limits.total if limits.total is not None else limits.remaining
        self._reset_at = None if limits.reset_after is None else now + limits.reset_after
        #: bucket -> when its queue's head may be granted, for every non-empty queue; kept
        #: until something it depends on changes (``_stale``: those buckets, None: all).
        #: The service polls after every message, and working out every bucket's time each
        #: time starved it (256 buckets, 20,000 messages in a 10,000-shard start-up).
        self._dues: dict[int, float] = {}
        self._stale: set[int] | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def max_concurrency(self) -> int:
        return self._mc

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def remaining(self) -> int | None:
        """Session starts left in this window, or ``None`` when no budget is enforced."""
        return self._remaining

    @property
    def total(self) -> int | None:
        return self._total

    @property
    def reset_at(self) -> float | None:
        """When the budget refills; ``None`` until known (the window opens at the next grant)."""
        return self._reset_at

    @property
    def hold_limit(self) -> float | None:
        return self._hold_limit

    @property
    def margin_policy(self) -> IdentifyMargin:
        return self._margin

    def margin(self, bucket: int) -> float:
        """Seconds bucket ``bucket``'s next gap gets on top of the interval."""
        return self._margins.margin(bucket, self._interval)

    def margins(self) -> dict[int, float]:
        """Bucket -> its current margin, for every bucket."""
        return {b: self.margin(b) for b in range(self._mc)}

    def rejections(self) -> dict[int, int]:
        """Bucket -> IDENTIFYs answered with op 9 (since the last ``max_concurrency`` change)."""
        return {b: self._rejections.get(b, 0) for b in range(self._mc)}

    def identify_rejected(self, shard_id: int) -> tuple[float, float]:
        """Discord answered an IDENTIFY of ``shard_id`` with op 9: it saw it too soon.

        Widens the bucket's margin one step (at most ``max_steps``), and every bucket takes
        the widest margin (``gateway/pacing.py``), from its next gap on -- the one being
        waited out too.  Nothing else changes: the rejected IDENTIFY's slot
        and budget stay spent, and the shard's next request queues like any other.
        Returns the bucket's margin before and after.
        """
        bucket = self.bucket_of(shard_id)
        before = self.margin(bucket)
        self._touch(None if self._margins.widen(bucket) else bucket)
        self._rejections[bucket] = self._rejections.get(bucket, 0) + 1
        self.rejections_total += 1
        return before, self.margin(bucket)

    def last_grants(self) -> dict[int, float]:
        """Bucket -> last IDENTIFY time (held grants at their limit): hand it to the next
        scheduler to skip the start-up wait."""
        ended = {b: self._ended(b) for b in range(self._mc)}
        return {b: t for b, t in ended.items() if t > -math.inf}

    def holding(self) -> Iterator[tuple[K, int, float]]:
        """(key, shard_id, grant start) of every grant not yet released."""
        for key, (shard_id, at) in self._holds.items():
            yield key, shard_id, at

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def waiting(self) -> Iterator[tuple[K, int]]:
        """(key, shard_id) of every waiting request, in arrival order (a sort: not per
        message; see :meth:`waiting_of`)."""
        for w in sorted(self._index.values(), key=lambda w: w.order):
            yield w.key, w.shard_id

    def waiting_of(self, owner: Hashable) -> list[K]:
        """The waiting keys of ``owner`` (needs ``owner=`` at construction), in no promised
        order; O(its own requests)."""
        return list(self._owned.get(owner, ()))

    def owners(self) -> list[Hashable]:
        """The owners with at least one waiting request (needs ``owner=``)."""
        return list(self._owned)

    def held(self, key: K) -> tuple[int, float] | None:
        """(shard_id, grant start) of the unreleased grant ``key``, or None."""
        return self._holds.get(key)

    def budget_exhausted(self) -> bool:
        """True when requests wait and only the budget holds them back."""
        return bool(self._index) and self._remaining is not None and self._remaining <= 0

    def bucket_of(self, shard_id: int) -> int:
        # Identify key = shard_id % max_concurrency (gateway-protocol.md §9).
        return bucket_for(shard_id, self._mc)

    # -- input ----------------------------------------------------------------------------

    def request(self, key: K, shard_id: int, *, lead: float = 0.0) -> bool:
        """Queue ``shard_id`` for a grant; False (and no change) if ``key`` already waits.

        ``lead`` (seconds): the grant may be issued that long before its slot, with the slot
        as its ``start``; only for a requester that waits for ``start`` in this clock.
        """
        if shard_id < 0:
            raise ValueError(f"shard_id must be >= 0, not {shard_id}")
        if not (math.isfinite(lead) and lead >= 0):
            raise ValueError(f"lead must be a finite number of seconds >= 0, not {lead}")
        if key in self._index:
            return False
        waiting = _Waiting(key, shard_id, self._order, float(lead))
        self._order += 1
        self._add(waiting)
        queue = self._queues.setdefault(self.bucket_of(shard_id), deque())
        if not queue:
            self._touch(self.bucket_of(shard_id))  # a new head
        queue.append(waiting)
        return True

    def _add(self, waiting: _Waiting[K]) -> None:
        self._index[waiting.key] = waiting
        if self._owner is not None:
            self._owned.setdefault(self._owner(waiting.key), {})[waiting.key] = None

    def _remove(self, key: K) -> _Waiting[K] | None:
        waiting = self._index.pop(key, None)
        if waiting is not None and self._owner is not None:
            owner = self._owner(key)
            owned = self._owned[owner]
            del owned[key]
            if not owned:
                del self._owned[owner]
        return waiting

    def cancel(self, key: K) -> bool:
        """Withdraw a waiting request; False if it is not waiting (granted, or unknown)."""
        waiting = self._remove(key)
        if waiting is None:
            return False
        queue = self._queues[self.bucket_of(waiting.shard_id)]
        if queue[0] is waiting:
            self._touch(self.bucket_of(waiting.shard_id))
        queue.remove(waiting)
        return True

    def set_aside(self, predicate: Callable[[K], bool]) -> list[Parked[K]]:
        """Take every waiting request whose key matches out of the queues, keeping its place
        for :meth:`put_back` (its requester is unreachable for now, and may come back)."""
        parked = [w for k, w in self._index.items() if predicate(k)]
        if not parked:
            return []
        for w in parked:
            self._remove(w.key)
        taken = {id(w) for w in parked}
        self._touch()
        for bucket, queue in self._queues.items():
            self._queues[bucket] = deque(w for w in queue if id(w) not in taken)
        return [Parked(w) for w in parked]

    def put_back(self, parked: Iterable[Parked[K]]) -> int:
        """Queue requests set aside by :meth:`set_aside` again, in their old places (ahead of
        everything that arrived since); a key waiting again meanwhile keeps its new place.
        Returns how many went back."""
        back: dict[int, list[_Waiting[K]]] = {}
        for p in parked:
            if p.entry.key not in self._index:
                self._add(p.entry)
                back.setdefault(self.bucket_of(p.entry.shard_id), []).append(p.entry)
        self._touch()
        for bucket, entries in back.items():
            merged = [*self._queues.get(bucket, ()), *entries]
            merged.sort(key=lambda w: w.order)
            self._queues[bucket] = deque(merged)
        return sum(len(entries) for entries in back.values())

    def release(self, key: K, now: float, *, sent_at: float | None = None) -> bool:
        """The holder of grant ``key`` is done (its IDENTIFY was sent, or never will be).

        The bucket's next start comes ``interval`` plus its margin after ``sent_at`` (when
        the send ended, in the clock of ``now``: pass it only from a holder known to share
        that clock), or after ``now`` without it.  ``sent_at`` is clamped to [grant start,
        ``now``]: the send cannot have ended before the holder was allowed to start it, nor
        after its release arrived.
        False if ``key`` is not held (unknown, already released, or past its ``hold_limit``).
        """
        held = self._holds.pop(key, None)
        if held is None:
            return False
        self._held_until = None
        shard_id, start = held
        self._touch(self.bucket_of(shard_id))
        ended = now if sent_at is None else min(max(sent_at, start), now)
        bucket = self.bucket_of(shard_id)
        self._last[bucket] = max(self._last_of(bucket), ended)
        return True

    def release_where(self, predicate: Callable[[K], bool], now: float) -> list[K]:
        """Release every held grant whose key matches (e.g. its requester is gone)."""
        keys = [k for k in self._holds if predicate(k)]
        for key in keys:
            self.release(key, now)
        return keys

    def cancel_where(self, predicate: Callable[[K], bool]) -> list[K]:
        """Withdraw every waiting request whose key matches; returns their keys."""
        keys = [k for k in self._index if predicate(k)]
        for key in keys:
            self.cancel(key)
        return keys

    def update(
        self,
        now: float,
        *,
        max_concurrency: int | None = None,
        interval: float | None = None,
        remaining: int | None = None,
        total: int | None = None,
        reset_after: float | None = None,
    ) -> None:
        """Apply new limits while running (e.g. a fresh ``/gateway/bot``)."""
        self._touch()
        if interval is not None:
            self._interval = check_seconds(interval, "the identify interval")
        if max_concurrency is not None and check_max_concurrency(max_concurrency) != self._mc:
            self._rebucket(max_concurrency)
        if total is not None:
            self._total = check_count(total, "total")
        if remaining is not None:
            self._merge_budget(now, remaining, reset_after)
        elif reset_after is not None:
            self._reset_at = now + max(0.0, reset_after)

    def _rebucket(self, max_concurrency: int) -> None:
        # Discord's keys under the new value are unknowable: every new bucket starts from
        # the latest grant of any old bucket (slower once, never faster).
        # A held grant may still be sent under any key: count it as sent at its limit.
        latest = max((self._ended(b) for b in range(self._mc)), default=self._default_last)
        self._holds.clear()
        self._held_until = None
        self._margins.rebucket(max_concurrency)
        self._rejections = {}
        self._mc = max_concurrency
        self._last = {}
        self._default_last = latest
        waiting = sorted(self._index.values(), key=lambda w: w.order)
        self._queues = {}
        for w in waiting:
            self._queues.setdefault(self.bucket_of(w.shard_id), deque()).append(w)

    def _merge_budget(self, now: float, remaining: int, reset_after: float | None) -> None:
        check_count(remaining, "remaining")
        reported_reset = None if reset_after is None else now + max(0.0, reset_after)
        if self._total is None:
            self._total = remaining
        # A report that names a later reset than ours describes a new window: believe it.
        current = self._remaining
        new_window = current is None or (
            reported_reset is not None
            and (self._reset_at is None or reported_reset > self._reset_at + SAME_WINDOW_SLACK)
        )
        if current is None or new_window:
            self._remaining = remaining
            if reported_reset is not None:
                self._reset_at = reported_reset
            return
        # Same window: the report lags our own grants, so it may only lower the count.
        self._remaining = min(current, remaining)
        if reported_reset is not None:
            self._reset_at = (
                reported_reset if self._reset_at is None else max(self._reset_at, reported_reset)
            )

    def hold_until(self, until: float) -> None:
        """No grant in any bucket starts before ``until``.

        For a limiter that learns another one granted up to then (a predecessor, a peer
        coordinating a cluster start); it never makes a grant earlier than it would be.
        """
        floor = until - self._interval
        self._touch()
        self._default_last = max(self._default_last, floor)
        for bucket in list(self._last):
            self._last[bucket] = max(self._last[bucket], floor)

    def gate(self, until: float | None) -> None:
        """No grant starts before ``until``; ``None`` opens the gate.

        Unlike :meth:`hold_until` (knowledge of grants made elsewhere, which only ever
        delays), a gate is policy and may be moved earlier: a cluster starting up closes it
        until every shard that must IDENTIFY has asked, so every bucket starts together.
        """
        self._gate = -math.inf if until is None else until
        self._touch()

    # -- output ---------------------------------------------------------------------------

    def _last_of(self, bucket: int) -> float:
        return self._last.get(bucket, self._default_last)

    def _ended(self, bucket: int) -> float:
        """The latest time an IDENTIFY of ``bucket`` may have been (or be) sent."""
        ended = self._last_of(bucket)
        if self._hold_limit is not None and self._holds:
            held = self._held_until
            if held is None:
                held = self._held_until = {}
                for shard_id, at in self._holds.values():
                    b = self.bucket_of(shard_id)
                    held[b] = max(held.get(b, -math.inf), at + self._hold_limit)
            ended = max(ended, held.get(bucket, -math.inf))
        return ended

    def _free_at(self, bucket: int) -> float:
        ended = self._ended(bucket)
        gap = self._interval + self.margin(bucket)
        free = ended + gap
        # Rounded down, the sum would make `free - ended` a hair under the gap, and a
        # judge that subtracts (Discord, the sandbox, our tests) would see a start too early.
        while free - ended < gap:
            free = math.nextafter(free, math.inf)
        return max(free, self._gate)

    def _expire_holds(self, now: float) -> None:
        assert self._hold_limit is not None
        for key, (shard_id, at) in list(self._holds.items()):
            if at + self._hold_limit <= now:
                del self._holds[key]
                self._held_until = None
                self._touch(self.bucket_of(shard_id))
                bucket = self.bucket_of(shard_id)
                self._last[bucket] = max(self._last_of(bucket), at + self._hold_limit)

    def _refill(self, now: float) -> None:
        if self._reset_at is not None and now >= self._reset_at:
            self._remaining = self._total
            # The next window's start is unknown: assume it opens at the next grant, which is
            # when it opens at the latest, so we are on time or early on the refill, never late.
            self._reset_at = None

    def _touch(self, bucket: int | None = None) -> None:
        """``bucket``'s due time (every bucket's, without one) must be worked out again."""
        if bucket is None:
            self._stale = None
        elif self._stale is not None:
            self._stale.add(bucket)

    def _fresh_dues(self) -> dict[int, float]:
        if self._stale is None:
            self._dues = {b: self._free_at(b) - q[0].lead for b, q in self._queues.items() if q}
        else:
            for b in self._stale:
                q = self._queues.get(b)
                if q:
                    self._dues[b] = self._free_at(b) - q[0].lead
                else:
                    self._dues.pop(b, None)
        self._stale = set()
        return self._dues

    def next_deadline(self) -> float | None:
        """When :meth:`poll` can next grant something; ``None`` if only new input can help."""
        heads = self._fresh_dues()
        if not heads:
            return None
        due = min(heads.values())
        if self._remaining is not None and self._remaining <= 0:
            if self._reset_at is None:
                return None
            return max(due, self._reset_at)
        return due

    def poll(
        self, now: float, deliver: Callable[[Grant[K]], bool] | None = None,
        undelivered: Callable[[Parked[K]], None] | None = None,
    ) -> list[Grant[K]]:
        """Issue every grant that is due at ``now``, oldest request first.

        ``deliver(grant)`` is called for each grant before it is committed; if it returns
        False the request is dropped and its slot (and budget) stays free for the next one;
        ``undelivered`` receives it, set aside with its place (see :meth:`put_back`).
        A delivered grant is used, whatever happens to it afterwards; with ``hold_limit`` it
        is held until :meth:`release`.
        """
        self._refill(now)
        if self._holds:
            self._expire_holds(now)
        granted: list[Grant[K]] = []
        while True:
            if self._remaining is not None and self._remaining <= 0:
                return granted
            ready = [self._queues[b][0] for b, due in self._fresh_dues().items() if due <= now]
            if not ready:
                return granted
            head = min(ready, key=lambda w: w.order)
            bucket = self.bucket_of(head.shard_id)
            self._queues[bucket].popleft()
            self._remove(head.key)
            self._touch(bucket)
            start = max(now, self._free_at(bucket))
            grant = Grant(head.key, head.shard_id, bucket, now, start)
            if deliver is not None and not deliver(grant):
                if undelivered is not None:
                    undelivered(Parked(head))
                continue
            self._last[bucket] = start
            if self._margins.granted_clean(bucket):
                self._touch()  # every bucket's margin narrowed
            if self._hold_limit is not None:
                self._holds[head.key] = (head.shard_id, start)
                self._held_until = None
            if self._remaining is not None:
                self._remaining -= 1
                if self._reset_at is None:
                    # Discord's window opens at the IDENTIFY, which is no earlier than start.
                    self._reset_at = start + self._window
            granted.append(grant)
