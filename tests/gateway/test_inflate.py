"""Transport decompression (protocol §8): streams, chunking, corrupt input, bombs."""

from __future__ import annotations

import itertools
import sys
import zlib

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.errors import ConfigurationError, ProtocolError
from shardctl.gateway import inflate
from shardctl.gateway.inflate import (
    MAX_PAYLOAD_SIZE,
    ZLIB_SUFFIX,
    ZlibStreamInflater,
    ZstdStreamInflater,
    new_inflater,
    zstd_available,
)

MIB = 1024 * 1024


class ZlibServer:
    """The sandbox's side of zlib-stream: one compressor, a sync flush per payload."""

    def __init__(self, level: int = -1) -> None:
        self._c = zlib.compressobj(level)

    def message(self, payload: bytes) -> bytes:
        return self._c.compress(payload) + self._c.flush(zlib.Z_SYNC_FLUSH)


class ZstdServer:
    """The sandbox's side of zstd-stream: one compressor, a block flush per payload."""

    def __init__(self, level: int = 3) -> None:
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def message(self, payload: bytes) -> bytes:
        return self._c.compress(payload) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def _payload(i: int) -> bytes:
    return b'{"op":0,"s":%d,"t":"MESSAGE_CREATE","d":{"content":"%s"}}' % (i, b"hi " * i)


def test_public_names_exist() -> None:
    for name in inflate.__all__:
        assert hasattr(inflate, name)
    assert MAX_PAYLOAD_SIZE == 64 * MIB


# -- zlib-stream ----------------------------------------------------------------------------


def test_zlib_one_message_per_payload_shares_one_context() -> None:
    server, client = ZlibServer(), ZlibStreamInflater()
    messages = [server.message(_payload(i)) for i in range(5)]
    assert messages[0][:2] == b"\x78\x9c"  # only the first message has the zlib header
    assert all(m.endswith(ZLIB_SUFFIX) for m in messages)
    assert [client.feed(m) for m in messages] == [_payload(i) for i in range(5)]


def test_zlib_a_per_message_inflater_fails_from_message_two() -> None:
    server = ZlibServer()
    server.message(_payload(1))
    with pytest.raises(ProtocolError, match="corrupt zlib-stream"):
        ZlibStreamInflater().feed(server.message(_payload(2)))


def test_zlib_payload_split_over_messages_is_buffered_until_the_suffix() -> None:
    server, client = ZlibServer(), ZlibStreamInflater()
    msg = server.message(_payload(50))
    # Split inside the suffix too: "... 00 00" then "ff ff".
    parts = [msg[:5], msg[5:-2], msg[-2:]]
    assert client.feed(parts[0]) is None
    assert client.feed(parts[1]) is None
    assert client.feed(parts[2]) == _payload(50)
    assert client.feed(server.message(b'{"op":11}')) == b'{"op":11}'


def test_zlib_empty_message_is_just_buffered() -> None:
    client = ZlibStreamInflater()
    assert client.feed(b"") is None
    assert client.feed(ZlibServer().message(b"{}")) == b"{}"


def _cuts(data: st.DataObject, message: bytes) -> list[bytes]:
    """Split one payload's message at arbitrary points (empty pieces allowed).

    A cut whose prefix already ends with 00 00 ff ff would, per the protocol's own rule, end
    the payload there, so Discord can never produce it; such cuts are dropped.
    """
    points = data.draw(st.lists(st.integers(0, len(message)), max_size=6))
    points = sorted(p for p in points if not message[:p].endswith(ZLIB_SUFFIX))
    bounds = [0, *points, len(message)]
    return [message[a:b] for a, b in itertools.pairwise(bounds)]


_payloads = st.lists(
    st.binary(min_size=1, max_size=3000)
    | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=20), st.integers(1, 300)),
    min_size=1, max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=_payloads, level=st.sampled_from([-1, 0, 1, 9]), data=st.data())
