"""Outbound send limits of one gateway connection (gateway-protocol.md §9).

Discord disconnects a client that sends more than 120 frames in 60 s (close 4008), and the
window type is undocumented, so we use the strictest reading: a sliding window log.  An
acquisition at time ``t`` occupies a slot during ``[t, t + per)``; at no point do more than
``limit`` acquisitions share any half-open interval of length ``per``.

Pure: ``now`` (monotonic seconds) is always an argument.  ``now`` must not go backwards; if
it does, it is treated as the latest time seen, so the log stays ordered.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from shardctl.errors import ConfigurationError

__all__ = [
    "COMMAND_LIMIT",
    "COMMAND_PER",
    "COMMAND_RESERVE",
    "PRESENCE_LIMIT",
    "CommandRateLimit",
    "SlidingWindow",
]

#: Client frames per connection: 120 per 60 s, heartbeats included (§9).
COMMAND_LIMIT: Final = 120
COMMAND_PER: Final = 60.0
#: Slots kept for heartbeat/identify/resume so a burst of commands cannot delay a heartbeat
#: into a zombie close; libraries commonly keep about 10 (§9, observed).
COMMAND_RESERVE: Final = 10
#: Op 3: 5 per 20 s per shard, on top of the 120/60 (§9).
PRESENCE_LIMIT: Final = (5, 20.0)


class SlidingWindow:
    """At most ``limit`` acquisitions in any ``per`` seconds, as a log of timestamps."""

    __slots__ = ("_log", "limit", "per")

    def __init__(self, limit: int, per: float) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"rate limit must be a positive int, got {limit!r}")
        if not (isinstance(per, int | float) and math.isfinite(per) and per > 0):
            raise ConfigurationError(f"rate limit period must be a positive number, got {per!r}")
        self.limit = limit
        self.per = float(per)
        self._log: deque[float] = deque()

    def _prune(self, now: float) -> float:
        log = self._log
        if log:
            now = max(now, log[-1])
            per = self.per
            # Same expression as next_free(), so "free at t" and "expired at t" agree exactly.
            while log and log[0] + per <= now:
                log.popleft()
        return now

    def remaining(self, now: float) -> int:
        """How many acquisitions would succeed at ``now``."""
        self._prune(now)
        return max(0, self.limit - len(self._log))

    def try_acquire(self, now: float) -> bool:
        """Take a slot at ``now`` if one is free."""
        now = self._prune(now)
        if len(self._log) >= self.limit:
            return False
        self._log.append(now)
        return True

    def next_free(self, now: float) -> float:
        """The earliest time ``>= now`` at which :meth:`try_acquire` would succeed."""
        now = self._prune(now)
        log = self._log
        if len(log) < self.limit:
            return now
        # Full means exactly `limit` entries: the oldest one frees the next slot.
        return log[0] + self.per

    def reset(self) -> None:
        """Forget every acquisition (a new connection starts with a fresh budget)."""
        self._log.clear()


class CommandRateLimit:
    """The 120/60 s limit of one connection, with ``reserve`` slots only priority sends use.

    Non-priority commands (op 3, 4, 8, 31, 43) may hold at most ``limit - reserve`` slots of
    any window; priority sends (heartbeat, identify, resume) may use all ``limit``.  So
    whenever fewer than ``reserve`` priority sends are in the window, a heartbeat never waits
    behind commands.  Call :meth:`reset` on every new connection: the limit is per socket.
    """

    __slots__ = ("_all", "_normal", "reserve")

    def __init__(self, limit: int = COMMAND_LIMIT, per: float = COMMAND_PER,
                 reserve: int = COMMAND_RESERVE) -> None:
        if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
            raise ConfigurationError(f"reserve must be an int >= 0, got {reserve!r}")
        if isinstance(limit, int) and reserve >= limit:
            raise ConfigurationError(
                f"reserve ({reserve}) must leave room for commands below limit ({limit})"
            )
        self._all = SlidingWindow(limit, per)
        self._normal = SlidingWindow(limit - reserve, per)
        self.reserve = reserve

    @property
    def limit(self) -> int:
        return self._all.limit

    @property
    def per(self) -> float:
        return self._all.per

    def try_acquire(self, now: float, *, priority: bool = False) -> bool:
        """Take a slot at ``now`` if the send is allowed."""
        if priority:
            return self._all.try_acquire(now)
        if self._normal.remaining(now) and self._all.remaining(now):
            self._normal.try_acquire(now)
            self._all.try_acquire(now)
            return True
        return False

    def next_free(self, now: float, *, priority: bool = False) -> float:
        """The earliest time ``>= now`` at which this kind of send would be allowed."""
        free = self._all.next_free(now)
        if priority:
            return free
        # Both windows only free up as time passes, so the later of the two is exact.
        return max(free, self._normal.next_free(now))

    def remaining(self, now: float, *, priority: bool = False) -> int:
        """How many sends of this kind would succeed at ``now``."""
        left = self._all.remaining(now)
        return left if priority else min(left, self._normal.remaining(now))

    def reset(self) -> None:
        """Start a new connection's budget."""
        self._all.reset()
        self._normal.reset()
