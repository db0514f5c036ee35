"""In-process event listeners of the supervisor: ``sup.events(...)`` and ``output=``.

Fed from the forwarder's batch hook, which runs on the bus's hot path: delivery never
blocks (each listener has a bounded buffer; a listener that falls behind loses events, which
are counted in :attr:`EventFanout.drops`), and the hook is installed only while someone
listens, so a supervisor without listeners decodes no events at all.

A graceful stop gives ``output`` what it had already received (:meth:`EventFanout.drain_output`,
bounded) and learns which events it never got, so their seqs are not saved as forwarded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from shardctl.ipc.events import Event

log = logging.getLogger(__name__)

#: Events a listener may fall behind by before it loses some.
LISTENER_BUFFER: Final = 10_000
#: Seconds an ``output`` cut off at the end of a stop's drain has to return.
_CANCEL_GRACE: Final = 1.0

Output = Callable[[Event], Any]
BatchHook = Callable[[Sequence[Event]], None]


class EventFanout:
    def __init__(self, install: Callable[[BatchHook | None], None]) -> None:
        #: called with the batch hook when the first listener comes, None when the last goes
        self._install = install
        self._listeners: list[tuple[frozenset[str] | None, MemoryObjectSendStream[Event]]] = []
        #: events a listener lost because its buffer was full
        self.drops = 0
        #: the ``output`` feed: its queue's sending end, its loop, and its end (set by feed())
        self._output_queue: MemoryObjectSendStream[Event] | None = None
        self._feeding: anyio.CancelScope | None = None
        self._fed: anyio.Event | None = None
        #: what ``output`` never got, in order, once its feed ended (drain_output())
        self.undelivered: list[Event] = []

    def on_batch(self, events: Sequence[Event]) -> None:
        for types, stream in self._listeners:
            for event in events:
                if types is None or event.type in types:
                    try:
                        stream.send_nowait(event)
                    except anyio.WouldBlock:
                        self.drops += 1
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break

    @contextlib.asynccontextmanager
    async def listen(self, types: frozenset[str] | None) -> AsyncIterator[AsyncIterator[Event]]:
        async with self._listener(types) as (_, receive):
            yield receive

    @contextlib.asynccontextmanager
    async def _listener(self, types: frozenset[str] | None) -> AsyncIterator[
            tuple[MemoryObjectSendStream[Event], MemoryObjectReceiveStream[Event]]]:
        send, receive = anyio.create_memory_object_stream[Event](LISTENER_BUFFER)
        entry = (types, send)
        self._listeners.append(entry)
        self._install(self.on_batch)
        try:
            async with receive:
                yield send, receive
        finally:
            self._listeners.remove(entry)
            send.close()
            if not self._listeners:
                self._install(None)

    async def events(self, *types: str) -> AsyncIterator[Event]:
        async with self.listen(frozenset(types) if types else None) as stream:
            async for event in stream:
                yield event

    async def feed(self, output: Output, *,
                   task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Call ``output`` (sync or async) with every event, in order, until cancelled or
        :meth:`drain_output`."""
        async with self._listener(None) as (queue, stream):
            self._output_queue, self._fed = queue, anyio.Event()
            current: Event | None = None
            try:
                with anyio.CancelScope() as self._feeding:
                    task_status.started()
                    async for event in stream:
                        current = event
                        await _call(output, event)
                        current = None
            finally:
                # What output never got: the event it was cut off in, then the queue's rest.
                left = [] if current is None else [current]
                with contextlib.suppress(anyio.WouldBlock, anyio.EndOfStream,
                                         anyio.ClosedResourceError):
                    while True:
                        left.append(stream.receive_nowait())
                self.undelivered = left
                self._fed.set()

    async def drain_output(self, bound: float) -> list[Event]:
        """End the ``output`` feed once it has taken what it already received, waiting at
        most ``bound`` seconds; returns what it did not get (in order), so a stop saves
        no seq it did not deliver.  No feed: nothing."""
        queue, fed, feeding = self._output_queue, self._fed, self._feeding
        if queue is None or fed is None or feeding is None:
            return []
        queue.close()  # nothing new; the feed ends when its queue is empty
        with anyio.move_on_after(bound):
            await fed.wait()
        if not fed.is_set():
            feeding.cancel()
            # An async output that shields itself from the cancel still gets no more time.
            with anyio.move_on_after(_CANCEL_GRACE):
                await fed.wait()
            if not fed.is_set():
                log.error("supervisor: the output callback ignored the end of the stop's "
                          "drain; what it had not taken yet is not known")
                return []
        return self.undelivered

    def close(self) -> None:
        for _, stream in self._listeners:
            stream.close()


async def _call(output: Output, event: Event) -> None:
    try:
        result = output(event)
        if hasattr(result, "__await__"):
            await result
    except Exception:
        log.exception("supervisor: the output callback failed on %s", event.type)