def test_zlib_any_chunking_decodes_to_exactly_the_same_payloads(
    payloads: list[bytes], level: int, data: st.DataObject
) -> None:
    server, client = ZlibServer(level), ZlibStreamInflater()
    decoded: list[bytes] = []
    for payload in payloads:
        pieces = _cuts(data, server.message(payload))
        outputs = [client.feed(piece) for piece in pieces]
        assert all(out is None for out in outputs[:-1])
        last = outputs[-1]
        assert last is not None
        decoded.append(last)
    assert decoded == payloads


@settings(max_examples=100, deadline=None)
@given(payloads=_payloads, data=st.data())
def test_zlib_chunking_across_payload_boundaries_loses_no_byte(
    payloads: list[bytes], data: st.DataObject
) -> None:
    server, client = ZlibServer(), ZlibStreamInflater()
    stream = b"".join(server.message(p) for p in payloads)
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *points, len(stream)]
    out = [client.feed(stream[a:b]) for a, b in itertools.pairwise(bounds)]
    assert b"".join(o for o in out if o is not None) == b"".join(payloads)


@pytest.mark.parametrize("garbage", [b"not zlib at all" + ZLIB_SUFFIX, b"\x78\x9c\xff\xff" * 3
                                     + ZLIB_SUFFIX, b"\x00" * 4 + ZLIB_SUFFIX])
def test_zlib_corrupt_stream_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError, match="corrupt zlib-stream"):
        ZlibStreamInflater().feed(garbage)


def test_zlib_corruption_after_good_messages_is_a_protocol_error() -> None:
    server, client = ZlibServer(), ZlibStreamInflater()
    assert client.feed(server.message(b'{"op":11}')) == b'{"op":11}'
    with pytest.raises(ProtocolError):
        client.feed(b"\xff" * 16 + ZLIB_SUFFIX)


def test_zlib_data_after_the_end_of_the_stream_is_a_protocol_error() -> None:
    client = ZlibStreamInflater()
    with pytest.raises(ProtocolError, match="end of the zlib stream"):
        client.feed(zlib.compress(b"{}") + b"junk" + ZLIB_SUFFIX)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.booleans())
def test_zlib_random_input_never_hangs_or_escapes(messages: list[bytes], suffix: bool) -> None:
    client = ZlibStreamInflater(max_size=MIB)
    try:
        for message in messages:
            out = client.feed(message + (ZLIB_SUFFIX if suffix else b""))
            assert out is None or len(out) <= MIB
    except ProtocolError:
        pass


def test_zlib_payload_of_exactly_max_size_passes_and_one_more_byte_fails() -> None:
    size = 256 * 1024
    ok = ZlibStreamInflater(max_size=size).feed(ZlibServer().message(b"a" * size))
    assert ok == b"a" * size
    with pytest.raises(ProtocolError, match="more than 262144 bytes"):
        ZlibStreamInflater(max_size=size).feed(ZlibServer().message(b"a" * (size + 1)))


def test_zlib_decompression_bomb_is_refused() -> None:
    bomb = ZlibServer(9).message(bytes(16 * MIB))
    assert len(bomb) < 32 * 1024
    with pytest.raises(ProtocolError, match="more than"):
        ZlibStreamInflater(max_size=MIB).feed(bomb)


def test_zlib_endless_message_without_suffix_is_refused() -> None:
    client = ZlibStreamInflater(max_size=1000)
    assert client.feed(b"\x01" * 600) is None
    with pytest.raises(ProtocolError, match="without a sync-flush suffix"):
        client.feed(b"\x01" * 600)
    with pytest.raises(ProtocolError, match="exceeds 1000 bytes"):
        ZlibStreamInflater(max_size=1000).feed(b"\x01" * 1001)


# -- zstd-stream ----------------------------------------------------------------------------


def test_zstd_one_message_per_payload_shares_one_context() -> None:
    server, client = ZstdServer(), ZstdStreamInflater()
    messages = [server.message(_payload(i)) for i in range(5)]
    assert messages[0][:4] == b"\x28\xb5\x2f\xfd"
    assert [client.feed(m) for m in messages] == [_payload(i) for i in range(5)]


