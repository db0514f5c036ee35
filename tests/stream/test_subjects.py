"""The stream's public layout: subjects, Nats-Msg-Id and headers (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc.events import decode_event, encode_event
from shardctl.stream import subjects

_TYPES = st.from_regex(r"[A-Z][A-Z_]{0,30}", fullmatch=True)
_U32 = st.integers(0, 2**32 - 1)


@given(t=_TYPES, shard=_U32, seq=st.none() | st.integers(0, 2**63 - 1),
       received=st.integers(0, 2**62), bus_seq=st.integers(0, 2**63 - 1), epoch=_U32,
       payload=st.binary(max_size=64))
def test_headers_carry_every_field_of_the_bus_frame_and_the_payload_as_is(
        *, t: str, shard: int, seq: int | None, received: int, bus_seq: int, epoch: int,
        payload: bytes) -> None:
    frame = decode_event(encode_event(t, shard, seq, received, payload, bus_seq=bus_seq,
                                        epoch=epoch))
    event = subjects.event_from(subjects.headers(frame, "session"), frame.raw)
    assert (event.type, event.shard, event.seq, event.received_at_ns, event.raw,
            event.bus_seq, event.epoch) == (t, shard, seq, received, payload, bus_seq, epoch)


def test_a_dispatch_is_named_by_shard_session_and_seq_whatever_else_differs() -> None:
    one = decode_event(encode_event("MESSAGE_CREATE", 3, 42, 1, b"{}", bus_seq=7, epoch=1))
    replay = decode_event(encode_event("MESSAGE_CREATE", 3, 42, 9, b"{}", bus_seq=1,
                                         epoch=2))
    assert subjects.msg_id(one, "s1") == subjects.msg_id(replay, "s1")
    assert subjects.msg_id(one, "s1") != subjects.msg_id(one, "s2")
    assert "s1" not in subjects.msg_id(one, "s1"), "the session id must not leave"


def test_lifecycle_events_are_named_by_type_epoch_and_bus_seq() -> None:
    a = decode_event(encode_event("SHARD_READY", 3, None, 1, b"{}", bus_seq=1, epoch=5))
    b = decode_event(encode_event("SHARD_READY", 3, None, 1, b"{}", bus_seq=2, epoch=5))
    c = decode_event(encode_event("SHARD_READY", 3, None, 1, b"{}", bus_seq=1, epoch=6))
    ids = {subjects.msg_id(f, "s") for f in (a, b, c)}
    assert len(ids) == 3


def test_subjects_put_type_and_shard_where_filters_can_select_them() -> None:
    assert subjects.subject("shardctl", "MESSAGE_CREATE", 3) == "shardctl.MESSAGE_CREATE.3"
    assert subjects.subject("bot.events", "A.B*>", 0) == "bot.events.A_B__.0"
    assert subjects.filter_subjects("p", None, None) == ["p.>"]
    assert subjects.filter_subjects("p", ["B", "A"], None) == ["p.A.*", "p.B.*"]
    assert subjects.filter_subjects("p", None, [2, 1]) == ["p.*.1", "p.*.2"]
    assert subjects.filter_subjects("p", ["A"], [1]) == ["p.A.1"]


@pytest.mark.parametrize("headers", [None, {}, {"Shardctl-Type": "X"},
                                     {"Shardctl-Type": "X", "Shardctl-Shard": "x",
                                      "Shardctl-Received-At": "1", "Shardctl-Bus-Seq": "1",
                                      "Shardctl-Epoch": "1"}])
def test_a_message_that_is_not_ours_is_a_protocol_error(headers: dict[str, str] | None
                                                        ) -> None:
    with pytest.raises(ProtocolError):
        subjects.event_from(headers, b"{}")
