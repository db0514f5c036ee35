"""``Consumer``: subscribe to the supervisor's event bus from any process.

::

    async with Consumer("ipc:///run/shardctl/events.sock", types=["MESSAGE_CREATE"]) as bus:
        async for event in bus:
            handle(event.shard, event.d)

Events arrive in the order the supervisor forwarded them.  The consumer drains its socket
with non-blocking calls and hands out events from a local queue, so the per-event cost is a
``recv`` and a header unpack, not an ``await`` on the socket (DESIGN.md §3).

Gap detection (a :class:`Gap` is logged, appended to ``gaps``, counted in ``missed`` and
passed to ``on_gap``; the iteration itself never stops for one):

- ``bus`` gaps: the supervisor numbers events per (type, shard) in ``bus_seq``, so ANY
  subscriber, whatever its type filter, sees what it lost between the supervisor and itself
  (a full pipe with ``nodrop=False``, a reconnect).  A new supervisor ``epoch`` restarts
  the numbering and is not a gap.
- ``gateway`` gaps: a consumer that receives every type (``types=None``) also checks the
  gateway ``s`` per shard, which catches loss anywhere between Discord and itself, across
  supervisor restarts too.  READY starts a new session at ``s = 1`` (no gap); an ``s`` that
  goes backwards is logged and followed, never dropped.  In this mode lifecycle events,
  which have no ``s``, are still checked by ``bus_seq``; dispatches are not checked twice.

Replays: after a supervisor crash the shards RESUME from the last checkpointed seq, and
Discord replays what followed, some of which this consumer already got.  A consumer that
receives READY (``types`` None or naming it) keeps the highest ``s`` per shard in the
current session (READY starts one) and sets ``event.replayed`` on a dispatch at or below
it: (shard, session, seq) names an event once.  Without READY it cannot tell a new session
from a replay, and never sets the flag.

The first event of each (type, shard) or shard only sets the expectation: what happened
before a consumer connected is not a gap.  PUB/SUB cannot deliver what was sent before a
subscription reached the supervisor, so a consumer starts receiving a few milliseconds after
it connects.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import anyio.lowlevel
import zmq
import zmq.asyncio

from shardctl.errors import ProtocolError
from shardctl.ipc.events import (
    BUS_CLOSING_TYPE,
    CONSUMER_BATCH_MAX,
    NEW_SESSION_TYPE,
    Event,
    decode_batch,
    decode_event,
    subscription_prefix,
    type_bytes,
)
from shardctl.ipc.readable import Readable
from shardctl.ipc.security import CurveClient

log = logging.getLogger(__name__)

#: seconds between re-checks of the socket while waiting (a safety net, not the wake-up)
_RECHECK: Final = 1.0
_DRAIN_BUDGET: Final = 512


@dataclass(frozen=True, slots=True)
class Gap:
    """Events that should have arrived between two that did.

    ``kind`` "bus": ``expected``/``received`` are ``bus_seq`` values of ``type`` on
    ``shard``; "gateway": they are gateway ``s`` values of ``shard`` (``type`` is the type
    of the event that revealed the gap).
    """

    kind: Literal["bus", "gateway"]
    shard: int
    type: str
    expected: int
    received: int

    @property
    def missing(self) -> int:
        return self.received - self.expected


class Consumer:
    """An async iterator of :class:`~shardctl.ipc.events.Event` from an events endpoint.

    ``types``: exact event types to receive (None: all).  ``shards``: shard ids to keep
    (None: all); with ``types`` the filter runs in the supervisor, otherwise here.
    ``curve``: client keys for a supervisor that runs CURVE (:mod:`shardctl.ipc.security`);
    with an unauthorised key the handshake fails and nothing is ever received.

    ``batched``: ``endpoint`` is the supervisor's events-batch endpoint (README "Batched
    consumers"), where one message carries a whole worker batch: one receive per batch
    instead of one per event, the cheaper end for a busy consumer.  Every event reaches it
    (no filter in the supervisor), so ``types`` and ``shards`` are applied here; ``hwm``
    still counts events.
    """

    def __init__(self, endpoint: str, types: Iterable[str] | None = None,
                 shards: Iterable[int] | None = None, *,
                 context: zmq.Context[Any] | None = None, hwm: int = 100_000,
                 on_gap: Callable[[Gap], None] | None = None, keep_gaps: int = 1000,
                 curve: CurveClient | None = None, batched: bool = False) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self.types = None if types is None else frozenset(types)
        self.shards = None if shards is None else frozenset(shards)
        if self.types is not None and not self.types:
            raise ValueError("types=[] would receive nothing; pass None for every type")
        self.batched = batched
        #: the batch decoder's type filter (ASCII names; BUS_CLOSING padding never passes)
        self._type_names = (None if self.types is None or not batched
                            else frozenset(type_bytes(t) for t in self.types))
        self._prefixes = [b""] if batched else self._subscriptions()
        self._context = context
        self._hwm = hwm
        self.on_gap = on_gap
        #: the most recent gaps (bounded); ``missed`` counts every missing event
        self.gaps: deque[Gap] = deque(maxlen=keep_gaps)
        self.missed = 0
        #: messages that were not valid events (logged and skipped)
        self.malformed = 0
        self._check_gateway = self.types is None
        self._queue: deque[Event] = deque()
        self._sock: zmq.Socket[bytes] | None = None
        self._readable: Readable | None = None  # registered on the first wait
        #: events were drained since this task last let others run
        self._unyielded = False
        self._closed = False
        self._epoch: int | None = None
        self._next_bus: dict[tuple[str, int], int] = {}
        self._next_seq: dict[int, int] = {}
        #: highest gateway ``s`` per shard in its current session; only while READY is seen
        self._high_seq: dict[int, int] | None = (
            {} if self.types is None or NEW_SESSION_TYPE in self.types else None)

    def _subscriptions(self) -> list[bytes]:
        if self.types is None:
            return [b""]
        if self.shards is None:
            return [subscription_prefix(t) for t in sorted(self.types)]
        return [subscription_prefix(t, s) for t in sorted(self.types) for s in sorted(self.shards)]

    @property
    def subscriptions(self) -> list[bytes]:
        """The SUB prefixes this consumer holds (see :mod:`shardctl.ipc.events`)."""
        return list(self._prefixes)

    @property
    def pending(self) -> int:
        """Events already received and waiting to be iterated."""
        return len(self._queue)

    def open(self) -> None:
        """Connect and subscribe (iteration does this on first use)."""
        if self._sock is not None:
            return
        if self._closed:
            raise RuntimeError("consumer is closed")
        ctx: zmq.Context[Any] = zmq.Context.instance() if self._context is None \
            else zmq.Context.shadow(self._context.underlying)
        sock: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        try:
            sock.setsockopt(zmq.RCVHWM, max(1, self._hwm // CONSUMER_BATCH_MAX)
                            if self.batched else self._hwm)
            sock.setsockopt(zmq.LINGER, 0)
            for prefix in self._prefixes:
                sock.setsockopt(zmq.SUBSCRIBE, prefix)
            if self._curve is not None:
                self._curve.apply(sock)
            sock.connect(self.endpoint)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def close(self) -> None:
        self._closed = True
        if self._readable is not None:
            self._readable.close()
            self._readable = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Consumer:
        self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Event:
        queue = self._queue
        if queue:
            return queue.popleft()
        await self._fill()
        return queue.popleft()

    async def next_batch(self) -> list[Event]:
        """Every event received and not yet handed out (at least one; waits for it): one
        ``await`` for many events, where ``async for`` costs one per event.  Order, gaps
        and replay flags as with ``async for``; StopAsyncIteration once closed."""
        if not self._queue:
            await self._fill()
        events = list(self._queue)
        self._queue.clear()
        return events

    async def batches(self) -> AsyncIterator[list[Event]]:
        """``next_batch()`` until the consumer is closed: ``async for events in
        bus.batches()``."""
        while True:
            try:
                yield await self.next_batch()
            except StopAsyncIteration:
                return

    async def _fill(self) -> None:
        """Return once the queue holds an event; StopAsyncIteration once closed."""
        queue = self._queue
        while True:
            if self._closed:
                raise StopAsyncIteration
            self.open()
            if self._unyielded:
                # A busy bus must not starve the consumer's peers: yield once between two
                # drains.  When nothing is waiting the wait below is that yield, so a quiet
                # bus costs one loop pass per wake-up, not two.
                self._unyielded = False
                readable = self._readable
                if readable is None or readable.ready():
                    await anyio.lowlevel.checkpoint()
                    continue
            else:
                self._drain()
                if queue:
                    self._unyielded = True
                    return
            if self._readable is None:
                assert self._sock is not None
                self._readable = Readable(self._sock)
                self._readable.start()
            await self._readable.wait(_RECHECK)

    def _drain(self) -> None:
        """Take every message waiting now, up to a budget."""
        if self.batched:
            self._drain_batches()
            return
        sock = self._sock
        assert sock is not None
        shards = self.shards
        append = self._queue.append
        for _ in range(_DRAIN_BUDGET):
            try:
                message = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = decode_event(message)
            except ProtocolError as exc:
                self.malformed += 1
                log.warning("consumer %s: skipped a malformed event: %s", self.endpoint, exc)
                continue
            if (shards is not None and event.shard not in shards) or \
                    event.type == BUS_CLOSING_TYPE:  # padding at a stop, not an event
                continue
            self._check(event)
            append(event)

    def _drain_batches(self) -> None:
        """Events-batch: every batch waiting now, up to a budget of events."""
        sock = self._sock
        assert sock is not None
        shards, names, check = self.shards, self._type_names, self._check
        append = self._queue.append
        taken = 0
        while taken < _DRAIN_BUDGET:
            try:
                message = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                events = decode_batch(message, names)
            except ProtocolError as exc:
                self.malformed += 1
                log.warning("consumer %s: skipped a malformed batch: %s", self.endpoint, exc)
                continue
            taken += len(events) or 1
            for event in events:
                if (shards is not None and event.shard not in shards) or \
                        event.type == BUS_CLOSING_TYPE:  # padding at a stop, not an event
                    continue
                check(event)
                append(event)

    def _check(self, event: Event) -> None:
        """Update sequence expectations; report a gap when a number was skipped."""
        if event.epoch != self._epoch:
            if self._epoch is not None:
                log.info("consumer %s: supervisor epoch changed; bus_seq restarts",
                         self.endpoint)
            self._epoch = event.epoch
            self._next_bus.clear()
        if self._high_seq is not None and event.seq is not None:
            self._mark_replay(self._high_seq, event)
        key = (event.type, event.shard)
        expected = self._next_bus.get(key)
        self._next_bus[key] = event.bus_seq + 1
        seq = event.seq
        if self._check_gateway and seq is not None:
            expected_seq = self._next_seq.get(event.shard)
            self._next_seq[event.shard] = seq + 1
            if expected_seq is None or event.type == NEW_SESSION_TYPE or seq == expected_seq:
                return
            if seq > expected_seq:
                self._report(Gap("gateway", event.shard, event.type, expected_seq, seq))
            else:
                log.info("consumer %s: shard %d seq went back %d -> %d (replay?)",
                         self.endpoint, event.shard, expected_seq - 1, seq)
            return
        if expected is not None and event.bus_seq > expected:
            self._report(Gap("bus", event.shard, event.type, expected, event.bus_seq))

    @staticmethod
    def _mark_replay(high: dict[int, int], event: Event) -> None:
        seq = event.seq
        assert seq is not None
        if event.type == NEW_SESSION_TYPE:
            high[event.shard] = seq
            return
        top = high.get(event.shard)
        if top is not None and seq <= top:
            event.replayed = True
        else:
            high[event.shard] = seq

    def _report(self, gap: Gap) -> None:
        self.gaps.append(gap)
        self.missed += gap.missing
        log.warning("consumer %s: %s gap on shard %d (%s): expected %d, got %d (%d missing)",
                    self.endpoint, gap.kind, gap.shard, gap.type, gap.expected, gap.received,
                    gap.missing)
        if self.on_gap is not None:
            self.on_gap(gap)
