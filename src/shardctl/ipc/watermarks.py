"""Stamped worker batches: the worker numbers its own events, the forwarder checks a summary.

The forwarder used to read every event in Python to stamp ``bus_seq`` and ``epoch``, drop
replays and track each shard's last seq: 2-4 µs of the supervisor's CPU per event, on the one
process every event passes through.  The owning worker is the only writer of its shards'
events, so it can do that itself.  A stamped batch (worker batch version 4,
:mod:`shardctl.ipc.events`) holds its records exactly as the forwarder sends them, numbered
from the counters the worker's assignment hands over (:class:`Stamper`), followed by a
trailer that sums the batch up (the format below).  The forwarder checks the
trailer against its own record of what it forwarded -- O(keys + shards) per batch -- and,
when everything continues exactly where it stands (:func:`continues`), sends the records on
untouched and learns its progress from the trailer.  When anything does not line up (a
respawn that raced the dead worker's last batch, a replay, a new session, a reshard's staged
set, a stream that must see each event), it stamps that batch itself, as for version 3; so
it does a batch with fewer events than trailer entries, which costs less read that way.
Either way consumers receive the same bytes: the fast path can only ever be an
optimisation, never a second truth.

A worker whose numbering is out of step (a reshard's new set, whose counters went stale
while the old set ran on; a respawn that raced the dead worker's last batch) is told by how
much: the forwarder takes the difference per key after renumbering one of its batches, the
supervisor sends it (control message ``rebase``), and the worker adds it and marks its later
batches with a new generation (the batch header's reserved byte), so the forwarder knows
which of them were numbered before the worker heard of it.

What the forwarder checks is the trailer (its shards are the sender's, its numbers continue
the bus, its count is the header's), not each record: the framing of the records an
assigned worker wrote is taken as it comes.  Only an assigned worker's batch gets this far
(its publish key is checked first, :mod:`shardctl.ipc.publishers`), and the worker builds
the records and their trailer from the same calls (tests/ipc/test_watermarks.py holds the
two paths' output equal).

Trailer (after the last record, big-endian)::

    per counter key   u8 key length, the key (type NUL version(u8) shard(u32)),
                      u16 records of it in this batch, u64 the last one's bus_seq,
                      u64 the last one's gateway seq (0: the type carries none)
    per shard         u32 shard, u32 session tag, u64 first seq, u64 last seq,
                      u16 records with a seq, u8 flags (1: the batch starts a session or
                      mixes two: the forwarder looks at each event)
    footer            u16 keys, u16 shards, u32 epoch, u32 trailer length (footer included)

Pure: no sockets, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from shardctl.errors import ProtocolError
from shardctl.ipc.events import PREFIX, VERSION
from shardctl.ipc.unsent import shard_of_key

_KEY: Final = struct.Struct(">HQQ")
_SHARD: Final = struct.Struct(">IIQQHB")
_FOOTER: Final = struct.Struct(">HHII")
#: a counter key: type (1-64 bytes), NUL, version (u8), shard (u32)
_KEY_MIN, _KEY_MAX = 7, 70
#: shard flag: the forwarder must read this shard's events one by one
LOOK: Final = 1


def counter_key(tb: bytes, shard: int, version: int = VERSION) -> bytes:
    """The forwarder's counter key of (type, shard): also its subscription prefix
    (:func:`~shardctl.ipc.events.subscription_prefix`, from a type already in bytes)."""
    return tb + b"\0" + PREFIX.pack(version, shard)


def is_counter_key(key: bytes) -> bool:
    """Whether ``key`` has a counter key's shape (the type's characters are not checked)."""
    return _KEY_MIN <= len(key) <= _KEY_MAX and key[-6] == 0


@dataclass(frozen=True, slots=True)
class Watermarks:
    """A stamped batch's trailer, read."""

    epoch: int
    #: (key, records, last bus_seq, last gateway seq or 0)
    keys: tuple[tuple[bytes, int, int, int], ...]
    #: (shard, session tag, first seq, last seq, records with a seq, flags)
    shards: tuple[tuple[int, int, int, int, int, int], ...]
    #: where the records end (the trailer's offset)
    end: int


def footer(batch: bytes, start: int) -> tuple[int, int]:
    """(entries, where the records end) of a stamped batch whose records begin at ``start``;
    ProtocolError if its footer does not fit it.  Entries (keys + shards) are what reading
    the trailer costs: a batch with fewer events than that is cheaper read event by event."""
    n = len(batch)
    if n - start < _FOOTER.size:
        raise ProtocolError("stamped batch shorter than its trailer")
    nkeys, nshards, _, size = _FOOTER.unpack_from(batch, n - _FOOTER.size)
    end = n - size
    if not start <= end <= n - _FOOTER.size:
        raise ProtocolError("stamped batch: trailer length out of range")
    return nkeys + nshards, end


def read(batch: bytes, start: int) -> Watermarks:
    """The trailer of a stamped batch whose records begin at ``start``; ProtocolError if it
    is not one."""
    n = len(batch)
    end = footer(batch, start)[1]
    nkeys, nshards, epoch, _ = _FOOTER.unpack_from(batch, n - _FOOTER.size)
    off, keys = end, []
    try:
        for _ in range(nkeys):
            klen = batch[off]
            key = batch[off + 1:off + 1 + klen]
            if len(key) != klen or not is_counter_key(key):
                raise ProtocolError("stamped batch: malformed counter key")
            off += 1 + klen
            keys.append((key, *_KEY.unpack_from(batch, off)))
            off += _KEY.size
        shards = []
        for _ in range(nshards):
            shards.append(_SHARD.unpack_from(batch, off))
            off += _SHARD.size
    except (IndexError, struct.error):
        raise ProtocolError("stamped batch: trailer runs past its end") from None
    if off != n - _FOOTER.size:
        raise ProtocolError("stamped batch: trailer length does not match its entries")
    return Watermarks(epoch, tuple(keys), tuple(shards), end)