def test_zstd_large_message_goes_through_the_sliced_path() -> None:
    # A 1 MiB cap means 64-byte input slices; this message is much longer than that.
    payload = bytes(range(256)) * 2000 + b"tail"
    server, client = ZstdServer(), ZstdStreamInflater(max_size=MIB)
    message = server.message(payload)
    assert len(message) > 64
    assert client.feed(message) == payload
    assert client.feed(server.message(b"{}")) == b"{}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=_payloads, level=st.sampled_from([1, 3, 9]),
       max_size=st.sampled_from([MIB, MAX_PAYLOAD_SIZE]))
def test_zstd_one_message_per_payload_decodes_exactly(
    payloads: list[bytes], level: int, max_size: int
) -> None:
    server, client = ZstdServer(level), ZstdStreamInflater(max_size=max_size)
    assert [client.feed(server.message(p)) for p in payloads] == payloads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=_payloads, data=st.data())
def test_zstd_any_chunking_decodes_to_exactly_the_same_payloads(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """Each payload's message cut anywhere: the pieces' outputs join back to the payload."""
    server, client = ZstdServer(), ZstdStreamInflater(max_size=MIB)
    decoded = []
    for payload in payloads:
        message = server.message(payload)
        points = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
        bounds = [0, *points, len(message)]
        decoded.append(b"".join(client.feed(message[a:b])
                                for a, b in itertools.pairwise(bounds)))
    assert decoded == payloads


@settings(max_examples=100, deadline=None)
@given(payloads=_payloads, data=st.data())
def test_zstd_chunking_across_payload_boundaries_loses_no_byte(
    payloads: list[bytes], data: st.DataObject
) -> None:
    server, client = ZstdServer(), ZstdStreamInflater()
    stream = b"".join(server.message(p) for p in payloads)
    points = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *points, len(stream)]
    out = b"".join(client.feed(stream[a:b]) for a, b in itertools.pairwise(bounds))
    assert out == b"".join(payloads)


@pytest.mark.parametrize("garbage", [b"not zstd at all", b"\x28\xb5\x2f\xfd" + b"\xff" * 20])
def test_zstd_corrupt_stream_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError, match="corrupt zstd-stream"):
        ZstdStreamInflater().feed(garbage)


def test_zstd_corruption_after_good_messages_is_a_protocol_error() -> None:
    server, client = ZstdServer(), ZstdStreamInflater()
    assert client.feed(server.message(b'{"op":11}')) == b'{"op":11}'
    with pytest.raises(ProtocolError, match="corrupt zstd-stream"):
        client.feed(b"\xff" * 32)


def test_zstd_closed_frame_is_a_protocol_error() -> None:
    # Discord never ends the frame; a context that saw the end cannot decode what follows.
    with pytest.raises(ProtocolError, match="frame ended"):
        ZstdStreamInflater().feed(zstandard.ZstdCompressor().compress(b"{}"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5))
def test_zstd_random_input_never_hangs_or_escapes(messages: list[bytes]) -> None:
    client = ZstdStreamInflater(max_size=MIB)
    try:
        for message in messages:
            assert len(client.feed(message)) <= MIB
    except ProtocolError:
        pass


