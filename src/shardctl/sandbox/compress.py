"""Server-side compression of what the sandbox sends (protocol §8).

- zlib-stream: one ``compressobj`` per connection, ``Z_SYNC_FLUSH`` per payload, so only the
  first message carries the ``78 9c`` header and every payload ends ``00 00 ff ff``.
  ``split > 1`` spreads one payload over several messages (only the last has the suffix).
- zstd-stream: one compressor per connection, ``COMPRESSOBJ_FLUSH_BLOCK`` per payload, the
  frame is never ended; one message per payload.
- payload compression (IDENTIFY ``compress: true`` without a ``compress=`` query): big
  payloads become standalone zlib streams sent as binary; the rest stays text.
"""

from __future__ import annotations

import zlib
from typing import Final, Protocol

#: Z_SYNC_FLUSH marker that ends every zlib-stream payload (§8).
ZLIB_SUFFIX: Final = b"\x00\x00\xff\xff"
TRANSPORT_MODES: Final = frozenset({"zlib-stream", "zstd-stream"})


class Compressor(Protocol):
    def compress(self, payload: bytes) -> list[bytes]:
        """The binary WebSocket messages carrying ``payload``."""
        ...


class ZlibStreamCompressor:
    __slots__ = ("_c", "_split")

    def __init__(self, split: int = 1) -> None:
        self._c = zlib.compressobj()
        self._split = split

    def compress(self, payload: bytes) -> list[bytes]:
        data = self._c.compress(payload) + self._c.flush(zlib.Z_SYNC_FLUSH)
        if self._split <= 1 or len(data) <= 4 + self._split:
            return [data]
        # Cut before the suffix so only the last message ends with 00 00 ff ff.
        body, tail = data[:-4], data[-4:]
        step = max(1, len(body) // self._split)
        parts = [body[i:i + step] for i in range(0, len(body), step)]
        parts[-1] += tail
        return [p for p in parts if p]


class ZstdStreamCompressor:
    __slots__ = ("_c", "_flush")

    def __init__(self, level: int = 1) -> None:
        import zstandard

        self._c = zstandard.ZstdCompressor(level=level).compressobj()
        self._flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def compress(self, payload: bytes) -> list[bytes]:
        out: bytes = self._c.compress(payload) + self._c.flush(self._flush)
        return [out]


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def new_compressor(mode: str | None, *, split: int = 1, zstd_level: int = 1
                   ) -> Compressor | None:
    """A fresh per-connection compressor for the ``compress=`` query value (None: none)."""
    if mode is None:
        return None
    if mode == "zlib-stream":
        return ZlibStreamCompressor(split)
    if mode == "zstd-stream":
        return ZstdStreamCompressor(zstd_level)
    raise ValueError(f"unsupported compression {mode!r}")


def compress_payload(payload: bytes) -> bytes:
    """Payload compression: a complete RFC 1950 stream, no context shared with others."""
    return zlib.compress(payload)
