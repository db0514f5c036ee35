"""The session-start limits a session limiter paces by, as one validated value.  Pure.

Discord sets them (gateway-protocol.md §9): one IDENTIFY per bucket (``shard_id %
max_concurrency``) every ``interval`` seconds, and a budget of session starts
(``remaining`` of ``total``, refilled ``reset_after`` seconds from now and every ``window``
after that).  On top of the interval every gap gets a ``margin`` (:mod:`.pacing`).

Every limiter takes them as one :class:`Limits`, checked here once: the cluster's scheduler
(``cluster/limiter.py``), the supervisor's limiter service (``cluster/limiter_service.py``)
and the in-process ``LocalSessionLimiter`` (``worker/limiter.py``).  The command line and
GET /gateway/bot convert to it at the edges (Discord's ``reset_after`` is milliseconds; here
it is seconds).  A running limiter's limits change by partial updates (the wire's
``configure``), whose values the ``check_*`` functions below check the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from shardctl.gateway.pacing import DEFAULT_MARGIN, IdentifyMargin

__all__ = [
    "DEFAULT_IDENTIFY_INTERVAL",
    "DEFAULT_LIMITS",
    "DEFAULT_WINDOW",
    "Limits",
    "check_count",
    "check_max_concurrency",
    "check_seconds",
]

DEFAULT_IDENTIFY_INTERVAL: Final = 5.0
"""Seconds between IDENTIFYs of one bucket: Discord's documented 1 per 5 s per key (§9)."""

DEFAULT_WINDOW: Final = 86_400.0
"""Length of a session-start window once refilled: Discord's budget is per 24 h (§9)."""


def check_max_concurrency(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_concurrency must be an integer >= 1, not {value!r}")
    return value


def check_seconds(value: float, what: str) -> float:
    """A positive, finite number of seconds (an interval, a window, a hold limit)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_count(value: int, what: str) -> int:
    """A count of session starts (``remaining``, ``total``): an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, not {value!r}")
    return value


def _check_reset_after(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"reset_after must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """How fast sessions may start: the pace of each bucket and the budget.

    ``remaining`` of ``None`` means no budget is known and none is enforced (tests, the
    sandbox, the in-process limiter).  Given ``remaining`` without ``total``, a refill
    restores ``remaining`` (never more than known).  ``reset_after`` (seconds from when the
    limiter starts) is when the budget refills; unknown, the window opens at the first grant.
    ``margin``: what every gap of a bucket gets on top of ``interval``.
    """

    max_concurrency: int = 1
    interval: float = DEFAULT_IDENTIFY_INTERVAL
    remaining: int | None = None
    total: int | None = None
    reset_after: float | None = None
    window: float = DEFAULT_WINDOW
    margin: IdentifyMargin = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        check_max_concurrency(self.max_concurrency)
        check_seconds(self.interval, "the identify interval")
        check_seconds(self.window, "the session-start window")
        if self.remaining is not None:
            check_count(self.remaining, "remaining")
        if self.total is not None:
            check_count(self.total, "total")
        if self.reset_after is not None:
            _check_reset_after(self.reset_after)
        if not isinstance(self.margin, IdentifyMargin):
            raise ValueError(f"margin must be an IdentifyMargin, not {self.margin!r}")

    @property
    def has_budget(self) -> bool:
        """Whether any part of the session-start budget is given."""
        return not (self.remaining is None and self.total is None and self.reset_after is None)


DEFAULT_LIMITS: Final = Limits()
"""Discord's default pace for a bot without ``max_concurrency`` > 1, and no budget."""