@pytest.mark.parametrize("sliced", [False, True])
def test_zstd_payload_of_exactly_max_size_passes_and_one_more_byte_fails(sliced: bool) -> None:
    size = 256 * 1024
    # Random-ish data does not compress, so the message is long enough for the sliced path;
    # zeros compress to a handful of bytes and take the single-call path.
    unit = bytes(range(256)) if sliced else b"\x00"
    payload = (unit * (size // len(unit) + 1))[:size]
    message = ZstdServer(level=1).message(payload)
    assert (len(message) > 64) is sliced
    assert ZstdStreamInflater(max_size=size).feed(message) == payload
    bigger = ZstdServer(level=1).message(payload + b"x")
    with pytest.raises(ProtocolError, match="more than 262144 bytes"):
        ZstdStreamInflater(max_size=size).feed(bigger)


def test_zstd_decompression_bomb_is_refused() -> None:
    bomb = ZstdServer(19).message(bytes(64 * MIB))
    assert len(bomb) < 64 * 1024
    with pytest.raises(ProtocolError, match="more than"):
        ZstdStreamInflater(max_size=MIB).feed(bomb)


# -- choosing an inflater -------------------------------------------------------------------


def test_new_inflater_modes() -> None:
    assert new_inflater(None) is None
    assert isinstance(new_inflater("zlib-stream"), ZlibStreamInflater)
    assert isinstance(new_inflater("zstd-stream"), ZstdStreamInflater)
    with pytest.raises(ConfigurationError, match="unknown transport compression"):
        new_inflater("gzip")


def test_new_inflater_gives_every_connection_a_fresh_context() -> None:
    first, second = new_inflater("zlib-stream"), new_inflater("zlib-stream")
    assert first is not second
    server = ZlibServer()
    assert first is not None and second is not None
    assert first.feed(server.message(b"{}")) == b"{}"
    # A resume opens a new connection whose stream starts over with a header.
    assert second.feed(ZlibServer().message(b"[]")) == b"[]"


def test_missing_zstandard_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert zstd_available()
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    assert not zstd_available()
    with pytest.raises(ConfigurationError, match=r"shardctl\[zstd\]"):
        new_inflater("zstd-stream")
    assert isinstance(new_inflater("zlib-stream"), ZlibStreamInflater)


def _zstd_message(payload: bytes, window_log: int) -> bytes:
    """A zstd-stream message from a server that chose this window (2**window_log bytes)."""
    params = zstandard.ZstdCompressionParameters(window_log=window_log)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return c.compress(payload) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)


def test_zstd_a_frame_asking_for_a_128_mib_window_is_refused() -> None:
    # libzstd would otherwise allocate the window the header asks for, per connection.
    message = _zstd_message(b'{"op":10}', 27)
    assert zstandard.get_frame_parameters(message).window_size == 128 * MIB
    with pytest.raises(ProtocolError, match=r"window of 128 MiB.*at most 8 MiB"):
        ZstdStreamInflater().feed(message)


def test_zstd_a_single_segment_header_declaring_a_huge_content_size_is_refused() -> None:
    # Single_Segment_flag: the window is the declared content size (here 1 GiB).
    header = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (1 << 30).to_bytes(8, "little")
    with pytest.raises(ProtocolError, match="window"):
        ZstdStreamInflater().feed(header + b"\x01\x00\x00")


@pytest.mark.parametrize("window_log", [10, 17, 21, 23])
def test_zstd_windows_up_to_the_8_mib_cap_decode(window_log: int) -> None:
    # zstd's levels 1-19 choose at most 8 MiB (2**23); Discord's tuned streams fit.
    payloads = [_payload(i) for i in range(3)]
    params = zstandard.ZstdCompressionParameters(window_log=window_log)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    client = ZstdStreamInflater()
    for p in payloads:
        assert client.feed(c.compress(p) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)) == p
    assert inflate.MAX_ZSTD_WINDOW == 8 * MIB


def test_zlib_stream_memory_is_bounded_per_message_and_per_connection() -> None:
    # zlib's window is fixed (32 KiB); what a peer controls is the output per payload
    # (max_size) and the buffered input before a suffix (max_size): both refused past it.
    bomb = ZlibServer(9).message(bytes(8 * MIB))
    with pytest.raises(ProtocolError, match="more than"):
        ZlibStreamInflater(max_size=MIB).feed(bomb)
    client = ZlibStreamInflater(max_size=MIB)
    with pytest.raises(ProtocolError, match="without a sync-flush suffix"):
        for _ in range(MIB // 4096 + 2):
            client.feed(b"\x01" * 4096)
