"""The sandbox's limits and deadlines as small pure classes: ``now`` in, decision out.

Nothing here reads a clock or touches a socket, so every rule of protocol §9/§3/§15 is
unit-testable on a fake clock.  The connection handler feeds ``anyio.current_time()``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class SlidingWindow:
    """At most ``limit`` events in any ``per`` seconds (or per fixed window if ``fixed``).

    Source: §9 [doc] 120 client frames per 60 s per connection, heartbeats included (close
    4008: the link is inferred); 5 presence updates per 20 s [doc, breach undocumented].
    Sliding by default, fixed as an option: the window type is [choice].
    """

    __slots__ = ("_count", "_events", "_fixed", "_window_start", "limit", "per")

    def __init__(self, limit: int, per: float, *, fixed: bool = False) -> None:
        self.limit, self.per, self._fixed = limit, per, fixed
        self._events: deque[float] = deque()
        self._window_start: float | None = None
        self._count = 0

    def hit(self, now: float) -> bool:
        """Count one event; False when it goes over the limit (it is still counted)."""
        if self._fixed:
            if self._window_start is None or now - self._window_start >= self.per:
                self._window_start, self._count = now, 0
            self._count += 1
            return self._count <= self.limit
        events = self._events
        while events and now - events[0] >= self.per:
            events.popleft()
        events.append(now)
        return len(events) <= self.limit

    def __len__(self) -> int:
        return self._count if self._fixed else len(self._events)


class HeartbeatMonitor:
    """Heartbeat deadlines (§3 Sandbox): by HELLO/previous beat + N * (1 + tolerance).

    Source: §3 [doc] a late beat gets the socket closed, with no documented deadline or
    code; the 25 % tolerance and close 4000 are [choice].
    """

    __slots__ = ("beats", "hello_at", "interval", "last_beat", "tolerance")

    def __init__(self, interval: float, tolerance: float, hello_at: float) -> None:
        self.interval, self.tolerance = interval, tolerance
        self.hello_at = hello_at
        self.last_beat: float | None = None
        self.beats = 0

    def beat(self, now: float) -> float:
        """Register a beat; returns the gap since the previous beat (or since HELLO)."""
        gap = now - (self.last_beat if self.last_beat is not None else self.hello_at)
        self.last_beat = now
        self.beats += 1
        return gap

    def deadline(self) -> float:
        start = self.last_beat if self.last_beat is not None else self.hello_at
        return start + self.interval * (1.0 + self.tolerance)

    def expired(self, now: float) -> bool:
        return now > self.deadline()


class IdentifyPacer:
    """One IDENTIFY per ``interval`` per key ``shard_id % max_concurrency`` (§9 [doc]: 5 s,
    op 9 on breach, across all sockets of the bot).

    A rejected try does not restart the window.  ``history`` keeps accepted times per key so
    tests and reports can check the gaps.
    """

    __slots__ = ("history", "interval", "last", "max_concurrency")

    def __init__(self, max_concurrency: int, interval: float) -> None:
        self.max_concurrency, self.interval = max_concurrency, interval
        self.last: dict[int, float] = {}
        self.history: dict[int, list[float]] = {}

    def key(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def gap(self, shard_id: int, now: float) -> float | None:
        last = self.last.get(self.key(shard_id))
        return None if last is None else now - last

    def try_acquire(self, shard_id: int, now: float) -> bool:
        key = self.key(shard_id)
        last = self.last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self.last[key] = now
        self.history.setdefault(key, []).append(now)
        return True


@dataclass(slots=True)
class SessionBudget:
    """session_start_limit (§9): one fixed window opened by the first IDENTIFY.

    Source: §9/§15 [doc] ``total`` starts per window, going past it resets the token; RESUME
    never counts.  One fixed window opened by the first IDENTIFY is [choice].
    """

    total: int
    remaining_at_start: int
    window: float
    opened_at: float | None = None
    used: int = 0
    revoked: bool = False

    def _roll(self, now: float) -> None:
        if self.opened_at is not None and now - self.opened_at >= self.window:
            self.opened_at, self.used, self.remaining_at_start = None, 0, self.total

    def remaining(self, now: float) -> int:
        self._roll(now)
        return max(0, self.remaining_at_start - self.used)

    def reset_after_ms(self, now: float) -> int:
        self._roll(now)
        if self.opened_at is None:
            return int(self.window * 1000)
        return max(0, int((self.opened_at + self.window - now) * 1000))

    def take(self, now: float) -> bool:
        """Spend one start; False means the bot went past ``total``: token reset."""
        self._roll(now)
        if self.remaining(now) <= 0:
            self.revoked = True
            return False
        if self.opened_at is None:
            self.opened_at = now
        self.used += 1
        return True


@dataclass(slots=True)
class MemberRequestLimiter:
    """All-members op 8: one per guild per ``per`` seconds, bot-wide (§9 [doc], enforced
    since 2025-10-01: RATE_LIMITED, no chunks, no close)."""

    per: float = 30.0
    last: dict[int, float] = field(default_factory=dict)

    def retry_after(self, guild_id: int, now: float) -> float:
        """0 when allowed (and counted); otherwise seconds left."""
        last = self.last.get(guild_id)
        if last is not None and now - last < self.per:
            return self.per - (now - last)
        self.last[guild_id] = now
        return 0.0