def continues(marks: Watermarks, count: int, allowed: frozenset[int], *,
              counters: Mapping[bytes, int], last_seq: Mapping[int, int],
              tags: Mapping[int, int]) -> bool:
    """Whether the batch continues exactly where the forwarder stands, so sending its
    records untouched is what stamping each one would have sent: every key's bus_seq goes
    on from the forwarder's counter, every shard is the sender's and its seqs go on from
    the last one forwarded, in the same session, without a gap or a new session."""
    total = 0
    for key, records, last_bus, _ in marks.keys:
        if counters.get(key, 0) != last_bus - records or shard_of_key(key) not in allowed:
            return False
        total += records
    if total != count:
        return False
    for shard, tag, first, last, records, flags in marks.shards:
        if flags or shard not in allowed:
            return False
        if records and (tags.get(shard) != tag or last_seq.get(shard) != first - 1
                        or last - first + 1 != records):
            return False
    return True


class Stamper:
    """The worker's half: bus numbering, replay drops and the open batch's trailer.

    ``counters`` (key → last bus_seq forwarded) and each shard's (session tag, seq) come from
    the assignment, so a respawned worker continues where the dead one's forwarded events
    stopped; from then on this worker is the only writer of those keys.  One call per event
    (:meth:`stamp`) does all three with two dict lookups: it runs for every event a worker
    publishes.
    """

    __slots__ = ("_batch_keys", "_batch_shards", "_counters", "_keys", "_shards", "epoch",
                 "replays")

    def __init__(self, epoch: int, counters: Mapping[bytes, int] | None = None,
                 sessions: Iterable[tuple[int, int, int]] = ()) -> None:
        self.epoch = epoch
        #: handed-over counters of keys not written yet
        self._counters: dict[bytes, int] = dict(counters or {})
        #: (type, shard) → [key, last bus_seq, records in the open batch, their last seq]
        self._keys: dict[tuple[bytes, int], list[Any]] = {}
        #: shard → [session tag, last seq published, in the open batch?, and the batch's:
        #: session tag, first seq, last seq, records with a seq, flags]
        self._shards: dict[int, list[int]] = {}
        self._batch_keys: list[list[Any]] = []
        self._batch_shards: list[tuple[int, list[int]]] = []
        #: replayed dispatches dropped (their seq was already published in their session)
        self.replays = 0
        self.adopt({}, sessions)

    def adopt(self, counters: Mapping[bytes, int],
              sessions: Iterable[tuple[int, int, int]]) -> None:
        """More shards (an adoption): their counters and sessions; keys this worker already
        writes keep its own numbering (it is ahead of the forwarder's by what is in flight)."""
        for key, bus_seq in counters.items():
            self._counters.setdefault(key, bus_seq)
        for shard, tag, seq in sessions:
            self._shards.setdefault(shard, [tag, seq, 0, 0, 0, 0, 0, 0])

    def shift(self, deltas: Mapping[bytes, int]) -> None:
        """Move each key's numbering by its delta (the forwarder found it out of step)."""
        for k in self._keys.values():
            k[1] += deltas.get(k[0], 0)
        written = {k[0] for k in self._keys.values()}
        for key, delta in deltas.items():
            if key not in written:
                self._counters[key] = self._counters.get(key, 0) + delta

    def stamp(self, tb: bytes, shard: int, tag: int, seq: int | None,
              starts_session: bool) -> int:
        """The bus_seq of this event, counted into the open batch's trailer; 0 when it is a
        RESUME's replay of what its session already published (the caller drops it)."""
        sh = self._shards.get(shard)
        if sh is None:
            sh = self._shards[shard] = [tag, 0, 0, 0, 0, 0, 0, 0]
        if seq is not None:
            if seq <= sh[1] and sh[0] == tag and not starts_session:
                self.replays += 1
                return 0
            sh[0], sh[1] = tag, seq
        if not sh[2]:
            sh[2:] = (1, tag, 0, 0, 0, 0)
            self._batch_shards.append((shard, sh))
        if seq is not None:
            if not sh[6]:
                sh[3], sh[4] = tag, seq
            elif tag != sh[3]:
                sh[7] = LOOK  # two sessions in one batch
            sh[5] = seq
            sh[6] += 1
            if starts_session:
                sh[7] = LOOK
        k = self._keys.get((tb, shard))
        if k is None:
            key = counter_key(tb, shard)
            k = self._keys[(tb, shard)] = [key, self._counters.pop(key, 0), 0, 0]
        bus_seq: int = k[1] + 1
        k[1] = bus_seq
        if not k[2]:
            self._batch_keys.append(k)
        k[2] += 1
        k[3] = seq or 0
        return bus_seq

    def seal(self) -> bytes:
        """The open batch's trailer; the next event opens a new one."""
        parts: list[bytes] = []
        for key, bus_seq, records, seq in self._batch_keys:
            parts += (bytes((len(key),)), key, _KEY.pack(records, bus_seq, seq))
        for k in self._batch_keys:
            k[2] = 0
        for shard, sh in self._batch_shards:
            parts.append(_SHARD.pack(shard, *sh[3:]))
            sh[2] = 0
        body = b"".join(parts)
        footer = _FOOTER.pack(len(self._batch_keys), len(self._batch_shards), self.epoch,
                              len(body) + _FOOTER.size)
        self._batch_keys, self._batch_shards = [], []
        return body + footer
