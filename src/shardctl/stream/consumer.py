"""``StreamConsumer``: the bot's events from the durable stream, at least once.

::

    async with StreamConsumer("nats://127.0.0.1:4222", durable="bot",
                              types=["MESSAGE_CREATE"]) as events:
        async for event in events:
            await handle(event)
            await events.ack(event)

The consumer is a JetStream durable pull consumer named ``durable``, created on first use
with explicit acknowledgement; the server remembers what it acknowledged, so a process that
restarts (a deploy, a crash) goes on where it left off, and whatever it took without
acknowledging comes again after ``ack_wait`` seconds (with ``event.replayed`` set: the
server counted more than one delivery).

Several processes with the same ``durable`` share its events (a work queue): each event
goes to one of them, and again to any of them if it is not acknowledged in time.  What a
group guarantees: every stored event of the filter is delivered until one process
acknowledges it; each process sees its share in stream order, apart from redeliveries; no
order holds between processes.  ``ordered=True`` allows one unacknowledged event per
durable at a time: stream order holds across the whole group, redeliveries included, and
since the stream keeps each shard's events in seq order, every shard's order holds too
(a consumer per shard set -- ``shards=[...]`` with its own ``durable`` -- runs those in
parallel).  It costs a round trip per event.

Where a new durable starts: ``start_time`` (a datetime or unix seconds) or ``start_seq``
(a stream sequence number) replays from there; by default it starts at the oldest event
the stream still holds.  They apply when the durable is created; an existing durable
keeps its position and its filter (delete it with ``nats consumer rm`` to start over).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from shardctl.errors import ConfigurationError, ProtocolError
from shardctl.ipc.events import Event, type_bytes
from shardctl.stream import _nats, subjects
from shardctl.stream.settings import (
    DEFAULT_NAME,
    DEFAULT_PREFIX,
    check_durable,
    check_name,
    check_prefix,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

#: Seconds one fetch waits for events before asking again.
_FETCH_WAIT: Final = 1.0


class StreamConsumer:
    """An async iterator of :class:`~shardctl.ipc.events.Event` from the stream; see the
    module docstring.  ``servers``: ``nats://HOST:PORT``, several comma-separated or a list.
    """

    def __init__(self, servers: str | Sequence[str], durable: str = "bot",
                 types: Iterable[str] | None = None, shards: Iterable[int] | None = None, *,
                 stream: str = DEFAULT_NAME, prefix: str = DEFAULT_PREFIX,
                 start_time: datetime.datetime | float | None = None,
                 start_seq: int | None = None, ordered: bool = False, ack_wait: float = 30.0,
                 batch: int = 256, max_ack_pending: int = 10_000) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.servers = [s.strip() for part in self.servers for s in part.split(",")]
        self.durable = check_durable(durable)
        self.stream = check_name(stream)
        self.prefix = check_prefix(prefix)
        self.types = None if types is None else sorted(set(types))
        for t in self.types or ():
            type_bytes(t)  # ValueError for a type no event can have
        if self.types is not None and not self.types:
            raise ValueError("types=[] would receive nothing; pass None for every type")
        self.shards = None if shards is None else sorted(set(shards))
        if start_time is not None and start_seq is not None:
            raise ConfigurationError("pass start_time or start_seq, not both")
        if isinstance(start_time, int | float):
            start_time = datetime.datetime.fromtimestamp(start_time, datetime.UTC)
        self.start_time = start_time
        self.start_seq = start_seq
        self.ordered = ordered
        self.ack_wait = ack_wait
        self.batch = 1 if ordered else batch
        self.max_ack_pending = 1 if ordered else max_ack_pending
        self._nc: Client | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._queue: deque[Msg] = deque()
        self._unacked: dict[int, tuple[Event, Msg]] = {}
        #: events delivered more than once (redelivered after a crash or a late ack)
        self.redelivered = 0
        #: messages that were not shardctl events (acknowledged and skipped, logged)
        self.malformed = 0

    @property
    def pending(self) -> int:
        """Events fetched and not yet handed out."""
        return len(self._queue)

    @property
    def unacked(self) -> int:
        """Events handed out and not yet acknowledged."""
        return len(self._unacked)

    async def __aenter__(self) -> StreamConsumer:
        nats = _nats.require()
        from nats.js import api

        async def error(exc: Exception) -> None:
            log.debug("stream consumer: NATS client error: %s", exc)

        async def disconnected() -> None:
            log.warning("stream consumer %s: disconnected from NATS; reconnecting",
                        self.durable)

        self._nc = await self._connect(nats, error, disconnected)
        filters = subjects.filter_subjects(self.prefix, self.types, self.shards)
        config = api.ConsumerConfig(
            ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending, filter_subjects=filters)
        if self.start_time is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = self.start_time
        elif self.start_seq is not None:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.start_seq
        try:
            self._sub = await self._subscribe(filters[0], config)
        except BaseException:
            await self._nc.close()
            raise
        return self

    async def _connect(self, nats: Any, error: Any, disconnected: Any) -> Client:
        """Connected, however long NATS takes to come up: a bot may start first (logged
        once, then retried)."""
        import anyio

        logged = False
        while True:
            try:
                nc: Client = await nats.connect(
                    servers=self.servers, name=f"shardctl {self.durable}",
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=error,
                    disconnected_cb=disconnected)
                return nc
            except Exception as exc:  # no server reachable yet: the same again, later
                if not logged:
                    log.warning("stream consumer %s: cannot reach NATS at %s (%s); retrying",
                                self.durable, ",".join(self.servers), exc)
                    logged = True
                await anyio.sleep(_FETCH_WAIT)

    async def _subscribe(self, first: str, config: Any) -> JetStreamContext.PullSubscription:
        """The pull subscription, once the stream exists: a bot may start before the
        supervisor has ever run (logged once, then waited for)."""
        import anyio
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import NotFoundError, ServiceUnavailableError

        assert self._nc is not None
        logged = False
        while True:
            try:
                return await self._nc.jetstream().pull_subscribe(
                    first, durable=self.durable, stream=self.stream, config=config)
            except NotFoundError:
                if not logged:
                    log.info("stream consumer: stream %s does not exist yet; waiting for "
                             "a supervisor to create it", self.stream)
                    logged = True
                await anyio.sleep(_FETCH_WAIT / 4)
            except (ServiceUnavailableError, NatsTimeout, TimeoutError) as exc:
                log.warning("stream consumer: JetStream not answering (%s); retrying", exc)
                await anyio.sleep(_FETCH_WAIT / 4)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        nc, self._nc, self._sub = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):  # a connection NATS already broke
                await nc.close()

    def __aiter__(self) -> StreamConsumer:
        return self

    async def __anext__(self) -> Event:
        while True:
            msg = await self._next_message()
            try:
                event = subjects.event_from(msg.headers, msg.data)
            except ProtocolError as exc:
                self.malformed += 1
                log.warning("stream consumer: skipped a message on %s: %s", msg.subject, exc)
                await msg.ack()
                continue
            if msg.metadata.num_delivered > 1:
                event.replayed = True
                self.redelivered += 1
            self._unacked[id(event)] = (event, msg)
            return event

    async def ack(self, event: Event) -> None:
        """Done with ``event``: the stream will not deliver it to this durable again."""
        _, msg = self._take(event)
        await msg.ack()

    async def nak(self, event: Event, delay: float | None = None) -> None:
        """Not done: deliver ``event`` again (after ``delay`` seconds), to any member."""
        _, msg = self._take(event)
        await msg.nak(delay=delay)

    def _take(self, event: Event) -> tuple[Event, Msg]:
        try:
            return self._unacked.pop(id(event))
        except KeyError:
            raise ValueError(f"{event!r} is not an unacknowledged event of this "
                             "consumer") from None

    async def _next_message(self) -> Msg:
        import anyio
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout

        sub = self._sub
        if sub is None:
            raise RuntimeError("use `async with StreamConsumer(...)` before iterating")
        failing = False
        while not self._queue:
            try:
                self._queue.extend(await sub.fetch(self.batch, timeout=_FETCH_WAIT))
            except (NatsTimeout, TimeoutError):
                continue
            except NatsError as exc:
                # a server lost, a leader being elected: the durable's state is on the
                # servers, so ask again once they answer
                if not failing:
                    log.warning("stream consumer %s: fetch failed (%s); retrying",
                                self.durable, exc)
                    failing = True
                await anyio.sleep(_FETCH_WAIT / 4)
        return self._queue.popleft()
