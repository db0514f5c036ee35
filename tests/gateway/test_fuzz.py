"""Fuzzing the inbound decoders: no input makes them hang or raise anything but ProtocolError.

Every example also runs under a hypothesis deadline, and the module under a hard pytest
timeout, so a decoder that loops forever fails instead of stalling the suite.
"""

from __future__ import annotations

import random
import zlib
from datetime import timedelta

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.gateway.frames import Frame, read_frame
from shardctl.gateway.inflate import (
    ZLIB_SUFFIX,
    ZlibStreamInflater,
    ZstdStreamInflater,
    zstd_available,
)
from shardctl.gateway.machine import ShardMachine

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow])

messages = st.lists(st.binary(max_size=512), max_size=8)


def stream(payloads: list[bytes]) -> list[bytes]:
    """What Discord sends: one zlib context, a sync flush per payload."""
    z = zlib.compressobj()
    return [z.compress(p) + z.flush(zlib.Z_SYNC_FLUSH) for p in payloads]


def mutate(data: list[bytes], seed: int) -> list[bytes]:
    """Flip, cut or splice bytes of real compressed messages."""
    rng = random.Random(seed)
    out = [bytearray(m) for m in data]
    for _ in range(rng.randint(1, 4)):
        m = out[rng.randrange(len(out))]
        if not m:
            continue
        i = rng.randrange(len(m))
        choice = rng.random()
        if choice < 0.5:
            m[i] ^= 1 << rng.randrange(8)
        elif choice < 0.75:
            del m[i:i + rng.randint(1, 8)]
        else:
            m[i:i] = rng.randbytes(rng.randint(1, 8))
    return [bytes(m) for m in out]


def feed_all(inflater: ZlibStreamInflater | ZstdStreamInflater, data: list[bytes]) -> None:
    for message in data:
        try:
            out = inflater.feed(message)
        except ProtocolError:
            return  # the connection would be dropped here: nothing more is fed
        assert out is None or isinstance(out, bytes)


@FUZZ
@given(messages)
def test_zlib_stream_inflater_survives_any_bytes(data: list[bytes]) -> None:
    feed_all(ZlibStreamInflater(max_size=4096), data)


@FUZZ
@given(messages)
def test_zlib_stream_inflater_survives_any_bytes_ending_in_the_suffix(data: list[bytes]) -> None:
    feed_all(ZlibStreamInflater(max_size=4096), [m + ZLIB_SUFFIX for m in data])


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.integers(0, 2**32))
def test_zlib_stream_inflater_survives_corrupted_real_streams(payloads: list[bytes],
                                                              seed: int) -> None:
    feed_all(ZlibStreamInflater(max_size=4096), mutate(stream(payloads), seed))


@FUZZ
@given(st.integers(4097, 200_000))
def test_zlib_bombs_are_refused_not_inflated(size: int) -> None:
    inflater = ZlibStreamInflater(max_size=4096)
    with pytest.raises(ProtocolError, match="more than 4096"):
        inflater.feed(stream([b"\0" * size])[0])


needs_zstd = pytest.mark.skipif(not zstd_available(), reason="zstandard not installed")


@needs_zstd
@FUZZ
@given(messages)
def test_zstd_stream_inflater_survives_any_bytes(data: list[bytes]) -> None:
    feed_all(ZstdStreamInflater(max_size=4096), data)


@needs_zstd
@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.integers(0, 2**32))
def test_zstd_stream_inflater_survives_corrupted_real_streams(payloads: list[bytes],
                                                              seed: int) -> None:
    import zstandard

    c = zstandard.ZstdCompressor().compressobj()
    real = [c.compress(p) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for p in payloads]
    feed_all(ZstdStreamInflater(max_size=4096), mutate(real, seed))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
envelopes = st.fixed_dictionaries(
    {}, optional={"op": json_values | st.integers(-1, 12), "d": json_values,
                  "s": json_values | st.integers(-(2**63), 2**63 - 1),
                  "t": json_values | st.text(max_size=20)})


def check_read(payload: bytes | str) -> None:
    try:
        frame = read_frame(payload)
    except ProtocolError:
        return
    assert isinstance(frame, Frame) and type(frame.op) is int
    assert frame.s is None or type(frame.s) is int
    assert frame.t is None or type(frame.t) is str


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=512))
def test_envelope_reader_survives_any_bytes_or_text(payload: bytes | str) -> None:
    check_read(payload)


@FUZZ
@given(envelopes | json_values)
def test_envelope_reader_checks_every_field_of_any_json(value: object) -> None:
    check_read(orjson.dumps(value))


@FUZZ
@given(st.lists(st.binary(max_size=256) | st.text(max_size=256)
                | envelopes.map(orjson.dumps), max_size=10), st.booleans())
def test_the_machine_turns_any_garbage_into_actions_never_an_exception(
        messages: list[bytes | str], ready_first: bool) -> None:
    m = ShardMachine(shard_id=0, shard_count=1, token="t", intents=1, rng=random.Random(1),
                     compression="zlib-stream")
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    if ready_first:
        m.receive(orjson.dumps({"op": 10, "d": {"heartbeat_interval": 1000}}).decode(), 0.0)
        m.identify(0.0)
        m.receive(orjson.dumps({"op": 0, "s": 1, "t": "READY", "d": {
            "session_id": "s", "resume_gateway_url": "ws://r.example/"}}).decode(), 0.0)
        assert m.state.value == "ready"
    for i, message in enumerate(messages):
        assert isinstance(m.receive(message, float(i)), list)
        m.tick(float(i))
        if not m.socket_open:
            break
