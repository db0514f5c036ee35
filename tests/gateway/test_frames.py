"""read_frame: the envelope parser every received payload goes through (protocol §2)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.gateway import frames
from shardctl.gateway.frames import Frame, read_frame


def test_public_names_exist() -> None:
    assert sorted(frames.__all__) == ["Frame", "read_frame"]
    for name in frames.__all__:
        assert hasattr(frames, name)


def test_bare_heartbeat_ack_from_the_docs_parses() -> None:
    frame = read_frame(b'{"op":11}')
    assert frame == Frame(op=11, d=None, s=None, t=None, raw=b'{"op":11}')


def test_dispatch_keeps_every_envelope_key_and_the_raw_bytes() -> None:
    raw = b'{"op":0,"d":{"id":"1","_trace":["x"]},"s":42,"t":"MESSAGE_CREATE"}'
    frame = read_frame(raw)
    assert (frame.op, frame.s, frame.t) == (0, 42, "MESSAGE_CREATE")
    assert frame.d == {"id": "1", "_trace": ["x"]}
    assert frame.raw is raw


def test_text_payload_is_kept_as_its_utf8_bytes() -> None:
    text = '{"op":0,"d":{"content":"h\u00e9llo \U0001f600"},"s":1,"t":"X"}'
    frame = read_frame(text)
    assert frame.raw == text.encode("utf-8")
    assert frame.d == {"content": "h\u00e9llo \U0001f600"}


def test_unknown_keys_and_null_s_t_are_fine() -> None:
    frame = read_frame(b'{"op":10,"d":{"heartbeat_interval":41250},"s":null,"t":null,"x":1}')
    assert (frame.op, frame.s, frame.t) == (10, None, None)
    assert frame.d == {"heartbeat_interval": 41250}


@pytest.mark.parametrize("payload", [b"", b"nope", b'{"op":1', b"\xff\xfe", b'{"op":1}{"op":2}'])
def test_non_json_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="not valid JSON"):
        read_frame(payload)


def test_text_with_a_lone_surrogate_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        read_frame('{"op":1,"d":"\ud800"}')


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(b"[1,2]", "array"), (b"1", "number"), (b'"op"', "string"), (b"null", "null"),
     (b"true", "boolean")],
)
def test_json_that_is_not_an_object_is_a_protocol_error(payload: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError, match=f"must be a JSON object, got {kind}"):
        read_frame(payload)


def test_missing_op_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="no 'op'"):
        read_frame(b'{"d":null,"s":null,"t":null}')
    with pytest.raises(ProtocolError, match="no 'op'"):
        read_frame(b'{"op":null}')


@pytest.mark.parametrize(
    ("payload", "kind"),
    [(b'{"op":"1"}', "string"), (b'{"op":1.0}', "number"), (b'{"op":true}', "boolean"),
     (b'{"op":[1]}', "array"), (b'{"op":{}}', "object")],
)
def test_non_integer_op_is_a_protocol_error(payload: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError, match=f"'op' must be an integer, got {kind}"):
        read_frame(payload)


@pytest.mark.parametrize(
    "payload", [b'{"op":0,"s":"1"}', b'{"op":0,"s":1.5}', b'{"op":0,"s":true}']
)
def test_non_integer_sequence_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="'s' must be an integer or null"):
        read_frame(payload)


@pytest.mark.parametrize("payload", [b'{"op":0,"t":1}', b'{"op":0,"t":["READY"]}'])
def test_non_string_event_name_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="'t' must be a string or null"):
        read_frame(payload)


def test_repr_never_shows_a_token_or_the_raw_bytes() -> None:
    identify = b'{"op":2,"d":{"token":"SECRET-TOKEN","intents":1}}'
    resume = b'{"op":6,"d":{"token":"SECRET-TOKEN","session_id":"a","seq":1}}'
    for raw in (identify, resume):
        text = repr(read_frame(raw))
        assert "SECRET-TOKEN" not in text
        assert f"<{len(raw)} bytes>" in text
    assert "heartbeat_interval" in repr(read_frame(b'{"op":10,"d":{"heartbeat_interval":1}}'))


def test_error_messages_do_not_echo_the_payload() -> None:
    with pytest.raises(ProtocolError) as info:
        read_frame(b'{"token":"SECRET-TOKEN"}')
    assert "SECRET-TOKEN" not in str(info.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=20,
)


_envelopes = st.fixed_dictionaries({
    "op": st.integers(-(2**63), 2**63 - 1),
    "d": _json,
    "s": st.none() | st.integers(0, 2**63 - 1),
    "t": st.none() | st.text(max_size=30),
})


@given(
    envelope=_envelopes,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in "opdst"), _json,
                          max_size=3),
    drop=st.sets(st.sampled_from(["d", "s", "t"])),
)
def test_any_object_with_an_integer_op_round_trips(
    envelope: dict[str, Any], extra: dict[str, object], drop: set[str]
) -> None:
    op, d, s, t = envelope["op"], envelope["d"], envelope["s"], envelope["t"]
    obj = {**extra, **envelope}
    for key in drop:
        del obj[key]
    raw = orjson.dumps(obj)
    frame = read_frame(raw)
    assert frame.op == op
    assert frame.d == (None if "d" in drop else d)
    assert frame.s == (None if "s" in drop else s)
    assert frame.t == (None if "t" in drop else t)
    assert frame.raw == raw


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_input_yields_a_frame_or_a_protocol_error(payload: bytes | str) -> None:
    try:
        frame = read_frame(payload)
    except ProtocolError:
        return
    assert isinstance(frame.op, int)
    assert not isinstance(frame.op, bool)
