"""The event bus wire format: the byte layout README.md promises, and its round trips."""

from __future__ import annotations

import contextlib
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc import events
from shardctl.ipc.bus import BatchBuilder
from shardctl.ipc.events import (
    Event,
    decode_event,
    encode_event,
    encode_record,
    lifecycle_payload,
    session_tag,
    subscription_prefix,
)

PAYLOAD = b'{"op":0,"s":42,"t":"MESSAGE_CREATE","d":{"content":"hi","id":"1"}}'


def test_consumer_message_layout_is_the_documented_one() -> None:
    msg = encode_event("MESSAGE_CREATE", 3, 42, 1_700_000_000_123_456_789, PAYLOAD,
                       bus_seq=7, epoch=0xDEADBEEF)
    assert msg[:15] == b"MESSAGE_CREATE\x00"
    h = 15
    assert msg[h] == 1  # version
    assert struct.unpack_from(">I", msg, h + 1) == (3,)  # shard
    assert msg[h + 5] == 1  # flags: HAS_SEQ
    assert msg[h + 6:h + 8] == b"\0\0"  # reserved
    assert struct.unpack_from(">Q", msg, h + 8) == (42,)
    assert struct.unpack_from(">q", msg, h + 16) == (1_700_000_000_123_456_789,)
    assert struct.unpack_from(">Q", msg, h + 24) == (7,)
    assert struct.unpack_from(">I", msg, h + 32) == (0xDEADBEEF,)
    assert msg[h + 36:] == PAYLOAD  # exactly as received, not re-serialised
    assert events.HEADER_SIZE == 36


def test_lifecycle_event_has_no_seq_flag_and_zero_seq() -> None:
    msg = encode_event("SHARD_READY", 0, None, 5, lifecycle_payload({"session": "x"}))
    h = len(b"SHARD_READY\x00")
    assert msg[h + 5] == 0
    assert struct.unpack_from(">Q", msg, h + 8) == (0,)
    ev = decode_event(msg)
    assert ev.seq is None
    assert ev.d == {"session": "x"}


def test_decode_event_round_trip_and_lazy_d() -> None:
    ev = decode_event(encode_event("GUILD_CREATE", 9, 1, 2_000_000_000, PAYLOAD,
                                   bus_seq=3, epoch=4))
    assert (ev.type, ev.shard, ev.seq, ev.received_at_ns, ev.raw, ev.bus_seq, ev.epoch) == (
        "GUILD_CREATE", 9, 1, 2_000_000_000, PAYLOAD, 3, 4)
    assert ev.received_at == pytest.approx(2.0)
    assert ev.d == {"content": "hi", "id": "1"}


def test_json_line_is_the_events_contract() -> None:
    ev = decode_event(encode_event("MESSAGE_CREATE", 3, 42, 0, PAYLOAD))
    assert ev.to_json_line() == (
        b'{"shard":3,"seq":42,"t":"MESSAGE_CREATE","d":{"content":"hi","id":"1"}}')
    life = decode_event(encode_event("SHARD_DISCONNECT", 1, None, 0,
                                     lifecycle_payload({"code": 4009})))
    assert orjson.loads(life.to_json_line()) == {
        "shard": 1, "seq": None, "t": "SHARD_DISCONNECT", "d": {"code": 4009}}


def test_payload_that_is_not_a_json_object_raises_protocol_error_on_d_only() -> None:
    ev = decode_event(encode_event("X", 0, 1, 0, b"[1,2]"))
    assert ev.raw == b"[1,2]"
    with pytest.raises(ProtocolError):
        _ = ev.d
    with pytest.raises(ProtocolError):
        _ = decode_event(encode_event("X", 0, 1, 0, b"{nope")).d


def test_subscription_prefixes_are_exact_per_type_and_shard() -> None:
    a = encode_event("MESSAGE_CREATE", 3, 1, 0, b"{}")
    b = encode_event("MESSAGE_CREATE_X", 3, 1, 0, b"{}")
    c = encode_event("MESSAGE_CREATE", 31, 1, 0, b"{}")
    p = subscription_prefix("MESSAGE_CREATE")
    assert a.startswith(p) and c.startswith(p) and not b.startswith(p)
    p3 = subscription_prefix("MESSAGE_CREATE", 3)
    assert a.startswith(p3) and not c.startswith(p3) and not b.startswith(p3)
    assert subscription_prefix() == b""
    with pytest.raises(ValueError, match="needs a type"):
        subscription_prefix(None, 3)


@pytest.mark.parametrize("bad", ["", "A\0B", "MESSAGÉ", "X" * 65])
def test_invalid_types_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        events.type_bytes(bad)


@pytest.mark.parametrize("mutate", [
    lambda m: m[:10],                       # truncated header
    lambda m: m.replace(b"\x00", b"_", 1),  # no terminator
    lambda m: m[:15] + b"\x02" + m[16:],    # unknown version
])
def test_malformed_messages_raise_protocol_error(mutate: object) -> None:
    msg = encode_event("MESSAGE_CREATE", 3, 42, 0, PAYLOAD)
    with pytest.raises(ProtocolError):
        decode_event(mutate(msg))  # type: ignore[operator]


_types = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=64)
_events = st.tuples(_types, st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**64 - 1),
                    st.integers(-(2**63), 2**63 - 1), st.binary(max_size=300))


