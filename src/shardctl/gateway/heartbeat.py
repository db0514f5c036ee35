"""Heartbeat schedule, ACK tracking, zombie detection and latency for one connection.

Protocol §3: the first beat goes out ``interval * jitter`` after HELLO (jitter in [0, 1]),
then one every ``interval``; a server op 1 asks for a beat at once.  When a beat is due and
the previous one has had no ACK, the connection is a zombie and must be closed with a code
other than 1000/1001, then resumed.  Pure: time is always an argument.
"""

from __future__ import annotations

import math

from shardctl.errors import ProtocolError


class Heartbeat:
    """The heartbeat state of one connection, created when its HELLO arrives."""

    __slots__ = ("awaiting_ack", "beats", "interval", "last_ack", "last_beat", "latency",
                 "next_beat")

    def __init__(self, interval: float, *, now: float, jitter: float) -> None:
        if not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
            raise ProtocolError(f"HELLO heartbeat_interval must be a positive number, "
                                f"got {interval!r}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        self.interval = float(interval)
        self.next_beat = now + self.interval * jitter
        self.awaiting_ack = False
        self.last_beat: float | None = None
        self.last_ack: float | None = None
        self.latency: float | None = None
        self.beats = 0

    def due(self, now: float) -> bool:
        return now >= self.next_beat

    def is_zombie(self, now: float) -> bool:
        """A beat is due while the previous one is still unanswered (protocol §3)."""
        return self.awaiting_ack and self.due(now)

    def sent(self, now: float) -> None:
        """Record a beat, scheduled or requested by the server.

        The next one is due a full interval later either way: a requested beat resets the
        timer, so a scheduled beat right behind it cannot misread a slow ACK as a zombie.
        """
        self.last_beat = now
        self.awaiting_ack = True
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
