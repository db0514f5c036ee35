"""Fuzzing the IPC decoders: any frames give a message or a ProtocolError, never a hang or
another exception (a worker, a consumer or a stray peer cannot crash the reader)."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc.control import KINDS, VERSION, ControlMessage, Reassembler, decode
from shardctl.ipc.events import Event, decode_event, encode_event

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=400, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
frame = st.binary(max_size=64)
versions = st.just(VERSION) | frame
kinds = st.sampled_from(sorted(KINDS)).map(str.encode) | frame
bodies = json_values.map(orjson.dumps) | frame


def check_decode(frames: list[bytes]) -> None:
    try:
        message = decode(frames)
    except ProtocolError:
        return
    assert isinstance(message, ControlMessage)
    assert message.kind in KINDS and isinstance(message.body, dict)


@FUZZ
@given(st.lists(frame, max_size=5))
def test_control_decoder_survives_any_frames(frames: list[bytes]) -> None:
    check_decode(frames)


@FUZZ
@given(versions, kinds, bodies)
def test_control_decoder_survives_near_valid_messages(version: bytes, kind: bytes,
                                                      body: bytes) -> None:
    check_decode([version, kind, body])


part_bodies = st.fixed_dictionaries({}, optional={
    "id": st.sampled_from(["a", "b"]) | json_values,
    "kind": st.sampled_from(sorted(KINDS)) | json_values,
    "index": st.integers(-1, 3) | json_values,
    "count": st.integers(0, 4) | json_values,
    "data": st.sampled_from(["", "e30=", "eyJh", "Ig==", "!!"]) | json_values,
})


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([b"w1", b"w2"]), part_bodies), max_size=12))
def test_reassembly_survives_any_parts(parts: list[tuple[bytes, dict[str, object]]]) -> None:
    assembler = Reassembler()
    for sender, body in parts:
        try:
            message = assembler.feed(sender, ControlMessage("part", body))
        except ProtocolError:
            continue
        assert message is None or (message.kind in KINDS - {"part"}
                                   and isinstance(message.body, dict))


@FUZZ
@given(st.binary(max_size=256))
def test_event_decoder_survives_any_bytes(message: bytes) -> None:
    try:
        event = decode_event(message)
    except ProtocolError:
        return
    assert isinstance(event, Event)


@FUZZ
@given(st.binary(max_size=8), st.integers(0, 2**32 - 1), st.binary(max_size=64),
       st.integers(0, 80))
def test_event_decoder_survives_cut_and_spliced_events(junk: bytes, shard: int,
                                                       payload: bytes, cut: int) -> None:
    real = encode_event("MESSAGE_CREATE", shard, 7, 1, payload)
    for message in (real[:cut], real[:cut] + junk, junk + real):
        with contextlib.suppress(ProtocolError):
            decode_event(message)
