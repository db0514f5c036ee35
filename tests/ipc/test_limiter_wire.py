"""The SL1 limiter wire format: exact frames, round trips, and rejection of anything else."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc.limiter import (
    Cancel,
    ClientMessage,
    Configure,
    Configured,
    GrantMessage,
    Ping,
    Pong,
    Probe,
    Refused,
    Rejected,
    Release,
    Request,
    ServiceMessage,
    decode_client_message,
    decode_service_message,
    encode,
)


def test_frames_are_the_documented_contract() -> None:
    assert encode(Request("c1", 7, 3)) == [b"SL1", b"request",
                                           b'{"client":"c1","req":7,"shard":3}']
    assert encode(GrantMessage(7, 3)) == [b"SL1", b"grant", b'{"req":7,"shard":3}']
    assert encode(Pong(2, (7, 8))) == [b"SL1", b"pong", b'{"seq":2,"queued":[7,8]}']
    assert encode(Configure("c1", remaining=5)) == [b"SL1", b"configure",
                                                    b'{"client":"c1","remaining":5}']
    assert encode(Probe()) == [b"SL1", b"probe", b"{}"]
    # The clock fields are optional: absent unless set, so older peers see what they know.
    assert encode(Ping("c1", 2, "m1:ab")) == [b"SL1", b"ping",
                                              b'{"client":"c1","seq":2,"clock":"m1:ab"}']
    assert encode(Release("c1", 7)) == [b"SL1", b"release", b'{"client":"c1","req":7}']
    assert encode(Release("c1", 7, 12.5)) == [b"SL1", b"release",
                                              b'{"client":"c1","req":7,"sent_at":12.5}']
    assert encode(GrantMessage(7, 3, 12.75)) == [b"SL1", b"grant",
                                                 b'{"req":7,"shard":3,"not_before":12.75}']
    assert encode(Rejected("c1", 7, 3, 0.25)) == [b"SL1", b"rejected",
                                                  b'{"client":"c1","req":7,"shard":3,"after":0.25}']
    assert encode(Rejected("c1", 7, 3)) == [b"SL1", b"rejected",
                                            b'{"client":"c1","req":7,"shard":3}']


def test_configure_is_acknowledged_by_its_seq() -> None:
    assert encode(Configure("c1", max_concurrency=2, seq=3)) == [
        b"SL1", b"configure", b'{"client":"c1","max_concurrency":2,"seq":3}']
    assert encode(Configured(3, True)) == [b"SL1", b"configured", b'{"seq":3,"ok":true}']
    assert encode(Configured(3, False, "no")) == [
        b"SL1", b"configured", b'{"seq":3,"ok":false,"reason":"no"}']
    assert encode(Refused("c1", "in use")) == [
        b"SL1", b"refused", b'{"client":"c1","reason":"in use"}']
    with pytest.raises(ProtocolError, match="'ok'"):
        decode_service_message([b"SL1", b"configured", b'{"seq":3,"ok":1}'])


def test_old_messages_decode_without_the_clock_fields() -> None:
    assert decode_client_message([b"SL1", b"ping", b'{"client":"a","seq":1}']) == Ping("a", 1)
    assert decode_client_message([b"SL1", b"release", b'{"client":"a","req":1}']) == Release(
        "a", 1, None)
    assert decode_service_message([b"SL1", b"grant", b'{"req":1,"shard":2}']) == GrantMessage(
        1, 2, None)


@pytest.mark.parametrize(
    "message",
    [Ping("a", 0), Ping("a", 1, "m1:0123abcd"), Request("a.b:c-d_e", 2**53 - 1, 2**31 - 1),
     Cancel("x", 1), Release("x", 2), Release("x", 2, 0.0), Release("x", 3, 1234.000001),
     Configure("x"), Configure("x", 16, 900, 1000, 51200.5), Configure("x", 2, seq=7),
     Rejected("x", 4, 9), Rejected("x", 4, 9, 0.0), Rejected("x", 5, 2**31 - 1, 0.0125)],
)
def test_client_messages_round_trip(message: ClientMessage) -> None:
    assert decode_client_message(encode(message)) == message


@pytest.mark.parametrize("message", [GrantMessage(1, 2), GrantMessage(1, 2, 99.125), Pong(3, ()),
                                     Pong(4, (1, 2)), Probe(), Configured(7, True),
                                     Configured(8, False, "the worker role may not"),
                                     Refused("c1", "client id c1 is in use")])
def test_service_messages_round_trip(message: ServiceMessage) -> None:
    assert decode_service_message(encode(message)) == message


def test_unknown_fields_are_ignored() -> None:
    frames = [b"SL1", b"request", b'{"client":"a","req":1,"shard":2,"future":true}']
    assert decode_client_message(frames) == Request("a", 1, 2)


@pytest.mark.parametrize(
    "frames",
    [
        [b"SL2", b"request", b'{"client":"a","req":1,"shard":2}'],
        [b"SL1", b"request"],
        [b"SL1", b"request", b"{}", b"extra"],
        [b"SL1", b"nonsense", b'{"client":"a"}'],
        [b"SL1", b"request", b"not json"],
        [b"SL1", b"request", b"[1, 2]"],
        [b"SL1", b"request", b'{"client":"a","req":1,"shard":-1}'],
        [b"SL1", b"request", b'{"client":"a","req":1,"shard":true}'],
        [b"SL1", b"request", b'{"client":"a","req":1.0,"shard":2}'],
        [b"SL1", b"request", b'{"client":"","req":1,"shard":2}'],
        [b"SL1", b"request", b'{"client":"a b","req":1,"shard":2}'],
        [b"SL1", b"ping", b'{"client":"a","seq":9007199254740992}'],
        [b"SL1", b"configure", b'{"client":"a","max_concurrency":0}'],
        [b"SL1", b"configure", b'{"client":"a","reset_after":-1}'],
        [b"SL1", b"grant", b'{"req":1,"shard":2}'],  # a service kind from a client
        [b"SL1", b"ping", b'{"client":"a","seq":1,"clock":""}'],
        [b"SL1", b"ping", b'{"client":"a","seq":1,"clock":7}'],
        [b"SL1", b"release", b'{"client":"a","req":1,"sent_at":-0.5}'],
        [b"SL1", b"release", b'{"client":"a","req":1,"sent_at":"1.0"}'],
        [b"SL1", b"release", b'{"client":"a","req":1,"sent_at":true}'],
        [b"SL1", b"release", b'{"client":"a","req":1,"sent_at":1e999}'],
        [b"SL1", b"rejected", b'{"client":"a","req":1}'],
        [b"SL1", b"rejected", b'{"client":"a","shard":1}'],
        [b"SL1", b"rejected", b'{"client":"a","req":1,"shard":1,"after":-0.1}'],
        [b"SL1", b"rejected", b'{"client":"a","req":1,"shard":1,"after":"soon"}'],
        [b"SL1", b"rejected", b'{"req":1,"shard":1}'],
    ],
)
def test_malformed_client_messages_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode_client_message(frames)


@pytest.mark.parametrize("body", [b'{"req":1,"shard":2,"not_before":-1}',
                                  b'{"req":1,"shard":2,"not_before":"soon"}',
                                  b'{"req":1,"shard":2,"not_before":false}'])
def test_malformed_not_before_is_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_service_message([b"SL1", b"grant", body])


@given(st.lists(st.binary(max_size=64), max_size=4))
def test_any_bytes_decode_or_raise_protocol_error(frames: list[bytes]) -> None:
    for decode in (decode_client_message, decode_service_message):
        with contextlib.suppress(ProtocolError):
            decode(frames)


@given(
    kind=st.sampled_from([b"ping", b"request", b"cancel", b"release", b"rejected", b"configure",
                          b"grant", b"pong", b"probe"]),
    body=st.dictionaries(
        st.sampled_from(["client", "req", "shard", "seq", "queued", "remaining", "total",
                         "max_concurrency", "reset_after", "clock", "sent_at", "not_before",
                         "after"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                  st.text(max_size=70), st.lists(st.integers(), max_size=3)),
    ),
)
def test_any_json_body_decodes_or_raises_protocol_error(
    kind: bytes, body: dict[str, object]
) -> None:
    import json

    frames = [b"SL1", kind, json.dumps(body).encode()]
    for decode in (decode_client_message, decode_service_message):
        with contextlib.suppress(ProtocolError):
            decode(frames)
