"""How much later than Discord's interval an IDENTIFY goes: the pacing margin.  Pure policy.

Discord stamps an IDENTIFY when some server of its fleet reads it, late by that server's load
and the network, and two IDENTIFYs of a bucket travel different connections: the second may
look early by the difference and be answered with op 9 (gateway-protocol.md §9).  Every gap
of a bucket therefore gets a margin on top of the interval: a floor, a part of the interval,
and an adaptive part that widens one step per op 9 (bounded; every bucket takes the widest
bucket's margin, the lag being the gateway's) and narrows one step after a run of clean
grants.  The cluster's scheduler (``cluster/limiter.py``) and the
in-process ``LocalSessionLimiter`` (``worker/limiter.py``) share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Final

__all__ = ["DEFAULT_MARGIN", "BucketMargins", "IdentifyMargin"]


@dataclass(frozen=True, slots=True)
class IdentifyMargin:
    """How much longer than the interval a bucket's gaps are: ``floor + relative * interval``
    seconds, plus one ``step`` per unanswered op 9 of the widest bucket (:class:`BucketMargins`).

    ``floor`` covers what does not grow with the pace: how much later one server of Discord's
    fleet may read (and stamp) an IDENTIFY than another read the previous one.  ``relative``
    (a fraction of the interval) is for whatever does.  A widening step is the base margin
    (at least :attr:`MIN_STEP` of the interval, so a zero base still adapts); a bucket
    widens at most ``max_steps`` times, and takes one step back after ``decay_after``
    grants without an op 9 reported.
    """

    floor: float = 0.0
    relative: float = 0.0
    max_steps: int = 4
    decay_after: int = 8

    MIN_STEP: ClassVar[float] = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.floor) and self.floor >= 0):
            raise ValueError(f"the margin floor must be a finite number of seconds >= 0, "
                             f"not {self.floor}")
        if not (math.isfinite(self.relative) and 0 <= self.relative < 1):
            raise ValueError(f"the relative margin must be a fraction of the interval in "
                             f"[0, 1), not {self.relative}")
        if self.max_steps < 0 or self.decay_after < 1:
            raise ValueError("max_steps must be >= 0 and decay_after >= 1")

    def base(self, interval: float) -> float:
        return self.floor + self.relative * interval

    def step(self, interval: float) -> float:
        return max(self.base(interval), self.MIN_STEP * interval)

    def widest(self, interval: float) -> float:
        return self.base(interval) + self.max_steps * self.step(interval)


DEFAULT_MARGIN: Final = IdentifyMargin(floor=0.015, relative=0.01)
"""15 ms + 1 % of the interval: 17 ms at 0.2 s, 65 ms at Discord's 5 s (README "IDENTIFY
pace" has the measurements behind it)."""


class BucketMargins:
    """Every bucket's current margin under one :class:`IdentifyMargin` policy.

    An op 9 widens the bucket it answered one step, and every bucket takes the widest
    bucket's margin: what made Discord read an IDENTIFY late is its fleet's load or the
    network, which every bucket's IDENTIFYs cross alike, so waiting for each bucket to be
    answered with op 9 in turn would spend an IDENTIFY (and a session start) per bucket on
    one slow episode.  The widened bucket takes one step back after ``decay_after`` grants of
    its own without an op 9; the others follow it.
    """

    def __init__(self, policy: IdentifyMargin) -> None:
        self.policy = policy
        self._steps: dict[int, int] = {}  # bucket -> margin steps taken after its op 9s
        self._clean: dict[int, int] = {}  # bucket -> grants since its last op 9 or step back
        self._widest = 0  # max(self._steps.values()): the steps every bucket takes
        self._at_grant: dict[int, int] = {}  # bucket -> the steps its last grant's gap had

    def margin(self, bucket: int, interval: float) -> float:
        """Seconds the bucket's next gap gets on top of ``interval`` (the same for every
        bucket: the widest)."""
        return self.policy.base(interval) + self._widest * self.policy.step(interval)

    def widen(self, bucket: int) -> bool:
        """Discord answered an IDENTIFY of the bucket with op 9: one step wider than the
        margin its last gap had (bounded), unless every bucket has widened since (an op 9
        of the same slow episode, reported late, takes no second step).  True if every
        bucket's margin changed."""
        had = self._at_grant.get(bucket, self._widest)
        target = min(self.policy.max_steps, had + 1) if had >= self._widest else self._widest
        self._steps[bucket] = max(self._steps.get(bucket, 0), target)
        self._clean[bucket] = 0
        return self._rewiden()

    def granted_clean(self, bucket: int) -> bool:
        """One more grant without an op 9: after ``decay_after`` of them, one step back.
        True if every bucket's margin changed."""
        self._at_grant[bucket] = self._widest
        steps = self._steps.get(bucket)
        if not steps:
            return False
        self._clean[bucket] = self._clean.get(bucket, 0) + 1
        if self._clean[bucket] < self.policy.decay_after:
            return False
        self._clean[bucket] = 0
        if steps > 1:
            self._steps[bucket] = steps - 1
        else:
            del self._steps[bucket], self._clean[bucket]
        return self._rewiden()

    def rebucket(self, max_concurrency: int) -> None:
        """New buckets, unknowable from the old: each takes the widest old margin."""
        widest = self._widest
        self._steps = dict.fromkeys(range(max_concurrency), widest) if widest else {}
        self._clean, self._at_grant = {}, {}
        self._rewiden()

    def _rewiden(self) -> bool:
        widest = max(self._steps.values(), default=0)
        changed, self._widest = widest != self._widest, widest
        return changed
