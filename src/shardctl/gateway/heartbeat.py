"""Heartbeat schedule, ACK tracking, zombie detection and latency for one connection.

Protocol §3: the first beat goes out ``interval * jitter`` after HELLO (jitter in [0, 1]),
then one every ``interval``; a server op 1 asks for a beat at once.  When a beat is due and
the previous one has had no ACK, the connection is a zombie and must be closed with a code
other than 1000/1001, then resumed.  Pure: time is always an argument.

That rule notices a dead connection up to two intervals (80 s at Discord's 41.25 s) after
the last sign of life.  Discord answers a beat within milliseconds, so we also give up on a
*silent* connection whose ACK is ``ack_timeout`` late (:data:`ACK_TIMEOUT` of the interval,
at least :data:`ACK_TIMEOUT_MIN`: about 3 s at Discord's interval): nothing at all received
since the beat went out.  A connection that still delivers frames is alive, its ACK merely
queued behind them (a client that reads slower than Discord sends is seconds behind); for
it only the protocol's rule applies, so overload never turns into a reconnect storm.  A
wrong guess costs one RESUME, never an IDENTIFY; a dead socket found 77 s sooner is 77 s
of events not lost to it.
"""

from __future__ import annotations

import math
from typing import Final

from shardctl.errors import ProtocolError

#: Default ACK timeout as a fraction of the heartbeat interval.
ACK_TIMEOUT: Final = 0.075
#: Floor of the default ACK timeout (seconds): a loaded host may take a few hundred ms to
#: answer, and at intervals of a second or less the protocol's rule is soon enough.
ACK_TIMEOUT_MIN: Final = 1.0


def check_ack_timeout(value: float | None, name: str = "ack_timeout") -> float | None:
    """``value`` if it is None or a positive number of seconds; ValueError naming ``name``."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return value


def default_ack_timeout(interval: float) -> float:
    """How late an ACK may be before the connection counts as a zombie (never > interval)."""
    return min(interval, max(ACK_TIMEOUT_MIN, ACK_TIMEOUT * interval))


class Heartbeat:
    """The heartbeat state of one connection, created when its HELLO arrives."""

    __slots__ = ("ack_timeout", "awaiting_ack", "beats", "heard", "interval", "last_ack",
                 "last_beat", "latency", "next_beat")

    def __init__(self, interval: float, *, now: float, jitter: float,
                 ack_timeout: float | None = None) -> None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ProtocolError(f"HELLO heartbeat_interval must be a positive number, "
                                f"got {interval!r}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        self.interval = float(interval)
        check_ack_timeout(ack_timeout)
        self.ack_timeout = (default_ack_timeout(self.interval) if ack_timeout is None
                            else ack_timeout)
        self.next_beat = now + self.interval * jitter
        self.awaiting_ack = False
        #: whether anything arrived since the last beat went out (the machine sets it)
        self.heard = False
        self.last_beat: float | None = None
        self.last_ack: float | None = None
        self.latency: float | None = None
        self.beats = 0

    def due(self, now: float) -> bool:
        return now >= self.next_beat

    def is_zombie(self, now: float) -> bool:
        """The last beat is unanswered and a beat is due (protocol §3), or its ACK is late
        on a connection that has been silent since the beat."""
        return self.awaiting_ack and (self.due(now) or now >= self.ack_deadline())

    def ack_deadline(self) -> float:
        """When the outstanding beat's ACK is late on a silent connection (inf when no beat
        is outstanding or something arrived since)."""
        if not self.awaiting_ack or self.heard or self.last_beat is None:
            return math.inf
        return self.last_beat + self.ack_timeout

    def deadline(self) -> float:
        """The next moment something is due: a beat, or the outstanding ACK's timeout."""
        return min(self.next_beat, self.ack_deadline())

    def sent(self, now: float) -> None:
        """Record a beat, scheduled or requested by the server.

        The next one is due a full interval later either way: a requested beat resets the
        timer, so a scheduled beat right behind it cannot misread a slow ACK as a zombie.
        """
        self.last_beat = now
        self.awaiting_ack = True
        self.heard = False
        self.next_beat = now + self.interval
        self.beats += 1

    def acked(self, now: float) -> float | None:
        """Record an op 11; returns the round-trip latency if a beat was outstanding."""
        self.last_ack = now
        if not self.awaiting_ack or self.last_beat is None:
            return None
        self.awaiting_ack = False
        self.latency = max(0.0, now - self.last_beat)
        return self.latency

    def postpone(self, until: float) -> None:
        """Delay the next beat (only when the outbound rate limit has no slot left)."""
        self.next_beat = max(self.next_beat, until)
