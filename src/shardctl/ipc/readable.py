"""Waiting for input on a sync ZeroMQ socket at the cost of one future per wait.

pyzmq's asyncio ``poll`` registers the socket's FD with the event loop and removes it again
on every call (two ``epoll_ctl`` calls, a timer and several futures): at one event per
wake-up, as on a lightly loaded bus, that costs more than the event.  :class:`Readable`
registers the FD once for the socket's life.

ZeroMQ's FD is a signal, not the data: it becomes readable when the socket's state may have
changed, and stays so until ``ZMQ_EVENTS`` is read.  So the reader callback reads
``ZMQ_EVENTS`` (which also clears the signal: the loop does not spin) and wakes the waiter
only on ``POLLIN``; :meth:`Readable.wait` checks ``ZMQ_EVENTS`` before it sleeps, so an
edge consumed by a ``recv`` elsewhere is never waited for.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import zmq


class Readable:
    """``async with Readable(sock) as readable: await readable.wait(timeout)``.

    Asyncio only (anyio runs on asyncio here).  Leave the context before closing the socket.
    """

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> Readable:
        self.start()
        return self

    def start(self) -> None:
        """Register the FD with the running loop (``async with`` does this)."""
        self._loop = asyncio.get_running_loop()
        self._fd = int(self._sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._signalled)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._fd = None
        self._wake()

    def ready(self) -> bool:
        """Whether a ``recv(NOBLOCK)`` would return a message now."""
        try:
            return bool(int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
        except zmq.ZMQError:
            return True  # closed or broken: let the caller's recv say so

    async def wait(self, recheck: float) -> None:
        """Return when the socket has input, or within ``recheck`` seconds (a safety net)."""
        if self.ready() or self._fd is None:
            await anyio.lowlevel.checkpoint()
            return
        loop = self._loop
        assert loop is not None
        waiter = self._waiter = loop.create_future()
        # One safety-net timer at a time, kept across waits rather than made and cancelled
        # by each: this runs once per wake-up on the bus's hot path.  So a wait may end
        # before ``recheck`` (the caller re-checks the socket anyway), never much after.
        if self._timer is None:
            self._timer = loop.call_later(recheck, self._recheck)
        try:
            await waiter
        finally:
            self._waiter = None

    def _recheck(self) -> None:
        self._timer = None
        self._wake()

    def _signalled(self) -> None:
        if self.ready():
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
