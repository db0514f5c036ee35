"""Transport decompression: turn received WebSocket messages into gateway payloads (§8).

This is the hot path (every event passes through once), so the common case -- one message
holding one whole payload -- costs one decompress call and no copies.  Both inflaters keep
one decompression context for the life of a connection: Discord compresses the whole
connection as a single stream, so a new connection (a resume included) needs a new instance.

Safety: the server controls the input, so a corrupt stream raises
:class:`~shardctl.errors.ProtocolError` (drop the connection, the instance is unusable), and
one payload may not decompress to more than ``max_size`` bytes (a decompression bomb would
otherwise take the worker's memory).  What a connection holds between payloads is bounded
too: zlib's window is fixed at 32 KiB and its unfinished input at ``max_size``; a zstd frame
header chooses its own window, so one larger than :data:`MAX_ZSTD_WINDOW` is refused
before libzstd allocates it.

Payload compression (IDENTIFY ``compress: true``) is never requested -- transport compression
supersedes it (§8) -- so it has no inflater here.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from shardctl.errors import ConfigurationError, ProtocolError

__all__ = [
    "MAX_PAYLOAD_SIZE",
    "MAX_ZSTD_WINDOW",
    "ZLIB_SUFFIX",
    "ZlibStreamInflater",
    "ZstdStreamInflater",
    "new_inflater",
    "zstd_available",
]

#: Z_SYNC_FLUSH marker: a zlib-stream payload is complete once the buffer ends with it (§8).
ZLIB_SUFFIX: Final = b"\x00\x00\xff\xff"
#: Largest decompressed payload we accept.  Real READY/GUILD_CREATE payloads are a few MiB.
MAX_PAYLOAD_SIZE: Final = 64 * 1024 * 1024
#: A zstd block decodes to at most 128 KiB (the format's Block_Maximum_Size) and takes at
#: least 4 input bytes (3-byte header + 1), which bounds how much one input slice can expand.
_ZSTD_MAX_BLOCK: Final = 128 * 1024
_ZSTD_MIN_BLOCK_INPUT: Final = 4
_ZSTD_EXTRA: Final = "shardctl[zstd]"
#: Largest zstd window a connection may ask for.  A frame header can ask for up to 128 MiB
#: (libzstd's default limit), held for the life of the connection, per shard.  8 MiB is what
#: zstd's levels 1-19 use at most, and the limit HTTP's zstd content coding sets (RFC 9659);
#: Discord tunes its windows down to keep one context per connection in memory.
MAX_ZSTD_WINDOW: Final = 8 * 1024 * 1024


class ZlibStreamInflater:
    """``compress=zlib-stream``: one zlib context per connection (§8).

    Messages are buffered until the buffer ends with ``00 00 ff ff``; a payload may span
    several messages, and only the last one carries the suffix.
    """

    __slots__ = ("_buffer", "_max_size", "_zlib")

    def __init__(self, *, max_size: int = MAX_PAYLOAD_SIZE) -> None:
        self._zlib = zlib.decompressobj()
        self._buffer = bytearray()
        self._max_size = max_size

    def feed(self, data: bytes) -> bytes | None:
        """Add one WebSocket message; return the payload it completes, or None while buffering."""
        chunk: bytes | bytearray
        if self._buffer:
            self._buffer += data
            if len(self._buffer) > self._max_size:
                raise ProtocolError(
                    f"zlib-stream payload exceeds {self._max_size} compressed bytes without "
                    "a sync-flush suffix"
                )
            if not self._buffer.endswith(ZLIB_SUFFIX):
                return None
            # Hand the buffer over instead of copying it.
            chunk, self._buffer = self._buffer, bytearray()
        elif data.endswith(ZLIB_SUFFIX):
            chunk = data  # the common case: one message is one payload, no copy at all
        else:
            if len(data) > self._max_size:
                raise ProtocolError(f"zlib-stream message exceeds {self._max_size} bytes")
            self._buffer += data
            return None
        zobj = self._zlib
        try:
            # max_length one past the cap: a full output buffer means "too big", anything
            # shorter means zlib stopped because the input ran out, so nothing is held back.
            out = zobj.decompress(chunk, self._max_size + 1)
        except zlib.error as exc:
            raise ProtocolError(f"corrupt zlib-stream data: {exc}") from None
        if len(out) > self._max_size:
            raise ProtocolError(
                f"zlib-stream payload decompresses to more than {self._max_size} bytes"
            )
        if zobj.unused_data:
            # Discord never ends the stream; data after its end would be silently lost.
            raise ProtocolError("data after the end of the zlib stream")
        return out


class ZstdStreamInflater:
    """``compress=zstd-stream``: one zstd context per connection, one message = one payload.

    The frame is never closed and there is no suffix (§8): feed each whole message.
    """

    __slots__ = ("_error", "_max_size", "_slice", "_zstd")

    def __init__(self, *, max_size: int = MAX_PAYLOAD_SIZE) -> None:
        zstandard = _import_zstandard()
        self._zstd: Any = zstandard.ZstdDecompressor(
            max_window_size=MAX_ZSTD_WINDOW).decompressobj()
        self._error: type[Exception] = zstandard.ZstdError
        self._max_size = max_size
        # python-zstandard's decompress() has no max_length, so larger messages are fed in
        # slices small enough that one slice cannot expand past max_size (plus two blocks).
        self._slice = max(64, _ZSTD_MIN_BLOCK_INPUT * (max_size // _ZSTD_MAX_BLOCK))

    def feed(self, data: bytes) -> bytes:
        """Decompress one WebSocket message into exactly one payload."""
        if len(data) > self._slice:
            return self._feed_sliced(data)
        # Inlined _decompress(): this branch is taken by nearly every event.
        zobj = self._zstd
        try:
            out: bytes = zobj.decompress(data)
        except self._error as exc:
            raise _zstd_error(exc, data) from None
        if zobj.eof:
            raise ProtocolError("the zstd-stream frame ended; Discord keeps it open")
        if len(out) > self._max_size:
            raise self._too_big()
        return out

    def _feed_sliced(self, data: bytes) -> bytes:
        view = memoryview(data)
        parts: list[bytes] = []
        total = 0
        step = self._slice
        for start in range(0, len(view), step):
            part = self._decompress(view[start:start + step])
            total += len(part)
            if total > self._max_size:
                raise self._too_big()
            if part:
                parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _decompress(self, data: bytes | memoryview) -> bytes:
        zobj = self._zstd
        try:
            out: bytes = zobj.decompress(data)
        except self._error as exc:
            raise _zstd_error(exc, data) from None
        if zobj.eof:
            # Discord never closes the frame; after its end the context cannot decode more.
            raise ProtocolError("the zstd-stream frame ended; Discord keeps it open")
        return out

    def _too_big(self) -> ProtocolError:
        return ProtocolError(
            f"zstd-stream payload decompresses to more than {self._max_size} bytes"
        )


def _zstd_error(exc: Exception, data: bytes | memoryview) -> ProtocolError:
    """Name the window when that is what libzstd refused (only a frame header asks)."""
    try:
        window = _import_zstandard().get_frame_parameters(bytes(data[:18])).window_size
    except Exception:  # not a frame header: plain corruption
        window = 0
    if window > MAX_ZSTD_WINDOW:
        return ProtocolError(
            f"the zstd-stream frame asks for a window of {window / 2**20:g} MiB; at most "
            f"{MAX_ZSTD_WINDOW // 2**20} MiB is accepted")
    return ProtocolError(f"corrupt zstd-stream data: {exc}")


def _import_zstandard() -> Any:
    """Import zstandard only when zstd-stream is asked for: it is an optional extra."""
    try:
        import zstandard
    except ImportError:
        raise ConfigurationError(
            "compress=zstd-stream needs the zstandard package: "
            f"pip install '{_ZSTD_EXTRA}' (or use zlib-stream)"
        ) from None
    return zstandard


def zstd_available() -> bool:
    """Whether zstd-stream can be used, for picking the best transport compression."""
    try:
        _import_zstandard()
    except ConfigurationError:
        return False
    return True


def new_inflater(mode: str | None, *, max_size: int = MAX_PAYLOAD_SIZE,
                 ) -> ZlibStreamInflater | ZstdStreamInflater | None:
    """A fresh inflater for one connection's ``compress=`` query value (None: no transport
    compression).  ConfigurationError for an unknown mode or a missing zstandard."""
    if mode is None:
        return None
    if mode == "zlib-stream":
        return ZlibStreamInflater(max_size=max_size)
    if mode == "zstd-stream":
        return ZstdStreamInflater(max_size=max_size)
    raise ConfigurationError(
        f"unknown transport compression {mode!r}; use 'zlib-stream', 'zstd-stream' or none"
    )

