"""Server compressors decode with the client-side recipes of protocol §8."""

from __future__ import annotations

import zlib

import zstandard
from hypothesis import given
from hypothesis import strategies as st

from shardctl.sandbox.compress import (
    ZLIB_SUFFIX,
    ZlibStreamCompressor,
    ZstdStreamCompressor,
    compress_payload,
)

payloads = st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8)


@given(payloads, st.integers(min_value=1, max_value=5))
def test_zlib_stream_round_trips_with_one_inflater_and_suffix_buffering(
        items: list[bytes], split: int) -> None:
    c = ZlibStreamCompressor(split)
    z, buf, out = zlib.decompressobj(), bytearray(), []
    for item in items:
        messages = c.compress(item)
        assert messages[-1].endswith(ZLIB_SUFFIX)
        assert not any(m.endswith(ZLIB_SUFFIX) for m in messages[:-1])
        for m in messages:
            buf += m
            if buf[-4:] == ZLIB_SUFFIX:
                out.append(z.decompress(bytes(buf)))
                buf.clear()
    assert out == items


def test_zlib_stream_only_first_message_has_header_so_per_message_inflate_fails() -> None:
    c = ZlibStreamCompressor()
    first, second = c.compress(b'{"op":10}')[0], c.compress(b'{"op":11}')[0]
    assert first[:2] == b"\x78\x9c" and second[:2] != b"\x78\x9c"
    try:
        zlib.decompressobj().decompress(second)
    except zlib.error:
        pass
    else:  # pragma: no cover - would mean the stream is not shared
        raise AssertionError("a fresh inflater decoded message 2")


@given(payloads)
def test_zstd_stream_round_trips_with_one_decompressor(items: list[bytes]) -> None:
    c = ZstdStreamCompressor()
    d = zstandard.ZstdDecompressor().decompressobj()
    messages = [c.compress(i) for i in items]
    assert messages[0][0][:4] == b"\x28\xb5\x2f\xfd"
    assert [d.decompress(m[0]) for m in messages] == items


def test_payload_compression_is_a_standalone_zlib_stream() -> None:
    assert zlib.decompress(compress_payload(b"x" * 2000)) == b"x" * 2000
