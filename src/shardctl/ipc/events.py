"""Event bus wire format: worker → supervisor batches and supervisor → consumer messages.

Pure functions and constants only (no sockets): the worker's publisher, the supervisor's
forwarder, the :class:`~shardctl.ipc.consumer.Consumer` and consumers in other languages all
read this one description.  README.md ("Event bus wire format") is the public copy of the
consumer half; keep the two in step.

Consumer message (supervisor XPUB → consumer SUB): ONE ZeroMQ frame per event::

    type      the event type, ASCII, 1-64 bytes (``MESSAGE_CREATE``, ``SHARD_READY`` ...)
    0x00      terminator: a subscription to ``type + b"\\0"`` is an EXACT type match
    header    36 bytes, big-endian:
        +0   u8   version = 1
        +1   u32  shard id            (``type \\0 version shard`` is a valid subscription
                                        prefix too: one type on one shard)
        +5   u8   flags               bit 0 HAS_SEQ: ``seq`` is the gateway ``s``;
                                      bit 1 OVERLAP: received by a reshard's new shard set
                                      before the switch (README "Resharding"); others 0
        +6   u16  reserved (0)
        +8   u64  seq                 the gateway sequence number, 0 when HAS_SEQ is clear
        +16  i64  received_at         worker receive time, unix epoch nanoseconds
        +24  u64  bus_seq             supervisor's counter per (type, shard), from 1
        +32  u32  epoch               random per supervisor run; bus_seq restarts with it
    payload   the rest of the frame: the gateway payload exactly as received (decompressed
              JSON of the whole frame, ``{"op":0,"s":42,"t":"...","d":{...}}``), never
              re-serialised.  Lifecycle events carry a JSON object built by the worker whose
              ``d`` member holds the details (see :func:`lifecycle_payload`).

One frame rather than ``[topic, header, payload]``: measured on our machines a 3-part
``send_multipart`` costs ~5 µs per event against ~1.7 µs for one frame (DESIGN.md §3: per
message Python overhead dominates), and the subscription prefix match still works because the
frame starts with the type.

Why two sequence numbers: the gateway ``s`` proves nothing to a consumer filtered by type
(the numbers between two MESSAGE_CREATEs belong to other types), and lifecycle events have
no ``s`` at all.  ``bus_seq`` is contiguous for every (type, shard) the supervisor forwards,
so any subscriber can count what it lost between the supervisor and itself; ``seq`` lets an
unfiltered subscriber check the whole chain from Discord.  READY starts a new session at
``s = 1``; RESUMED and replays continue the old numbering.

Worker batch (worker XPUB → supervisor SUB): ONE frame per batch, internal to shardctl::

    batch header   40 bytes, big-endian:
        +0   u8   batch version = 3
        +1   u8   reserved (0)
        +2   u16  event count
        +4   u32  worker: the publisher's slot index (its assignment's ``worker``)
        +8   32 bytes  publish key: the ``publish_key`` of that assignment
    then per event:
        u32  length of the consumer message that follows
        u8   length of the type
        u32  session tag: :func:`session_tag` of the gateway session the event belongs to
        the consumer message exactly as above, with bus_seq and epoch zero

so the supervisor's hot path is: check the header once per batch, unpack 9 bytes per event,
patch 12 bytes, send a slice -- no JSON, no per-event objects (DESIGN.md §3).

A stamped worker batch (version 4) is the same but for three things: the records carry the
bus_seq and epoch the worker stamped from its assignment's counters, a trailer that sums the
batch up follows the last record (:mod:`shardctl.ipc.watermarks`), so the forwarder checks
O(keys + shards) per batch instead of reading each event, and the header's reserved byte is
the generation of the worker's numbering (its rebases so far, mod 256).  Version 1
and 2 batches (no worker and key; no session tags) are refused: anyone who can reach
events-in could send them (:mod:`shardctl.ipc.publishers`).  A batch is at most
:data:`MAX_BATCH_BYTES`.  :class:`~shardctl.ipc.bus.BatchBuilder` writes batches from
:func:`encode_record`; :class:`~shardctl.ipc.bus.EventForwarder` is their one reader.

Consumer batch (events-batch XPUB → consumer SUB, subscribed to the empty prefix): ONE
frame carrying up to :data:`CONSUMER_BATCH_MAX` events, for consumers that would rather pay
one receive per batch than one per event (README "Batched consumers")::

    header         40 bytes, the worker batch header's layout: version = 2, reserved (0),
                   u16 event count, u32 worker slot, 32 bytes of zero
    then per event the worker batch's record: u32 length, u8 type length, u32 session tag,
                   and the consumer message exactly as above (bus_seq and epoch stamped)

so the forwarder stamps a worker batch in place and sends it whole.  The first byte (2)
cannot start a version-1 message (which starts with an ASCII type), so a reader that mixes
the endpoints up fails loudly.

The session tag is there so that a seq is only ever compared with seqs of its own session:
the forwarder drops a dispatch whose ``s`` is not above the last one forwarded as a replay,
and without the tag a new session whose READY never reached the bus (its batch refused or
lost) would have its events up to the old session's seq dropped as such replays.  A RESUME
keeps the session id, so a respawned worker's replays carry the old tag and are dropped.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Container, Sequence
from typing import Any, Final

import orjson

from shardctl.errors import ProtocolError
from shardctl.gateway.lifecycle import BUS_TYPES

VERSION: Final = 1
#: header flag: ``seq`` carries the gateway sequence number ``s``.
HAS_SEQ: Final = 0x01
#: header flag: a reshard's new shard set received this before the bus switched to it; the
#: old set may have delivered the same event already (README "Resharding").
OVERLAP: Final = 0x02
#: offsets of the flags byte and of received_at inside HEADER
FLAGS_OFFSET: Final = 5
RECEIVED_AT_OFFSET: Final = 16
_RECEIVED_AT: Final = struct.Struct(">q")
#: Gateway event types are UPPER_SNAKE_CASE ASCII; 64 bytes is far above the longest.
MAX_TYPE_LEN: Final = 64
#: Lifecycle events emitted by the worker's shards (mirroring lacord's output events); they
#: have no gateway ``s`` and are flushed at once rather than waiting for a batch.
LIFECYCLE_TYPES: Final = BUS_TYPES
#: The dispatch that starts a new session: its ``s`` is 1 and resets the expected sequence.
NEW_SESSION_TYPE: Final = "READY"
#: The last frame on events-out when a graceful stop closes it: padding, not an event (README
#: "Event types").  libzmq drops the last write batch a closing socket has not flushed, so a
#: frame larger than that batch goes last; a SUB filtering by type never receives it.
BUS_CLOSING_TYPE: Final = "BUS_CLOSING"

#: header after the type terminator: version, shard, flags, reserved, seq, received_at,
#: bus_seq, epoch
HEADER: Final = struct.Struct(">BIBHQqQI")
HEADER_SIZE: Final = HEADER.size  # 36
#: offset of (bus_seq, epoch) inside HEADER, patched by the forwarder
BUS_OFFSET: Final = 24
BUS: Final = struct.Struct(">QI")
#: the part of HEADER that belongs to a subscription prefix: version + shard
PREFIX: Final = struct.Struct(">BI")
#: worker batches: version 2 carries the publisher's slot and publish key, 3 session tags
BATCH_VERSION: Final = 3
#: a version 3 batch stamped by its worker, with a watermark trailer (ipc/watermarks.py)
STAMPED_BATCH_VERSION: Final = 4
BATCH_HEADER: Final = struct.Struct(">BBHI32s")
#: bytes of the publish key in a batch header (shardctl.ipc.publishers.PUBLISH_KEY_SIZE)
BATCH_KEY_SIZE: Final = 32
#: Largest worker batch the supervisor reads (its ZMQ_MAXMSGSIZE on events-in): a gateway
#: payload may decompress to 64 MiB (the inflaters' cap), sealed into a batch that already
#: holds up to the publisher's max_bytes (256 KiB by default).
MAX_BATCH_BYTES: Final = 72 * 2**20
#: per-event prefix inside a batch: message length, type length, session tag
RECORD: Final = struct.Struct(">IBI")
#: the consumer batch's version (first byte): it shares BATCH_HEADER's layout
CONSUMER_BATCH_VERSION: Final = 2
#: events in one consumer batch at most: a larger worker batch goes out in parts, so a
#: consumer pipe of ``out_hwm // CONSUMER_BATCH_MAX`` batches holds at most ``out_hwm`` events
CONSUMER_BATCH_MAX: Final = 64
_U32: Final = 0xFFFFFFFF


class Event:
    """One event off the bus.

    ``raw`` is the payload exactly as the gateway sent it; ``d`` is parsed from it on first
    access only, so a consumer that routes on ``type`` and ``shard`` never pays for JSON.
    """

    __slots__ = ("_d", "bus_seq", "epoch", "overlap", "raw", "received_at_ns", "replayed", "seq",
                 "shard", "type")

    def __init__(self, type: str, shard: int, seq: int | None, received_at_ns: int,
                 raw: bytes, *, bus_seq: int = 0, epoch: int = 0, overlap: bool = False
                 ) -> None:
        self.type = type
        self.shard = shard
        self.seq = seq
        self.received_at_ns = received_at_ns
        self.raw = raw
        self.bus_seq = bus_seq
        self.epoch = epoch
        #: The OVERLAP flag: a reshard's new shard set received this before the switch, and
        #: the old set may have delivered it too (README "Resharding").
        self.overlap = overlap
        #: Set by a :class:`~shardctl.ipc.consumer.Consumer` that sees READY: this dispatch's
        #: ``s`` is not above the highest it already got in this session, i.e. Discord
        #: replayed it after a RESUME from an older seq (a restart after a crash).  Never on
        #: the wire.
        self.replayed = False
        self._d: Any = _UNPARSED

    @property
    def received_at(self) -> float:
        """Worker receive time as unix seconds (float; ``received_at_ns`` is exact)."""
        return self.received_at_ns / 1e9

    @property
    def d(self) -> Any:
        """The payload's ``d`` member (None if absent); parsed lazily, once.

        Raises :class:`~shardctl.errors.ProtocolError` if the payload is not a JSON object.
        """
        if self._d is _UNPARSED:
            try:
                obj = orjson.loads(self.raw)
            except orjson.JSONDecodeError as exc:
                raise ProtocolError(f"event payload is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise ProtocolError("event payload is not a JSON object")
            self._d = obj.get("d")
        return self._d

    def to_json_line(self) -> bytes:
        """The ``shardctl events`` line: ``{"shard":3,"seq":42,"t":"...","d":{...}}``, with
        ``"overlap":true`` last on an OVERLAP event (README "Resharding")."""
        line = {"shard": self.shard, "seq": self.seq, "t": self.type, "d": self.d}
        if self.overlap:
            line["overlap"] = True
        return orjson.dumps(line)

    def __repr__(self) -> str:
        return (f"Event(type={self.type!r}, shard={self.shard}, seq={self.seq}, "
                f"bus_seq={self.bus_seq}, {len(self.raw)} bytes)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.type, self.shard, self.seq, self.received_at_ns, self.raw,
                self.bus_seq, self.epoch) == (other.type, other.shard, other.seq,
                other.received_at_ns, other.raw, other.bus_seq, other.epoch)

    __hash__ = None  # type: ignore[assignment]  # mutable-ish value object; compare, don't hash


_UNPARSED: Final[Any] = object()


def type_bytes(t: str) -> bytes:
    """Validate an event type and return its ASCII bytes (ConfigurationError-free: ValueError)."""
    try:
        tb = t.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"event type {t!r} is not ASCII") from None
    if not 0 < len(tb) <= MAX_TYPE_LEN or b"\0" in tb:
        raise ValueError(f"event type {t!r} must be 1-{MAX_TYPE_LEN} bytes without NUL")
    return tb


def subscription_prefix(t: str | None = None, shard: int | None = None) -> bytes:
    """The SUB prefix selecting exactly one type (optionally on one shard); b"" for all."""
    if t is None:
        if shard is not None:
            raise ValueError("a shard filter needs a type; filter shards client-side")
        return b""
    prefix = type_bytes(t) + b"\0"
    if shard is not None:
        prefix += PREFIX.pack(VERSION, _check_u32(shard, "shard"))
    return prefix


def lifecycle_payload(d: Any = None) -> bytes:
    """Payload for a lifecycle event: ``{"d": d}``, so every payload has the same shape."""
    return orjson.dumps({"d": d})


def session_tag(session_id: str | None) -> int:
    """The u32 a worker batch carries for the gateway session ``session_id`` (0: none).

    A checksum, not the id itself: the forwarder only asks "same session as the last seq
    forwarded?", and a 4-byte tag keeps that to one integer comparison per event.
    """
    return 0 if session_id is None else zlib.crc32(session_id.encode("utf-8", "replace"))


def encode_record(t: str | bytes, shard: int, seq: int | None, received_at_ns: int,
                  payload: bytes, *, session: int = 0, bus_seq: int = 0,
                  epoch: int = 0) -> bytes:
    """One event as it sits inside a worker batch (RECORD prefix + consumer message);
    ``session`` is the :func:`session_tag` of the event's gateway session, ``bus_seq`` and
    ``epoch`` are stamped by a worker that numbers its own events (version 4 batches)."""
    tb = t if isinstance(t, bytes) else type_bytes(t)
    flags = 0 if seq is None else HAS_SEQ
    head = HEADER.pack(VERSION, shard, flags, 0, seq or 0, received_at_ns, bus_seq, epoch)
    return b"".join((RECORD.pack(len(tb) + 1 + HEADER_SIZE + len(payload), len(tb), session),
                     tb, b"\0", head, payload))


def batch_header(count: int, worker: int, key: bytes) -> bytes:
    """The header of a batch of ``count`` records sent by ``worker`` with its assignment's
    publish ``key``."""
    if len(key) != BATCH_KEY_SIZE:
        raise ValueError(f"a publish key has {BATCH_KEY_SIZE} bytes")
    return BATCH_HEADER.pack(BATCH_VERSION, 0, count, _check_u32(worker, "worker"), key)


def encode_event(t: str, shard: int, seq: int | None, received_at_ns: int, payload: bytes,
                 *, bus_seq: int = 0, epoch: int = 0) -> bytes:
    """One consumer message (what the forwarder sends; for tests and other producers)."""
    tb = type_bytes(t)
    flags = 0 if seq is None else HAS_SEQ
    return b"".join((tb, b"\0", HEADER.pack(VERSION, shard, flags, 0, seq or 0,
                                            received_at_ns, bus_seq, epoch), payload))


def decode_event(message: bytes) -> Event:
    """Parse one consumer message.  ProtocolError if it is not a version-1 event."""
    tlen = message.find(b"\0", 0, MAX_TYPE_LEN + 1)
    if tlen <= 0 or len(message) < tlen + 1 + HEADER_SIZE:
        raise ProtocolError("event message too short or without a type terminator")
    version, shard, flags, _, seq, received_ns, bus_seq, epoch = HEADER.unpack_from(
        message, tlen + 1)
    if version != VERSION:
        raise ProtocolError(f"unknown event message version {version}")
    try:
        t = message[:tlen].decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("event type is not ASCII") from None
    return Event(t, shard, seq if flags & HAS_SEQ else None, received_ns,
                 message[tlen + 1 + HEADER_SIZE:], bus_seq=bus_seq, epoch=epoch,
                 overlap=bool(flags & OVERLAP))


def consumer_batch(records: Sequence[bytes | memoryview], worker: int = 0) -> bytes:
    """A consumer batch of ``records`` (RECORD prefix + stamped consumer message each)."""
    if not 0 < len(records) <= CONSUMER_BATCH_MAX:
        raise ValueError(f"a consumer batch holds 1-{CONSUMER_BATCH_MAX} events")
    head = BATCH_HEADER.pack(CONSUMER_BATCH_VERSION, 0, len(records),
                             _check_u32(worker, "worker"), bytes(BATCH_KEY_SIZE))
    return head + b"".join(records)


def decode_batch(message: bytes, types: Container[bytes] | None = None) -> list[Event]:
    """Parse one consumer batch: its events of ``types`` (type names as ASCII bytes; None:
    every one).  ProtocolError if it is not a version-2 batch (a version-1 message, from the
    per-event endpoint, says so) or a record is malformed (nothing of it is returned)."""
    if len(message) < BATCH_HEADER.size:
        raise ProtocolError("consumer batch shorter than its header")
    version, _, count = BATCH_HEADER.unpack_from(message, 0)[:3]
    if version != CONSUMER_BATCH_VERSION:
        hint = " (a version-1 event: read it with decode_event)" if version > 0x20 else ""
        raise ProtocolError(f"unknown consumer batch version {version}{hint}")
    off, n = BATCH_HEADER.size, len(message)
    events: list[Event] = []
    names: dict[bytes, str] = {}
    # locals: this loop runs once per event a consumer receives
    record, header, size = RECORD.unpack_from, HEADER.unpack_from, RECORD.size
    append = events.append
    try:
        for _ in range(count):
            mlen, tlen, _ = record(message, off)
            start = off + size
            h = start + tlen + 1
            off = start + mlen
            if off > n or not 0 < tlen <= MAX_TYPE_LEN or message[h - 1] != 0 \
                    or h + HEADER_SIZE > off:
                raise ProtocolError("malformed event record in consumer batch")
            tb = message[start:h - 1]
            if types is not None and tb not in types:
                continue
            version, shard, flags, _, seq, received_ns, bus_seq, epoch = header(message, h)
            if version != VERSION:
                raise ProtocolError(f"unknown event message version {version}")
            name = names.get(tb)
            if name is None:
                name = names[tb] = tb.decode("ascii")
            append(Event(name, shard, seq if flags & HAS_SEQ else None, received_ns,
                         message[h + HEADER_SIZE:off], bus_seq=bus_seq, epoch=epoch,
                         overlap=flags & OVERLAP != 0))
    except struct.error:
        raise ProtocolError("consumer batch ends inside a record") from None
    except UnicodeDecodeError:
        raise ProtocolError("event type is not ASCII") from None
    if off != n:
        raise ProtocolError("trailing bytes after the last event of a consumer batch")
    return events


def batch_records(batch: bytes) -> list[tuple[str, int, int]]:
    """(type, shard, offset of the record's header) of every record of a worker batch.

    Off the hot path (a reshard's staged batches): ProtocolError when the batch is malformed.
    """
    if len(batch) < BATCH_HEADER.size:
        raise ProtocolError("worker batch shorter than its header")
    count = BATCH_HEADER.unpack_from(batch, 0)[2]
    off, out = BATCH_HEADER.size, []
    for _ in range(count):
        h, end = record_bounds(batch, off)
        shard = HEADER.unpack_from(batch, h)[1]
        out.append((batch[off + RECORD.size:h - 1].decode("ascii", "replace"), shard, h))
        off = end
    return out


def record_bounds(batch: bytes | bytearray, off: int) -> tuple[int, int]:
    """(offset of its HEADER, offset after it) of the worker batch record at ``off``;
    ProtocolError unless it is well formed (its version is the caller's to check)."""
    try:
        mlen, tlen, _ = RECORD.unpack_from(batch, off)
    except struct.error:
        raise ProtocolError("worker batch ends inside a record") from None
    start = off + RECORD.size
    h = start + tlen + 1
    if (start + mlen > len(batch) or not 0 < tlen <= MAX_TYPE_LEN
            or mlen < tlen + 1 + HEADER_SIZE or batch[h - 1] != 0):
        raise ProtocolError("malformed event record in batch")
    return h, start + mlen


def mark_overlap(batch: bytes, received_until_ns: int | None = None) -> bytes:
    """The batch with the OVERLAP flag set on every record (a reshard's held events), or
    only on those received at or before ``received_until_ns``."""
    buf = bytearray(batch)
    for _, _, h in batch_records(batch):
        if received_until_ns is None or _RECEIVED_AT.unpack_from(
                batch, h + RECEIVED_AT_OFFSET)[0] <= received_until_ns:
            buf[h + FLAGS_OFFSET] |= OVERLAP
    return bytes(buf)


def ready_session(payload: bytes, url_allowed: Callable[[str], bool] | None = None
                  ) -> tuple[str, str] | None:
    """(session_id, resume_gateway_url) of a READY payload; None when it names none, or a
    URL ``url_allowed`` refuses (nobody may RESUME that session)."""
    try:
        d = orjson.loads(payload).get("d") or {}
        session, url = d.get("session_id"), d.get("resume_gateway_url")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(session, str) and isinstance(url, str) and (
            url_allowed is None or url_allowed(url)):
        return session, url
    return None


def _check_u32(value: int, name: str) -> int:
    if not 0 <= value <= _U32:
        raise ValueError(f"{name} {value} out of range 0..{_U32}")
    return value
