"""Which seqs events-out may still hold: the bound a stop saves when its drain ran out.

PUB/SUB gives no receipts, so when a consumer has not read everything by the end of a stop's
drain, nobody can say which events it got.  What libzmq does guarantee bounds it: a
consumer's pipe holds at most ``SNDHWM`` messages, in order, and a message enters it only
when the forwarder sends it.  A consumer that subscribes to an event type gets every event
of that type (those it loses at its high-water mark are lost while running, visible as
``bus_seq`` gaps, and not this module's business), so the messages of one (type, shard)
still held anywhere are among the last ``SNDHWM`` of that (type, shard) sent, plus the few
in the engine's write buffer.  ``window`` is that count.

:class:`SentMarks` keeps, per (type, shard), the gateway seq at every ``every``-th message
(and the first): cheap enough for the forwarder's hot loop (one bitwise test per event).
:meth:`SentMarks.safe_seqs` then says, per shard, a seq no held message is at or below --
saving it makes the next RESUME replay (and consumers see ``replayed``) rather than skip.
A session started in this run is never cut below its READY; one taken over from the state
file never below where this run resumed it.  Pure: no sockets, no clock.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

#: Messages of one (type, shard) beyond ``SNDHWM`` that may still sit in libzmq's engine:
#: its 8 KB write batch holds fewer than this many event frames (each is more than 40 bytes).
ENGINE_MARGIN: Final = 256


def shard_of_key(key: bytes) -> int:
    """The shard of a forwarder counter key: ``type NUL version shard(u32, big-endian)``."""
    return int.from_bytes(key[-4:], "big")


#: Ints per mark in a key's entry: bus_seq, gateway seq, session number of the shard.
_MARK: Final = 3


@dataclass(slots=True)
class SentMarks:
    """Sparse history of (bus_seq → seq) per (type, shard); see the module docstring."""

    window: int
    every: int = 0
    #: key → one flat array: the key's bus_seq when its shard's current session began, then
    #: a :data:`_MARK`-int mark per noted message, oldest first.  Flat, not a deque of
    #: tuples: ~3 keys a shard, and a deque alone is 760 bytes (10,000 shards, 23 MB).
    _keys: dict[bytes, array[int]] = field(default_factory=dict)
    #: shard → (session number, the seq no cut may go below in that session)
    _base: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: shard → its keys (a READY reads its own shard's, not every key)
    _by_shard: dict[int, list[bytes]] = field(default_factory=dict)
    _depth: int = 0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.every <= 0:
            # a power of two near window / 8: a bitwise test on the hot path, ~10 marks a key
            self.every = 1 << max(0, (self.window // 8).bit_length() - 1)
        if self.every & (self.every - 1):
            raise ValueError("every must be a power of two")
        self._depth = self.window // self.every + 3

    @property
    def mask(self) -> int:
        """``(bus_seq - 1) & mask == 0``: this message must be :meth:`note`d."""
        return self.every - 1

    def seed(self, shard: int, seq: int) -> None:
        """The shard RESUMEs a saved session at ``seq``: never cut below it."""
        self._base[shard] = (0, seq)

    def session_started(self, shard: int, seq: int, counters: Mapping[bytes, int]) -> None:
        """A READY (gateway ``seq``) was forwarded: a new session, never cut below ``seq``.

        ``counters`` are the forwarder's bus_seq counters; only this shard's keys are read
        (the marks index them, so a READY costs its shard's types, not every counter)."""
        number = self._base.get(shard, (0, 0))[0] + 1
        self._base[shard] = (number, seq)
        keys = self._keys
        for key in self._by_shard.get(shard, ()):
            keys[key][0] = counters.get(key, 0)

    def note(self, key: bytes, bus_seq: int, seq: int) -> None:
        """Mark message ``bus_seq`` of ``key``: the forwarder notes each one where
        ``(bus_seq - 1) & mask == 0``, and for a worker-stamped batch that holds such a
        message, its key's last one (marks then stay at least one per ``every`` messages)."""
        entry = self._keys.get(key)
        shard = shard_of_key(key)
        if entry is None:
            # a key new in its shard's session: its session began before its first message
            entry = self._keys[key] = array("q", (0,))
            self._by_shard.setdefault(shard, []).append(key)
        entry.extend((bus_seq, seq, self._base.get(shard, (0, 0))[0]))
        if len(entry) > 1 + _MARK * self._depth:
            del entry[1:1 + _MARK]

    def safe_seqs(self, counters: Mapping[bytes, int]) -> dict[int, int]:
        """Per shard that sent a seq: a seq no message still held is at or below."""
        safe: dict[int, int] = {}
        for key, entry in self._keys.items():
            shard = shard_of_key(key)
            cut = self._cut(key, shard, entry, counters.get(key, 0))
            if cut is not None:
                safe[shard] = min(cut, safe.get(shard, cut))
        return safe

    def _cut(self, key: bytes, shard: int, entry: array[int], sent: int) -> int | None:
        """The highest seq of this key's shard at or below which nothing of ``key`` is
        held; None when nothing of the current session can be (no bound needed)."""
        number, base = self._base.get(shard, (0, 0))
        started = entry[0]
        if sent <= started:
            return None  # nothing of this type in the current session
        limit = sent - self.window  # messages at or below it have left events-out
        for at in range(len(entry) - _MARK, 0, -_MARK):
            bus_seq, seq, session = entry[at:at + _MARK]
            if bus_seq <= limit:
                return seq if session == number and bus_seq > started else base
        return base
