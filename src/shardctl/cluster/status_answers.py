"""Answers to ``status`` requests, built off the supervisor's event loop.

At 10,000 shards a ``status`` body takes tens of milliseconds to build and encode, and the
loop also forwards events, checks liveness and paces IDENTIFYs.  So the control loop only
schedules an answer: a task copies what the reply says (cluster/status_report.py's
:class:`StatusSnapshot`), a worker thread builds and encodes it, and the loop sends the
encoded parts with the control channel's non-blocking send.  One answer is built at a time
(each copy is taken when its turn comes, so waiting costs no memory), and at most
:data:`MAX_WAITING` wait: beyond that a request is dropped and counted, as a reply to a
peer that does not read would be.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import anyio
import anyio.abc
import anyio.to_thread

from shardctl.cluster.status_report import StatusSnapshot
from shardctl.errors import ProtocolError
from shardctl.ipc.control import ControlServer

log = logging.getLogger(__name__)

#: Status answers waiting for their turn; a request beyond them is dropped (the per-peer
#: budget of cluster/peers.py already bounds each asker; this bounds them all together).
MAX_WAITING: Final = 64


class StatusAnswers:
    """``answer(tg, control, peer, full=...)`` from the control loop; never waits."""

    def __init__(self, snapshot: Callable[[bool], StatusSnapshot]) -> None:
        #: called on the loop with ``full``: what the reply to that kind of peer says
        self._snapshot = snapshot
        #: one render at a time (made on the loop: anyio before 4.5 cannot make it outside)
        self._renders: anyio.CapacityLimiter | None = None
        self._waiting = 0
        #: requests dropped because :data:`MAX_WAITING` answers were waiting already
        self.dropped = 0

    def answer(self, tg: anyio.abc.TaskGroup, control: ControlServer, peer: bytes, *,
               full: bool) -> None:
        if self._waiting >= MAX_WAITING:
            self.dropped += 1
            return
        self._waiting += 1
        if self._renders is None:
            self._renders = anyio.CapacityLimiter(1)
        tg.start_soon(self._answer, control, peer, full, self._renders)

    async def _answer(self, control: ControlServer, peer: bytes, full: bool,
                      renders: anyio.CapacityLimiter) -> None:
        try:
            async with renders:
                snapshot = self._snapshot(full)
                frames = await anyio.to_thread.run_sync(snapshot.frames)
        except ProtocolError as exc:  # a body over MAX_MESSAGE_BYTES
            log.warning("supervisor: cannot answer a status request: %s", exc)
            return
        finally:
            self._waiting -= 1
        control.send_parts(peer, "status", frames)
