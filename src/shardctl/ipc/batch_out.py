"""Events-batch's sending side: worker batches as consumer batches, coalesced within a window.

The forwarder hands every worker batch it forwarded (stamped in place) to :class:`BatchOutlet`.
Without a window (``window=0``) each goes out at once as one message, the whole buffer when
nothing was dropped from it.  With a window, batches smaller than half a consumer batch wait
up to ``window`` seconds for others to join them (at most :data:`CONSUMER_BATCH_MAX` events
a message): at a steady load, where each worker batch holds one event, a consumer then pays
one receive and one wake-up per window instead of one per event, for at most ``window`` of
latency.  Larger batches never wait (a busy bus fills its messages anyway); the ones held
go first, so the order stays the forwarder's.

Every send goes through one lock, so the window's task and the forwarder's pump never
interleave or reorder messages, even while a full consumer pipe (XPUB_NODROP) holds a send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio

from shardctl.ipc.events import (
    BATCH_HEADER,
    BATCH_KEY_SIZE,
    CONSUMER_BATCH_MAX,
    CONSUMER_BATCH_VERSION,
    RECORD,
    consumer_batch,
)

#: A worker batch of at least this many events is sent at once, window or not.
_WHOLE: Final = CONSUMER_BATCH_MAX // 2

Send = Callable[[bytes | bytearray], Awaitable[None]]


def as_batch(message: bytes, tlen: int) -> bytes:
    """One consumer message (of a type ``tlen`` bytes long) as a consumer batch of one."""
    return consumer_batch([record_of(message, tlen)])


def record_of(message: bytes, tlen: int) -> bytes:
    """One consumer message as a batch record (session tag 0: not a worker's)."""
    return RECORD.pack(len(message), tlen, 0) + message


def kept_records(buf: bytearray, end: int, dropped: set[int]) -> list[memoryview]:
    """The records of a worker batch before ``end`` but the ``dropped`` ones."""
    mv, records, off = memoryview(buf), [], BATCH_HEADER.size
    while off < end:
        stop = off + RECORD.size + RECORD.unpack_from(buf, off)[0]
        if off not in dropped:
            records.append(mv[off:stop])
        off = stop
    return records


def chunks(records: Sequence[bytes | memoryview], worker: int = 0) -> list[bytes]:
    """Consumer batches of ``records``, at most CONSUMER_BATCH_MAX each."""
    return [consumer_batch(records[i:i + CONSUMER_BATCH_MAX], worker)
            for i in range(0, len(records), CONSUMER_BATCH_MAX)]


class _Lock:
    """An :class:`anyio.Lock` taken at once when it is free.

    anyio's ``acquire`` always passes through the event loop first.  At a steady load every
    worker batch holds one event, so that pass came once per event: it was half of the
    forwarder's own CPU per message (~10 µs of ~20, ``EventForwarder`` fed batches of one).
    Free means nobody waits for it either: a release hands the lock straight to a waiter.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = anyio.Lock()

    async def __aenter__(self) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


class BatchOutlet:
    """Turns forwarded worker batches into events-batch messages (module docstring).

    ``send`` puts one message on the socket, waiting while a consumer's pipe is full.  Run
    :meth:`run` in the forwarder's task group when ``window`` > 0 (it sends what waited a
    window); :meth:`take_held` hands a stopping forwarder what is still held.
    """

    def __init__(self, send: Send, *, window: float = 0.0) -> None:
        if not window >= 0:
            raise ValueError("the batching window must be a number of seconds >= 0")
        self.window = window
        self._send = send
        self._lock = _Lock()
        self._held: list[bytes | memoryview] = []
        self._waiting: anyio.Event | None = None
        #: messages sent, and events in them
        self.messages = 0
        self.events = 0

    @property
    def held(self) -> int:
        """Events waiting for the window."""
        return len(self._held)

    async def batch(self, buf: bytearray, end: int, count: int, dropped: set[int],
                    worker: int) -> None:
        """A forwarded worker batch: its records before ``end`` but the ``dropped`` ones."""
        whole = not dropped and end == len(buf) and 0 < count <= CONSUMER_BATCH_MAX
        if whole and (self.window <= 0 or count >= _WHOLE):
            buf[0] = CONSUMER_BATCH_VERSION  # the worker batch becomes the message
            buf[1] = 0  # reserved for consumers (a stamped batch's generation)
            buf[BATCH_HEADER.size - BATCH_KEY_SIZE:BATCH_HEADER.size] = bytes(BATCH_KEY_SIZE)
            async with self._lock:
                await self._flush()
                await self._put(buf)
            return
        records = kept_records(buf, end, dropped)
        if self.window <= 0:
            async with self._lock:
                for message in chunks(records, worker):
                    await self._put(message)
            return
        await self._hold(records)

    async def event(self, message: bytes, tlen: int) -> None:
        """One event of the supervisor's own: after everything held, or held with it."""
        if self.window <= 0:
            async with self._lock:
                await self._put(as_batch(message, tlen))
            return
        await self._hold([record_of(message, tlen)])

    def take_held(self) -> list[bytes]:
        """What the window still holds, as messages, given up by the outlet (a stop)."""
        held, self._held = self._held, []
        return chunks(held)

    async def run(self) -> None:
        """Send what was held, a window after the first of it arrived."""
        while True:
            if not self._held:
                waiting = self._waiting = anyio.Event()
                await waiting.wait()
            await anyio.sleep(self.window)
            async with self._lock:
                await self._flush()

    # -- internals ---------------------------------------------------------------------------

    async def _hold(self, records: Sequence[bytes | memoryview]) -> None:
        async with self._lock:
            for record in records:
                self._held.append(record)
                if len(self._held) >= CONSUMER_BATCH_MAX:
                    await self._flush()
        if self._held and self._waiting is not None:
            self._waiting.set()
            self._waiting = None

    async def _flush(self) -> None:
        """Send everything held (the caller holds the lock)."""
        while self._held:
            records = self._held[:CONSUMER_BATCH_MAX]
            del self._held[:CONSUMER_BATCH_MAX]
            await self._put(consumer_batch(records))

    async def _put(self, message: bytes | bytearray) -> None:
        await self._send(message)
        self.messages += 1
        self.events += BATCH_HEADER.unpack_from(message)[2]  # the frame's own count