def split_batch(batch: bytes, worker: int, key: bytes) -> list[tuple[int, int, bytes]]:
    """The worker batch layout of the ipc/events.py docstring, read literally:
    ``[(type length, session tag, consumer message), ...]``, from ``worker`` with its
    publish ``key``."""
    version, reserved, count, sender, sent_key = struct.unpack_from(">BBHI32s", batch, 0)
    assert (version, reserved, sender, sent_key) == (3, 0, worker, key)
    off, out = 40, []
    for _ in range(count):
        mlen, tlen, session = struct.unpack_from(">IBI", batch, off)
        out.append((tlen, session, batch[off + 9:off + 9 + mlen]))
        off += 9 + mlen
    assert off == len(batch)
    return out


@given(st.lists(_events, min_size=1, max_size=40))
def test_a_sealed_batch_carries_each_consumer_message_in_the_documented_layout(
        evs: list[tuple[str, int, int | None, int, bytes]]) -> None:
    # BatchBuilder + encode_record is how a worker writes batches; the forwarder reads them
    # (tests/ipc/test_forwarder_input.py covers malformed ones).
    key = bytes(range(32))
    builder = BatchBuilder(max_events=64, max_bytes=2**30, worker=7, key=key)
    for i, ev in enumerate(evs):
        builder.add(encode_record(*ev, session=session_tag(f"session {i}")), 0.0)
    batch, count = builder.seal()
    assert count == len(evs)
    records = split_batch(batch, 7, key)
    assert records == [(len(ev[0]), session_tag(f"session {i}"), encode_event(*ev))
                       for i, ev in enumerate(evs)]
    decoded = [decode_event(message) for _, _, message in records]
    assert [(e.type, e.shard, e.seq, e.received_at_ns, e.raw) for e in decoded] == evs
    assert all(e.bus_seq == 0 and e.epoch == 0 for e in decoded)


def test_event_equality_and_repr_hides_payload() -> None:
    a = Event("T", 1, 2, 3, b"{}")
    assert a == Event("T", 1, 2, 3, b"{}")
    assert a != Event("T", 1, 3, 3, b"{}")
    assert "bytes" in repr(a)


# -- consumer batches (events-batch) ---------------------------------------------------------


def stamped(t: str, shard: int, seq: int, bus_seq: int) -> bytes:
    """A record as the forwarder leaves it in a batch: bus_seq and epoch stamped."""
    record = bytearray(encode_record(t, shard, seq, 5, b'{"s":%d}' % seq, session=9))
    h = events.RECORD.size + len(t) + 1
    events.BUS.pack_into(record, h + events.BUS_OFFSET, bus_seq, 77)
    return bytes(record)


def test_a_consumer_batch_has_the_worker_batch_layout_with_version_2_and_no_key() -> None:
    records = [stamped("MESSAGE_CREATE", 3, 10, 1), stamped("TYPING_START", 4, 11, 1)]
    batch = events.consumer_batch(records, worker=2)
    assert batch[0] == 2 and batch[1] == 0
    assert struct.unpack_from(">HI", batch, 2) == (2, 2)
    assert batch[8:40] == bytes(32)
    assert batch[40:] == b"".join(records)
    got = events.decode_batch(batch)
    assert [(e.type, e.shard, e.seq, e.bus_seq, e.epoch, e.raw) for e in got] == [
        ("MESSAGE_CREATE", 3, 10, 1, 77, b'{"s":10}'), ("TYPING_START", 4, 11, 1, 77, b'{"s":11}')]
    assert got == [decode_event(r[events.RECORD.size:]) for r in records]


def test_decode_batch_keeps_only_the_types_asked_for() -> None:
    batch = events.consumer_batch([stamped("MESSAGE_CREATE", 0, 1, 1),
                                   stamped("TYPING_START", 0, 2, 1),
                                   stamped("MESSAGE_CREATE", 0, 3, 2)])
    got = events.decode_batch(batch, frozenset({b"MESSAGE_CREATE"}))
    assert [(e.type, e.seq) for e in got] == [("MESSAGE_CREATE", 1), ("MESSAGE_CREATE", 3)]


def test_a_consumer_batch_holds_1_to_64_events() -> None:
    with pytest.raises(ValueError, match="1-64"):
        events.consumer_batch([])
    with pytest.raises(ValueError, match="1-64"):
        events.consumer_batch([stamped("A", 0, i, i) for i in range(1, 66)])


def test_a_version_1_message_is_not_a_batch_and_says_so() -> None:
    v1 = encode_event("MESSAGE_CREATE", 0, 1, 1, PAYLOAD)
    with pytest.raises(ProtocolError, match="version-1 event"):
        events.decode_batch(v1 + bytes(40))


@pytest.mark.parametrize("cut", [1, 5, 20, 39])
def test_truncated_or_padded_batches_raise_protocol_error(cut: int) -> None:
    batch = events.consumer_batch([stamped("MESSAGE_CREATE", 0, 1, 1),
                                   stamped("MESSAGE_CREATE", 0, 2, 2)])
    with pytest.raises(ProtocolError):
        events.decode_batch(batch[:-cut])
    with pytest.raises(ProtocolError, match="trailing"):
        events.decode_batch(batch + b"x" * cut)


@given(st.binary(max_size=300))
def test_any_bytes_decode_as_a_batch_or_raise_protocol_error(junk: bytes) -> None:
    for message in (junk, bytes([2, 0, 0, 3]) + bytes(36) + junk):
        with contextlib.suppress(ProtocolError):
            events.decode_batch(message)
