"""In-process event listeners of the supervisor: ``sup.events(...)`` and ``output=``.

Fed from the forwarder's batch hook, which runs on the bus's hot path: delivery never
blocks (each listener has a bounded buffer; a listener that falls behind loses events, which
are counted in :attr:`EventFanout.drops`), and the hook is installed only while someone
listens, so a supervisor without listeners decodes no events at all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectSendStream

from shardctl.ipc.events import Event

log = logging.getLogger(__name__)

#: Events a listener may fall behind by before it loses some.
LISTENER_BUFFER: Final = 10_000

Output = Callable[[Event], Any]
BatchHook = Callable[[Sequence[Event]], None]


class EventFanout:
    def __init__(self, install: Callable[[BatchHook | None], None]) -> None:
        #: called with the batch hook when the first listener comes, None when the last goes
        self._install = install
        self._listeners: list[tuple[frozenset[str] | None, MemoryObjectSendStream[Event]]] = []
        #: events a listener lost because its buffer was full
        self.drops = 0

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
        send, receive = anyio.create_memory_object_stream[Event](LISTENER_BUFFER)
        entry = (types, send)
        self._listeners.append(entry)
        self._install(self.on_batch)
        try:
            async with receive:
                yield receive
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
        """Call ``output`` (sync or async) with every event, in order, until cancelled."""
        async with self.listen(None) as stream:
            task_status.started()
            async for event in stream:
                try:
                    result = output(event)
                    if hasattr(result, "__await__"):
                        await result
                except Exception:
                    log.exception("supervisor: the output callback failed on %s", event.type)

    def close(self) -> None:
        for _, stream in self._listeners:
            stream.close()
