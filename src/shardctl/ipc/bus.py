"""The event bus: workers' :class:`EventPublisher` → supervisor's :class:`EventForwarder`.

Wire formats live in :mod:`shardctl.ipc.events`; this module only moves bytes.

Costs drive the shape (DESIGN.md §3): an ``await`` per message costs 12-16 µs, a sync
non-blocking zmq call ~1-3 µs.  So both ends use plain sync sockets for every send and
receive (``NOBLOCK``) and wait for input through one persistent reader on the socket's FD
(:class:`~shardctl.ipc.readable.Readable`).  (A full XPUB cannot be awaited -- it always
reports POLLOUT -- so a refused send is retried after a short, growing sleep.)  The
publisher batches up to 64 events into one frame: a batch goes when full or once the event
loop has run everything that was ready with its first event (``max_delay=0``), so a busy
worker sends full batches and a quiet one adds no delay.  A ``max_delay`` window (the
assignment's ``publish_window``) holds a batch for more events: it goes with the first event
that finds it half a window old, or on a timer callback (not a task wake-up) at the end of
the window; the forwarder drains whole batches
and republishes one frame per event, so consumers can subscribe by type.

Who may publish: events-in is reachable by any process that finds the endpoint, and what it
forwards decides what consumers see and which session a respawned worker RESUMEs.  So every
batch names its sender: the header carries the worker's slot and the publish key of its
current assignment (worker batch version 2, :mod:`shardctl.ipc.events`; the keys are kept by
:mod:`shardctl.ipc.publishers`).  The forwarder checks it once per batch, in constant time,
and forwards only the events of that worker's own shards; everything else is dropped before
it touches ``last_seq``, ``last_session`` or a consumer, counted and logged once per claimed
worker.  (A batch the worker numbered itself, version 4, that goes on untouched is checked
by its trailer's shards, not event by event: :mod:`shardctl.ipc.watermarks`.)  This
worker → supervisor format is internal to shardctl (both ends ship together: version 1
batches are refused); the consumer-facing format (README "Event bus wire format") is
unchanged.  Every batch is bounded by ``ZMQ_MAXMSGSIZE`` on events-in.

Loss policy, end to end:

- worker → supervisor: the worker's socket is an XPUB (a PUB that also sees subscriptions)
  with ``XPUB_NODROP``.  It holds events until the supervisor's subscription has arrived, so
  nothing is lost to the slow-joiner race, and a full pipe makes a send fail with EAGAIN
  instead of dropping: events wait in the publisher's backlog (bounded by ``max_backlog``;
  beyond it the oldest are dropped, counted and logged, and the per-shard sequence numbers
  make the hole visible downstream).
- supervisor → consumers: XPUB with ``XPUB_NODROP`` by default and a large HWM, so a slow
  consumer pushes back on the forwarder (and, through the worker's pipes, on the workers)
  rather than silently losing 25-60 % of a burst.  Operators who would rather lose events to
  a stuck consumer than stall the cluster pass ``nodrop=False``; consumers then see the loss
  as ``bus_seq`` gaps.
- at a graceful stop: :meth:`EventForwarder.drain` gives consumers a bounded time to read
  what events-out still holds for them (padding last, LINGER, a context of its own) and
  says whether everything left; when not, :meth:`EventForwarder.unsent_bound` says which
  seqs may be saved (:mod:`shardctl.ipc.unsent`), so the next RESUME replays the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import zmq
import zmq.asyncio
from anyio.abc import TaskStatus

from shardctl.errors import ProtocolError
from shardctl.ipc import endpoints
from shardctl.ipc.batch_out import BatchOutlet, as_batch
from shardctl.ipc.events import (
    BATCH_HEADER,
    BATCH_KEY_SIZE,
    BATCH_VERSION,
    BUS,
    BUS_CLOSING_TYPE,
    BUS_OFFSET,
    CONSUMER_BATCH_MAX,
    HAS_SEQ,
    HEADER,
    HEADER_SIZE,
    LIFECYCLE_TYPES,
    MAX_BATCH_BYTES,
    MAX_TYPE_LEN,
    PREFIX,
    RECORD,
    STAMPED_BATCH_VERSION,
    VERSION,
    Event,
    batch_header,
    decode_event,
    encode_event,
    encode_record,
    lifecycle_payload,
    ready_session,
    record_bounds,
    session_tag,
    type_bytes,
)
from shardctl.ipc.publishers import PublishGrants
from shardctl.ipc.readable import Readable
from shardctl.ipc.security import CurveClient, CurveServer, for_socket, stop_authenticator
from shardctl.ipc.unsent import ENGINE_MARGIN, SentMarks, shard_of_key
from shardctl.ipc.watermarks import Stamper, Watermarks, continues, counter_key, footer, read

log = logging.getLogger(__name__)

#: pyzmq poll timeouts (ms).  Waiting is always bounded: a sync NOBLOCK call can consume the
#: edge of zmq's edge-triggered FD, so a waiter re-checks the socket at least this often.
_POLL_MS: Final = 250
#: batches (worker side) or events (forwarder side) handled before yielding to other tasks
_DRAIN_BUDGET: Final = 256
_READY_TOPIC: Final = b"READY"
_READY_LEN: Final = len(_READY_TOPIC)
#: a record's first field: the length of the consumer message that follows
_LENGTH: Final = struct.Struct(">I")
#: worker batches the forwarder reads: stamped by the forwarder, or by the worker
_BATCH_VERSIONS: Final = frozenset({BATCH_VERSION, STAMPED_BATCH_VERSION})
#: the part of a record's HEADER the forwarder routes by: version, shard, flags, seq
_ROUTE: Final = struct.Struct(">BIB2xQ")
#: seconds a full consumer pipe may hold the forwarder before each warning
_STALL_WARNING: Final = 5.0
#: Retry pacing after XPUB_NODROP's EAGAIN (seconds, doubling).  An XPUB always reports
#: POLLOUT (libzmq's dist has_out() is constant true), so there is no readiness to await:
#: polling would spin and starve the event loop.  We sleep instead, starting short so a
#: brief stall costs little latency.
_RETRY_MIN: Final = 0.0005
_RETRY_MAX: Final = 0.02
#: Backlog (events) above which the worker's shards pause reading: ~15 MB of MESSAGE_CREATE.
DEFAULT_HIGH_WATER: Final = 10_000
#: ZMQ_MAXMSGSIZE of events out: what a consumer sends is a subscription, a few bytes.
SUBSCRIPTION_MAX_BYTES: Final = 64 << 10
#: BUS_CLOSING padding: frames x bytes, well above a socket's kernel buffers (~200 KB for
#: ipc://) and libzmq's 8 KB batches.
_CLOSING_FRAMES: Final = 16
_CLOSING_FRAME: Final = 64 << 10
_CLOSING_TOPIC: Final = BUS_CLOSING_TYPE.encode() + b"\0"


def wait_socket(shadow: zmq.asyncio.Socket, timeout_ms: int, flags: int) -> Awaitable[int]:
    """``shadow.poll(timeout, flags)``: the events that became ready (0 on timeout)."""
    # pyzmq's stub types _AsyncSocket.poll like Poller.poll (no flags); the runtime has flags.
    poll = cast(Callable[[int, int], Awaitable[int]], shadow.poll)
    return poll(timeout_ms, flags)


def _sync_context(context: zmq.Context[Any] | None) -> zmq.Context[zmq.Socket[bytes]]:
    """A sync view of the caller's context (an asyncio Context is shadowed, not copied)."""
    if context is None:
        return zmq.Context.instance()
    return zmq.Context.shadow(context.underlying)


# -- batching (pure) -------------------------------------------------------------------------


class BatchBuilder:
    """Accumulates encoded events; says when the batch must go.  Pure: time is an argument.

    A batch is due when it holds ``max_events`` events or ``max_bytes`` bytes, or when its
    first event is ``max_delay`` seconds old.  Its header names the publisher: ``worker`` (the
    slot) and ``key`` (the assignment's publish key), set by :meth:`credential`.
    """

    def __init__(self, *, max_events: int = 64, max_delay: float = 0.0,
                 max_bytes: int = 256 * 1024, worker: int = 0,
                 key: bytes = bytes(BATCH_KEY_SIZE)) -> None:
        if not 1 <= max_events <= 0xFFFF:
            raise ValueError("max_events must be within 1..65535")
        if max_delay < 0:
            raise ValueError("max_delay must be >= 0")
        self.max_events = max_events
        self.max_delay = max_delay
        self.max_bytes = max_bytes
        self._records: list[bytes] = []
        self._bytes = 0
        self._first_at = 0.0
        #: set when the worker stamps its own events: batches go as version 4 with the
        #: trailer it sums up (ipc/watermarks.py), ``generation`` in the reserved byte
        self.stamper: Stamper | None = None
        self.generation = 0
        self.credential(worker, key)

    def __len__(self) -> int:
        return len(self._records)

    def credential(self, worker: int, key: bytes) -> None:
        """Batches sealed from now on say they come from ``worker`` with ``key``."""
        batch_header(0, worker, key)  # ValueError now, not at the next seal
        self._worker, self._key = worker, key

    def add(self, record: bytes, now: float) -> bool:
        """Append one record; True if the batch is now full and should be sealed."""
        if not self._records:
            self._first_at = now
        self._records.append(record)
        self._bytes += len(record)
        return len(self._records) >= self.max_events or self._bytes >= self.max_bytes

    @property
    def deadline(self) -> float | None:
        """When the open batch must be sealed (None when empty)."""
        return self._first_at + self.max_delay if self._records else None

    def due(self, now: float) -> bool:
        return bool(self._records) and now >= self._first_at + self.max_delay

    def ripe(self, now: float) -> bool:
        """Whether the open batch has waited half its window (``max_delay`` > 0), so the
        event that just joined it may take it along.  At a steady load events keep coming,
        so batches go with the next event after that and the window's timer, a wake-up of
        its own, seldom fires: fewer, larger batches for no extra wake-up."""
        return 0 < self.max_delay <= 2 * (now - self._first_at) and bool(self._records)

    def seal(self) -> tuple[bytes, int]:
        """The batch frame and its event count; the builder is empty afterwards."""
        records, self._records, self._bytes = self._records, [], 0
        if self.stamper is None:
            head = BATCH_HEADER.pack(BATCH_VERSION, 0, len(records), self._worker, self._key)
            return head + b"".join(records), len(records)
        head = BATCH_HEADER.pack(STAMPED_BATCH_VERSION, self.generation, len(records),
                                 self._worker, self._key)
        return head + b"".join(records) + self.stamper.seal(), len(records)


# -- worker side -----------------------------------------------------------------------------


class EventPublisher:
    """A worker's outbound event stream.  ``publish()`` is sync and never blocks.

    Start it with ``await tg.start(publisher.run)`` (started once connected); events published
    before then wait in the backlog.  Full batches and lifecycle events are sent from inside
    ``publish()`` itself, without a task switch; the ``run()`` task seals time-due batches and
    retries when the supervisor pushes back.  ``worker`` and ``publish_key`` come from the
    worker's assignment: the supervisor drops every batch without them
    (:mod:`shardctl.ipc.publishers`).
    """

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None,
                 max_events: int = 64, max_delay: float = 0.0, max_bytes: int = 256 * 1024,
                 max_backlog: int = 100_000, hwm: int = 1000, linger: float = 2.0,
                 high_water: int | None = None, max_pause: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock_ns: Callable[[], int] = time.time_ns,
                 curve: CurveClient | None = None, worker: int = 0,
                 publish_key: bytes = bytes(BATCH_KEY_SIZE),
                 stamper: Stamper | None = None) -> None:
        self.endpoint = endpoint
        self._context = context
        self._curve = curve
        self._builder = BatchBuilder(max_events=max_events, max_delay=max_delay,
                                     max_bytes=max_bytes, worker=worker, key=publish_key)
        self._builder.stamper = stamper
        self._max_backlog = max_backlog
        if high_water is None:
            high_water = min(DEFAULT_HIGH_WATER, max_backlog)
        if not 0 < high_water <= max_backlog:
            raise ValueError("high_water must be within 1..max_backlog")
        self._high_water = high_water
        self._max_pause = max_pause
        self._hwm = hwm
        self._linger_ms = int(linger * 1000)
        self._clock = clock
        self._wall_ns = wall_clock_ns
        self._pending: deque[tuple[bytes, int]] = deque()
        self._pending_events = 0
        self._sock: zmq.Socket[bytes] | None = None
        self._topics: set[bytes] = set()
        # created in run(): anyio primitives need a running event loop
        self._wake: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: anyio.Event | None = None
        self._type_cache: dict[str, bytes] = {}
        #: the pending _seal_when_due timer (at most one; cancelled when its batch goes)
        self._timer: asyncio.TimerHandle | None = None
        #: events thrown away because the backlog overflowed
        self.dropped = 0
        #: events handed to zmq
        self.sent = 0

    @property
    def stamper(self) -> Stamper | None:
        """What numbers this worker's events itself (None: the forwarder does, version 3)."""
        return self._builder.stamper

    @property
    def subscribed(self) -> bool:
        """Whether the supervisor's subscription has arrived (sends are held until it has)."""
        return bool(self._topics)

    @property
    def backlog(self) -> int:
        """Events published but not yet accepted by zmq (open batch included)."""
        return self._pending_events + len(self._builder)

    def publish(self, shard: int, t: str, seq: int | None, payload: bytes, *,
                received_at_ns: int | None = None, urgent: bool = False,
                session: int = 0) -> None:
        """Queue one event; ``seq`` is the gateway ``s`` (None for lifecycle events) and
        ``session`` the :func:`~shardctl.ipc.events.session_tag` of the session it is in.

        ``payload`` must be the decompressed gateway frame exactly as received (or
        :func:`~shardctl.ipc.events.lifecycle_payload` for lifecycle events).  Lifecycle
        events and ``urgent=True`` seal the batch and send at once.
        """
        tb = self._type_cache.get(t)
        if tb is None:
            tb = self._type_cache[t] = type_bytes(t)
        ns = self._wall_ns() if received_at_ns is None else received_at_ns
        builder = self._builder
        stamper = builder.stamper
        if stamper is None:
            record = encode_record(tb, shard, seq, ns, payload, session=session)
        else:
            bus_seq = stamper.stamp(tb, shard, session, seq, tb == _READY_TOPIC)
            if not bus_seq:
                return  # a RESUME replayed what this session already published
            record = encode_record(tb, shard, seq, ns, payload, session=session,
                                   bus_seq=bus_seq, epoch=stamper.epoch)
        if not len(builder):
            if self._loop is not None and builder.max_delay == 0:
                # Sealed once the loop has run everything that is ready now: a callback,
                # not the run() task, whose wake-up would cost more than the event.
                self._loop.call_soon(self._seal_after_pass)
            elif self._loop is not None and self._timer is None:
                # A timer callback seals it after max_delay (no task wake-up either), unless
                # a later event takes it along first (BatchBuilder.ripe).
                self._timer = self._loop.call_later(builder.max_delay, self._seal_when_due)
        now = self._clock()
        if builder.add(record, now) or urgent or t in LIFECYCLE_TYPES \
                or (builder.max_delay and builder.ripe(now)):
            self.flush_nowait()

    def rebase(self, generation: int, deltas: Mapping[bytes, int]) -> None:
        """The supervisor found this worker's numbering out of step: the open batch goes
        as it is, later ones are numbered with ``deltas`` added and carry ``generation``
        (the forwarder renumbers the older ones it still gets)."""
        if self.stamper is None:
            return
        self.flush_nowait()
        self.stamper.shift(deltas)
        self._builder.generation = generation

    def set_credential(self, worker: int, publish_key: bytes) -> None:
        """A new assignment's credential: batches sealed from now on carry it (those sealed
        before keep the old one, which the supervisor takes until the first new one)."""
        self._builder.credential(worker, publish_key)

    def pressure(self) -> Awaitable[None] | None:
        """Something for a reader to await before it reads on, while the backlog is high.

        Over ``high_water`` events waiting, a shard that awaits this stops reading its socket
        until half of them went out (TCP then holds the gateway back) rather than letting the
        backlog reach ``max_backlog``, where the oldest are dropped.  A pause never lasts
        more than ``max_pause``: a shard must still read its heartbeat ACKs and beat on time
        if the supervisor is gone, and the backlog bound is the last word then.
        """
        if self.backlog < self._high_water:
            return None
        return self._relief()

    async def _relief(self) -> None:
        with anyio.move_on_after(self._max_pause):
            while self.backlog > self._high_water // 2:
                await self._progress_made()

    def flush_nowait(self) -> None:
        """Seal the open batch and send whatever zmq accepts now."""
        if len(self._builder):
            if self._timer is not None:  # its batch goes now: no wake-up for it
                self._timer.cancel()
                self._timer = None
            batch, count = self._builder.seal()
            self._pending.append((batch, count))
            self._pending_events += count
            self._trim_backlog()
        self._send_pending()
        if self._pending and self._wake is not None:
            self._wake.set()  # the supervisor pushed back: the run() task retries

    async def flush(self) -> None:
        """Seal, then wait until every event so far is accepted by zmq (bound it with
        ``anyio.move_on_after`` on shutdown: a gone supervisor never accepts)."""
        self.flush_nowait()
        while self._pending:
            await self._progress_made()

    async def wait_subscribed(self) -> None:
        """Return once the supervisor's subscription has arrived."""
        while not self._topics:
            await self._progress_made()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the socket: connect, signal started, then flush on time and on back-pressure."""
        sock = _sync_context(self._context).socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            sock.setsockopt(zmq.SNDHWM, self._hwm)
            sock.setsockopt(zmq.LINGER, self._linger_ms)
            if self._curve is not None:
                self._curve.apply(sock)
            sock.connect(self.endpoint)
            self._sock = sock
            self._loop = asyncio.get_running_loop()
            shadow = zmq.asyncio.Socket.from_socket(sock)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read_subscriptions, sock, shadow)
                task_status.started()
                await self._flush_loop()
        finally:
            # Best effort on the way out: whatever zmq accepts now is delivered within
            # ``linger``.  A graceful stop awaits flush() (bounded) before cancelling.
            self.flush_nowait()
            self._sock = None
            self._loop = None
            sock.close()

    # -- internals ---------------------------------------------------------------------------

    async def _progress_made(self) -> None:
        """Wait until a batch goes out or the subscriptions change."""
        if self._progress is None or self._progress.is_set():
            self._progress = anyio.Event()
        await self._progress.wait()

    def _notify_progress(self) -> None:
        if self._progress is not None:
            self._progress.set()

    def _seal_after_pass(self) -> None:
        if self._sock is None or not len(self._builder):
            return
        self.flush_nowait()

    def _seal_when_due(self) -> None:
        """The batching window's timer: seal the open batch once it is due, or wait for
        the rest of its window (the loop's clock may run a hair ahead of ours).  A batch
        that went earlier (full, ripe, urgent) took its timer with it (flush_nowait)."""
        self._timer = None
        if self._sock is None or self._loop is None:
            return
        deadline = self._builder.deadline
        if deadline is None:
            return
        now = self._clock()
        if now >= deadline:
            self.flush_nowait()
        else:
            self._timer = self._loop.call_later(deadline - now, self._seal_when_due)

    async def _flush_loop(self) -> None:
        retry = _RETRY_MIN
        while True:
            wake = self._wake = anyio.Event()
            now = self._clock()
            if self._builder.due(now):
                self.flush_nowait()
            else:
                self._send_pending()
            deadline = self._builder.deadline
            delay = math.inf if deadline is None else max(0.0, deadline - now)
            if self._pending and self._topics:
                # XPUB_NODROP said EAGAIN: the supervisor's pipe is full (see _RETRY_MIN).
                await anyio.sleep(min(delay, retry))
                retry = min(retry * 2, _RETRY_MAX)
                continue
            retry = _RETRY_MIN
            with anyio.move_on_after(delay):
                await wake.wait()

    async def _read_subscriptions(self, sock: zmq.Socket[bytes],
                                  shadow: zmq.asyncio.Socket) -> None:
        while True:
            await wait_socket(shadow, _POLL_MS * 4, zmq.POLLIN)
            changed = False
            while True:
                try:
                    msg = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01":
                    self._topics.add(msg[1:])
                elif msg[:1] == b"\x00":
                    self._topics.discard(msg[1:])
                changed = True
            if changed:
                log.debug("event publisher %s: %d subscriptions", self.endpoint,
                          len(self._topics))
                if self._wake is not None:
                    self._wake.set()
                self._notify_progress()

    def _send_pending(self) -> None:
        sock = self._sock
        if sock is None or not self._topics:
            return
        pending = self._pending
        sent = 0
        while pending:
            batch, count = pending[0]
            try:
                sock.send(batch, zmq.NOBLOCK)
            except zmq.Again:
                break
            pending.popleft()
            sent += count
        if sent:
            self._pending_events -= sent
            self.sent += sent
            self._notify_progress()

    def _trim_backlog(self) -> None:
        while self._pending_events > self._max_backlog and len(self._pending) > 1:
            _, count = self._pending.popleft()
            self._pending_events -= count
            self.dropped += count
            log.warning("event publisher %s: backlog over %d events, dropped %d (total %d)",
                        self.endpoint, self._max_backlog, count, self.dropped)


# -- supervisor side -------------------------------------------------------------------------


@dataclass(slots=True)
class ForwarderStats:
    batches: int = 0
    events: int = 0
    #: batches (or their tails) rejected as malformed
    malformed: int = 0
    #: events dropped because their ``s`` was already forwarded (a RESUME replay)
    duplicates: int = 0
    #: times a shard's ``s`` jumped forward (events lost before reaching the supervisor)
    upstream_gaps: int = 0
    #: sends refused by a full consumer pipe (XPUB_NODROP back-pressure)
    blocked: int = 0
    #: batches dropped whole: no worker's current publish credential in their header
    refused: int = 0
    #: events dropped from an authenticated batch: their shard is not the sender's
    foreign: int = 0
    #: times a shard's events came from a new session whose READY the bus never saw
    unseen_sessions: int = 0
    #: worker-stamped batches forwarded untouched (ipc/watermarks.py)
    stamped: int = 0
    #: worker-stamped batches that did not continue where the forwarder stood: stamped
    #: again here, event by event
    restamped: int = 0
    #: worker-stamped batches with fewer events than trailer entries (keys + shards) whose
    #: first event continues the bus: read event by event, which costs less then and sends
    #: the same frames (one whose first event does not is counted as ``restamped``)
    small: int = 0
    #: times a worker was asked to move its numbering back in step with the bus
    rebased: int = 0


BatchHook = Callable[[Sequence[Event]], None]


def _decodable(frames: list[bytes]) -> list[Event]:
    """The frames of a malformed batch that did go out and still decode (off the hot path)."""
    events = []
    for frame in frames:
        try:
            events.append(decode_event(frame))
        except ProtocolError as exc:
            log.error("event forwarder: a forwarded frame does not decode: %s", exc)
    return events


def _records_end(batch: bytearray, count: int) -> int:
    """Where the first malformed record of a worker batch starts (its end if none): the
    hot loop handled every record before it (off the hot path, as ``_odd_record``)."""
    off = BATCH_HEADER.size
    for _ in range(count):
        try:
            h, end = record_bounds(batch, off)
        except ProtocolError:
            return off
        if batch[h] != VERSION:
            return off
        off = end
    return off


class EventSink(Protocol):
    """Where every forwarded event goes too, in order (the durable stream,
    :mod:`shardctl.stream.publisher`): ``put`` gets each batch's events as forwarded (decoded
    once, shared with ``on_batch``), on the hot path; while ``full``, the forwarder reads no
    more worker batches (so workers block and shards pause reading) and awaits
    ``wait_room``."""

    @property
    def full(self) -> bool: ...

    def put(self, events: Sequence[Event]) -> None: ...

    async def wait_room(self) -> None: ...


class EventForwarder:
    """The supervisor's bus: SUB bound for workers, XPUB bound for consumers.

    Each worker batch becomes one message per event, topic = the event type + NUL (exact
    type subscriptions).  The forwarder stamps ``bus_seq`` (per type and shard) and
    ``epoch``, tracks ``last_seq`` (shard → last gateway ``s`` forwarded: where a respawned
    worker must RESUME from, DESIGN.md §7) and, with ``drop_duplicates``, drops dispatches
    whose ``s`` was already forwarded, so a resume replay is never published twice.  READY
    starts a new session and always passes.

    A worker that numbers its own events sends stamped batches (version 4,
    :mod:`shardctl.ipc.watermarks`): one that continues exactly where the forwarder stands
    goes on untouched, and its trailer says what ``last_seq`` and the counters become; any
    other is stamped here event by event, as above, so consumers see the same frames.

    ``resume_url_allowed`` judges the ``resume_gateway_url`` of each READY: a session whose
    URL it refuses is not noted (``last_session``), so nobody RESUMEs it.

    ``on_batch`` is called after each batch is forwarded with its events decoded (only built
    when a hook is set): the supervisor feeds in-process iterators from it.  It runs on the
    forwarder's hot path: keep it short and non-blocking (e.g. ``send_nowait`` into memory
    object streams); an exception from it stops the forwarder.

    Only workers publish, each for its own shards: ``publishers``
    (:class:`~shardctl.ipc.publishers.PublishGrants`) holds each assigned worker's publish key
    and shards, and the supervisor updates it with every assignment.  A batch whose header
    names no current key is dropped whole; an event of a shard outside the sender's
    assignment is dropped alone.  Neither is forwarded or touches ``last_seq`` or
    ``last_session``; both are counted (``stats.refused``, ``stats.foreign``) and logged
    once per claimed worker.  The check costs one lookup per batch and one set membership
    per event (the shard is unpacked anyway).  Batches over ``max_batch_bytes`` are refused
    by libzmq before they are allocated (``ZMQ_MAXMSGSIZE``: the sender is disconnected).

    ``inbound``/``outbound`` are bound through :func:`shardctl.ipc.endpoints.bind` (locked
    ipc:// paths, loopback-only tcp:// unless ``curve`` keys are given, which then guard
    both: workers and consumers need authorised client keys); once ``run()`` has started
    they hold the actual endpoints, so ``tcp://127.0.0.1:*`` can be used to pick free ports.
    """

    def __init__(self, inbound: str, outbound: str, *,
                 context: zmq.Context[Any] | None = None, nodrop: bool = True,
                 in_hwm: int = 10_000, out_hwm: int = 100_000,
                 on_batch: BatchHook | None = None,
                 on_progress: Callable[[], None] | None = None, drop_duplicates: bool = True,
                 epoch: int | None = None, curve: CurveServer | None = None,
                 max_batch_bytes: int = MAX_BATCH_BYTES,
                 resume_url_allowed: Callable[[str], bool] | None = None,
                 batch_outbound: str | None = None, batch_window: float = 0.0) -> None:
        self.inbound = inbound
        self.outbound = outbound
        #: events-batch: the same events, one message per worker batch (None: not bound)
        self.batch_outbound = batch_outbound
        self._context = context
        self._curve = curve
        self._nodrop = nodrop
        self._in_hwm = in_hwm
        self._out_hwm = out_hwm
        self.on_batch = on_batch
        self.on_progress = on_progress
        self._drop_duplicates = drop_duplicates
        #: identifies this run of the supervisor in every event (bus_seq restarts with it)
        self.epoch = random.getrandbits(32) if epoch is None else epoch
        #: shard → last gateway sequence number forwarded; may be seeded from saved state
        self.last_seq: dict[int, int] = {}
        #: shard → (session_id, resume_gateway_url) of the last READY forwarded
        self.last_session: dict[int, tuple[str, str]] = {}
        #: shard → session tag of the seq in ``last_seq``: a seq is only compared with seqs
        #: of its own session (seeded from ``last_session`` by run())
        self.session_tags: dict[int, int] = {}
        self.stats = ForwarderStats()
        #: subscription prefixes consumers hold right now (b"" = everything)
        self.subscriptions: set[bytes] = set()
        #: how many consumers hold each (XPUB_MANUAL passes every one, not just the first)
        self._holders: Counter[bytes] = Counter()
        self._counters: dict[bytes, int] = {}
        self._out: zmq.Socket[bytes] | None = None
        self._bout: zmq.Socket[bytes] | None = None
        #: what goes out on events-batch, and when (a window coalesces small batches)
        self.outlet = BatchOutlet(lambda message: self._send_out(lambda: self._bout, message),
                                  window=batch_window)
        #: consumers subscribed on events-batch (each holds the empty prefix)
        self.batch_subscribers = 0
        self._changed: anyio.Event | None = None
        #: who may publish which shards (the supervisor authorizes every assignment)
        self.publishers = PublishGrants()
        self._max_batch_bytes = max_batch_bytes
        self._resume_url_allowed = resume_url_allowed
        #: where each (type, shard)'s seq stood a known number of messages ago (drain())
        self.sent_marks = SentMarks(out_hwm + ENGINE_MARGIN)
        #: whether the last drain() handed consumers everything events-out held
        self.drained = False
        self._halt: anyio.CancelScope | None = None
        self._done: anyio.Event | None = None
        self._drain_for = 0.0
        self._clock: Callable[[], float] = time.monotonic
        #: claimed workers already logged as refused / foreign (None: not a known worker)
        self._logged: set[tuple[str, int | None]] = set()
        #: worker → what its authenticated batches pass through first (a reshard's new set,
        #: held before the switch and marked just after it; its old set, dropped after it:
        #: cluster/reshard.py)
        self._diverted: dict[int, Callable[[bytes], bytes | None]] = {}
        #: set while :meth:`exclusive` runs: the pump forwards no batch until it is done
        self._hold: anyio.Event | None = None
        self._in_batch = False
        self._batch_done: anyio.Event | None = None
        #: every forwarded frame also goes here (None: the bus only)
        self.sink: EventSink | None = None
        #: worker → the generation of its stamped batches that follow its last rebase
        self._generations: dict[int, int] = {}
        #: called (worker, generation, key → delta) when a worker's numbering is out of step
        #: with the bus: the supervisor sends it a rebase (ipc/watermarks.py)
        self.on_misaligned: Callable[[int, int, dict[bytes, int]], None] | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Bind both sockets, signal started, forward until cancelled or :meth:`drain`."""
        ctx = _sync_context(self._context)
        # Events-out alone in its own context: when term() returns before the close's
        # LINGER ran out, everything the socket held has left this process (drain()).
        out_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sin = ctx.socket(zmq.SUB)
        sout = self._out_socket(out_ctx, self._out_hwm)
        # A batch holds at most CONSUMER_BATCH_MAX events: a pipe of this many batches holds
        # no more events than events-out's, so the drain's SentMarks window covers both.
        bout = (None if self.batch_outbound is None
                else self._out_socket(out_ctx, max(1, self._out_hwm // CONSUMER_BATCH_MAX)))
        outs = [sock for sock in (sout, bout) if sock is not None]
        self._done = anyio.Event()
        try:
            sin.setsockopt(zmq.RCVHWM, self._in_hwm)
            sin.setsockopt(zmq.MAXMSGSIZE, self._max_batch_bytes)
            sin.setsockopt(zmq.LINGER, 0)
            sin.setsockopt(zmq.SUBSCRIBE, b"")
            for shard, seq in self.last_seq.items():
                self.sent_marks.seed(shard, seq)  # sessions this run RESUMEs
                if shard in self.last_session and shard not in self.session_tags:
                    self.session_tags[shard] = session_tag(self.last_session[shard][0])
            with contextlib.ExitStack() as binds:
                # endpoints.bind: ipc:// binds are locked (no silent takeover), tcp:// must be
                # loopback; ``tcp://127.0.0.1:*`` picks a port, so record what we got.
                self.inbound = binds.enter_context(
                    endpoints.bind(sin, self.inbound, curve=for_socket(self._curve, "events_in")))
                self.outbound = binds.enter_context(endpoints.bind(
                    sout, self.outbound, curve=for_socket(self._curve, "events_out")))
                if bout is not None and self.batch_outbound is not None:
                    self.batch_outbound = binds.enter_context(endpoints.bind(
                        bout, self.batch_outbound,
                        curve=for_socket(self._curve, "events_out")))
                self._out, self._bout = sout, bout
                with anyio.CancelScope() as self._halt:
                    async with Readable(sin) as readable, anyio.create_task_group() as tg:
                        tg.start_soon(self._read_subscriptions, sout, self._subscription)
                        if bout is not None:
                            tg.start_soon(self._read_subscriptions, bout,
                                          self._batch_subscription)
                            if self.outlet.window > 0:
                                tg.start_soon(self.outlet.run)
                        task_status.started()
                        await self._pump(sin, readable)
                # Only drain() ends the pump: nothing is forwarded from here on.
                self._out = self._bout = None
                sin.close()
                padded = self._send_closing(sout, bout)
                self.drained = await self._linger_out(outs, out_ctx) and padded
        finally:
            self._out = self._bout = None
            sin.close()
            for sock in outs:
                sock.close(linger=0)
            if not out_ctx.closed:
                stop_authenticator(out_ctx)
                out_ctx.term()
            self._done.set()

    def _out_socket(self, ctx: zmq.Context[zmq.Socket[bytes]], hwm: int) -> zmq.Socket[bytes]:
        """An XPUB for consumers: events-out, or events-batch."""
        sock = ctx.socket(zmq.XPUB)
        try:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.LINGER, 0)
            # Subscriptions are applied by _read_subscriptions, which adds BUS_CLOSING for
            # every consumer: the padding a drain sends last must reach each pipe.
            sock.setsockopt(zmq.XPUB_MANUAL, 1)
            # Consumers send only subscriptions (event type prefixes) upstream.
            sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)
            if self._nodrop:
                sock.setsockopt(zmq.XPUB_NODROP, 1)
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

    async def drain(self, bound: float, *,
                    clock: Callable[[], float] = time.monotonic) -> bool:
        """Stop forwarding, then give events-out up to ``bound`` seconds to hand its
        consumers what it still holds for them; the forwarder is done afterwards.

        True when everything left this process in time: the socket was closed with
        LINGER = ``bound`` in a context of its own, and the context's term() returned
        before the linger ran out.  False when it ran out (or the forwarder was not
        running): what each consumer got is unknown, PUB/SUB has no receipts --
        :meth:`unsent_bound` says which seqs are safe to save then.
        """
        if self._halt is None or self._done is None:
            return False
        self._drain_for, self._clock = max(0.0, bound), clock
        self._halt.cancel()
        await self._done.wait()
        return self.drained

    def counters_of(self, shards: Collection[int]) -> tuple[tuple[bytes, int], ...]:
        """The bus_seq counters (key → last forwarded) of ``shards``: where a worker that
        numbers their events itself continues (ipc/watermarks.py)."""
        return tuple((key, bus_seq) for key, bus_seq in self._counters.items()
                     if shard_of_key(key) in shards)

    def unsent_bound(self) -> dict[int, int]:
        """Per shard, a seq that no message events-out may still hold is at or below
        (:mod:`shardctl.ipc.unsent`): what to save when a drain ran out of time."""
        return self.sent_marks.safe_seqs(self._counters)

    def _send_closing(self, sout: zmq.Socket[bytes], bout: zmq.Socket[bytes] | None) -> bool:
        """Padding frames, last on every consumer's pipe; False if a pipe was full.

        Two libzmq behaviours drop the last bytes of a connection that closes while its
        reader lags, although the close ends "in time": the closing engine's unflushed
        write batch (8 KB) is dropped with it, and a SUB whose queue is full when it sees
        the connection end drops what it had not yet read from its socket.  Padding larger
        than both, last, leaves only padding to lose.  A full pipe (a consumer SNDHWM
        behind) would drop it: then nothing is vouched for (NODROP turns that into an
        EAGAIN here instead of a silent drop).  Events-batch gets the same frames, one per
        batch.
        """
        outs = [(sock, batched) for sock, batched in ((sout, False), (bout, True))
                if sock is not None]
        for sock, _ in outs:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        # what the batching window still held goes first
        held = self.outlet.take_held() if bout is not None else []
        try:
            for message in held:
                cast(zmq.Socket[bytes], bout).send(message, zmq.NOBLOCK)
        except zmq.Again:
            return False
        tb = type_bytes(BUS_CLOSING_TYPE)
        key = tb + b"\0" + PREFIX.pack(VERSION, 0)
        payload = lifecycle_payload({"padding": "." * _CLOSING_FRAME})
        for _ in range(_CLOSING_FRAMES):
            bus_seq = self._counters.get(key, 0) + 1
            frame = encode_event(BUS_CLOSING_TYPE, 0, None, time.time_ns(), payload,
                                 bus_seq=bus_seq, epoch=self.epoch)
            try:
                for sock, batched in outs:
                    sock.send(as_batch(frame, len(tb)) if batched else frame, zmq.NOBLOCK)
            except zmq.Again:
                return False
            self._counters[key] = bus_seq
        return True

    async def _linger_out(self, outs: list[zmq.Socket[bytes]],
                          out_ctx: zmq.Context[zmq.Socket[bytes]]) -> bool:
        timeout, clock = self._drain_for, self._clock

        def close() -> float:
            stop_authenticator(out_ctx)  # its thread's socket would hold term() forever
            started = clock()
            for sock in outs:
                sock.close(linger=int(timeout * 1000))
            out_ctx.term()  # returns once all is sent, or at the linger's end
            return clock() - started

        took = await anyio.to_thread.run_sync(close)
        # libzmq's linger timer has millisecond ticks: a close that took (nearly) the whole
        # timeout may have been cut short, so only one clearly early counts as complete.
        return took < timeout - min(0.1, timeout / 10)

    async def wait_subscribed(self, prefix: bytes, consumers: int = 1, *,
                              batched: bool = False) -> None:
        """Return once ``consumers`` consumers hold exactly this subscription prefix (on
        events-batch with ``batched``: any prefix)."""
        while (self.batch_subscribers if batched
               else self._holders.get(prefix, 0)) < consumers:
            if self._changed is None or self._changed.is_set():
                self._changed = anyio.Event()
            await self._changed.wait()

    # -- a reshard's switch (cluster/reshard.py) ------------------------------------------------

    def divert(self, worker: int, sink: Callable[[bytes], bytes | None] | None) -> None:
        """Hand ``worker``'s authenticated batches to ``sink`` first: it returns the batch
        to forward (the same, or rewritten in place of it) or None to take it away, in
        which case nothing of it touches ``last_seq`` or a consumer.  ``sink`` None: no
        detour any more.  The sink runs on the hot path: it must not raise."""
        if sink is None:
            self._diverted.pop(worker, None)
        else:
            self._diverted[worker] = sink

    async def exclusive(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run ``step`` between two batches: no batch is forwarded while it runs, so what
        it publishes (:meth:`publish`, :meth:`forward`) and changes is one step for every
        consumer.  Must not be called from ``on_batch`` or ``on_progress``."""
        while self._hold is not None:
            await self._hold.wait()
        hold = self._hold = anyio.Event()
        try:
            while self._in_batch:
                done = self._batch_done = anyio.Event()
                await done.wait()
            await step()
        finally:
            self._hold = None
            hold.set()

    async def forward(self, batch: bytes) -> None:
        """Forward one worker batch now, as if it had just arrived (within :meth:`exclusive`:
        a reshard releasing its new set's staged batches)."""
        await self._forward(batch)

    async def publish(self, t: str, shard: int, payload: bytes) -> None:
        """Publish an event of the supervisor's own (no gateway ``s``), numbered like the
        rest; waits while a consumer's pipe is full (XPUB_NODROP)."""
        tb = type_bytes(t)
        key = counter_key(tb, shard)
        bus_seq = self._counters.get(key, 0) + 1
        message = encode_event(t, shard, None, time.time_ns(), payload, bus_seq=bus_seq,
                               epoch=self.epoch)
        if self._out is None:
            raise RuntimeError("the forwarder is not running")
        if self.subscriptions:
            await self._send_out(lambda: self._out, message)
        if self.batch_subscribers:
            await self.outlet.event(message, len(tb))
        self._counters[key] = bus_seq
        self.stats.events += 1
        if self.sink is not None or self.on_batch is not None:
            self._delivered([decode_event(message)])  # the stream gets our own events too

    # -- internals ---------------------------------------------------------------------------

    async def _send_out(self, out: Callable[[], zmq.Socket[bytes] | None],
                        message: bytes | bytearray | memoryview) -> None:
        """Send one message on the consumer socket ``out()`` returns, waiting while a
        consumer's pipe is full (XPUB_NODROP); RuntimeError once the forwarder stopped."""
        retry = _RETRY_MIN
        blocked_since: float | None = None
        while True:
            sock = out()
            if sock is None:
                raise RuntimeError("the forwarder is not running")
            try:
                sock.send(message, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            blocked_since = self._blocked(blocked_since)
            await anyio.sleep(retry)
            retry = min(retry * 2, _RETRY_MAX)

    def _blocked(self, since: float | None) -> float:
        """Count a refused send; warn every _STALL_WARNING seconds of one stall."""
        self.stats.blocked += 1
        now = time.monotonic()
        if since is None:
            return now
        if now - since >= _STALL_WARNING:
            log.warning("event forwarder: a consumer has not read for %.0f s; "
                        "workers are held back (XPUB_NODROP)", _STALL_WARNING)
            return now
        return since

    async def _pump(self, sin: zmq.Socket[bytes], readable: Readable) -> None:
        while True:
            await readable.wait(_POLL_MS * 4 / 1000)
            for _ in range(_DRAIN_BUDGET):
                sink = self.sink
                if sink is not None and sink.full:
                    await sink.wait_room()  # workers block, their shards pause reading
                try:
                    batch = sin.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                while self._hold is not None:  # a reshard's switch is under way
                    await self._hold.wait()
                self._in_batch = True
                try:
                    await self._forward(batch)
                finally:
                    self._in_batch = False
                    if self._batch_done is not None:
                        self._batch_done.set()
                        self._batch_done = None
            else:
                # The budget ran out with batches still waiting: let the other tasks run.
                # (After an EAGAIN the next wait suspends anyway: no extra pass per wake-up.)
                await anyio.lowlevel.checkpoint()

    def _sender(self, batch: bytes) -> tuple[int | None, int, frozenset[int] | None]:
        """(worker claimed, event count, shards it may publish: None = refuse the batch).

        Whatever does not name a current credential is refused, malformed or not: only an
        assigned worker's batch can be "malformed" (and logged as a bug every time).
        """
        if len(batch) < BATCH_HEADER.size:
            return None, 0, None
        version, _, count, worker, key = BATCH_HEADER.unpack_from(batch, 0)
        if version not in _BATCH_VERSIONS:
            return None, 0, None
        return worker, count, self.publishers.check(worker, key)

    async def _forward(self, batch: bytes) -> None:
        self.stats.batches += 1
        worker, count, allowed = self._sender(batch)
        if worker is None or allowed is None:
            self._refused(worker)
            return
        if self._diverted:
            diverted = self._divert(worker, batch)
            if diverted is None:
                return
            batch = diverted
        #: a stamped batch's trailer, to compare its numbering with the bus's afterwards
        n, marks = len(batch), None
        if batch[0] == STAMPED_BATCH_VERSION:
            try:
                marks, fast, n = self._route(batch, count, worker, allowed)
            except ProtocolError as exc:
                self._malformed(exc)
                return
            if fast and marks is not None:
                await self._forward_stamped(batch, marks, count, worker)
                return
        # the frames as forwarded, for the in-process hook and the stream
        frames: list[bytes] | None = (
            [] if self.on_batch is not None or self.sink is not None else None)
        buf = bytearray(batch)
        #: offsets of the records not forwarded (replays, foreign shards)
        dropped: set[int] = set()
        try:
            off, remaining = BATCH_HEADER.size, count
            blocked_since: float | None = None
            retry = _RETRY_MIN
            while True:
                off, remaining = self._forward_some(batch, buf, off, remaining, frames, n=n,
                                                    dropped=dropped, allowed=allowed,
                                                    worker=worker)
                if not remaining:
                    break
                blocked_since = self._blocked(blocked_since)
                # XPUB_NODROP said EAGAIN: a consumer's pipe is full (see _RETRY_MIN).
                await anyio.sleep(retry)
                retry = min(retry * 2, _RETRY_MAX)
            if off != n:
                raise ProtocolError("trailing bytes after the last event of a batch")
            events = [decode_event(frame) for frame in frames] if frames else None
        except (ProtocolError, struct.error) as exc:
            # A broken worker must never take the supervisor down: drop the rest of the batch.
            self._malformed(exc)
            await self._send_batches(buf, _records_end(buf, count), count, dropped, worker)
            if frames and self.sink is not None:
                # what went out on the bus goes into the stream too (not to on_batch, as ever)
                self.sink.put(_decodable(frames))
            return
        await self._send_batches(buf, off, count, dropped, worker)
        self._delivered(events)
        if marks is not None:
            self._realign(worker, marks, allowed)

    def _route(self, batch: bytes, count: int, worker: int, allowed: frozenset[int]
               ) -> tuple[Watermarks | None, bool, int]:
        """Where a stamped batch goes: (its trailer, True) when it may go on untouched;
        (its trailer, False) when it is read event by event and its numbering is then to be
        compared with the bus (:meth:`_realign`); (None, False) when it is read event by
        event and no more.  And where its records end."""
        entries, end = footer(batch, BATCH_HEADER.size)
        if self.sink is not None or self.on_batch is not None:
            return None, False, end  # they decode each event: read it event by event
        small = count < entries  # fewer events than its trailer has entries
        if small and self._first_continues(batch):
            self.stats.small += 1
            return None, False, end
        marks = read(batch, BATCH_HEADER.size)
        if not small and self._fast(worker, marks, count, allowed):
            return marks, True, end
        self.stats.restamped += 1  # stamped again here, event by event
        # Numbered before the worker's last rebase (the rebase is on its way), or detoured
        # by a reshard: nothing to learn about its numbering from it.
        current = (batch[1] == self._generations.get(worker, 0)
                   and worker not in self._diverted)
        return (marks if current else None), False, end

    def _first_continues(self, batch: bytes) -> bool:
        """Whether a batch's first record carries the bus_seq the forwarder would give it:
        a small batch's one check, so that a worker that only ever sends a few events at a
        time is still found out of step (and rebased) at its first batch, not its first
        large one.  Its key is a slice of the record; reading the whole trailer would cost
        more than the events."""
        off = BATCH_HEADER.size
        try:
            h, _ = record_bounds(batch, off)
        except ProtocolError:
            return False  # read event by event, which reports it
        bus_seq: int = BUS.unpack_from(batch, h + BUS_OFFSET)[0]
        # type NUL version shard, as the event-by-event path keys its counters
        return bus_seq == self._counters.get(batch[off + RECORD.size:h + PREFIX.size], 0) + 1

    def _realign(self, worker: int, marks: Watermarks, allowed: frozenset[int]) -> None:
        """After a stamped batch was stamped again here: where its worker's numbering of
        each key differs from the bus's, ask it (``on_misaligned``) to add the difference,
        marking its batches with a new generation from then on.  Its batches in flight
        meanwhile are renumbered here and move both numberings alike, so the difference
        taken now still holds when the worker applies it."""
        counters = self._counters
        deltas = {key: counters.get(key, 0) - bus_seq for key, _, bus_seq, _ in marks.keys
                  if shard_of_key(key) in allowed and counters.get(key, 0) != bus_seq}
        if deltas and self.on_misaligned is not None:
            generation = self._generations[worker] = (self._generations.get(worker, 0) + 1) & 0xFF
            self.stats.rebased += 1
            self.on_misaligned(worker, generation, deltas)

    def new_publisher(self, worker: int) -> None:
        """``worker`` is a new process (an assignment): its batches start at generation 0."""
        self._generations.pop(worker, None)

    def _fast(self, worker: int, marks: Watermarks, count: int,
              allowed: frozenset[int]) -> bool:
        """Whether a stamped batch may go on untouched (ipc/watermarks.py): it continues
        exactly where this forwarder stands, and no reshard's detour rewrites its events."""
        return (marks.epoch == self.epoch and worker not in self._diverted
                and continues(marks, count, allowed, counters=self._counters,
                              last_seq=self.last_seq, tags=self.session_tags))

    async def _forward_stamped(self, batch: bytes, marks: Watermarks, count: int,
                               worker: int) -> None:
        """A stamped batch that continues where the forwarder stands: its records as they
        are, then what it forwarded, learnt from its trailer -- no per-event Python but the
        one send each per-event consumers need."""
        end = marks.end
        if self.subscriptions:
            off, retry, blocked_since = BATCH_HEADER.size, _RETRY_MIN, None
            while (off := self._send_records(batch, off, end)) < end:
                blocked_since = self._blocked(blocked_since)
                await anyio.sleep(retry)  # XPUB_NODROP said EAGAIN (see _RETRY_MIN)
                retry = min(retry * 2, _RETRY_MAX)
        if self._bout is not None and self.batch_subscribers:
            await self.outlet.batch(bytearray(memoryview(batch)[:end]), end, count, set(),
                                    worker)
        counters, last_seq = self._counters, self.last_seq
        sent, every = self.sent_marks, self.sent_marks.every
        for key, records, bus_seq, seq in marks.keys:
            counters[key] = bus_seq
            if seq and (bus_seq - 1) // every != (bus_seq - records - 1) // every:
                sent.note(key, bus_seq, seq)  # a mark fell in this batch: its last one's
        for shard, _, _, last, records, _ in marks.shards:
            if records:
                last_seq[shard] = last
        self.stats.events += count
        self.stats.stamped += 1
        self._delivered(None)

    def _send_records(self, batch: bytes, off: int, end: int) -> int:
        """Send each record's message on events-out from ``off``; where it stopped (``end``:
        all sent; earlier: the socket is full)."""
        sout = self._out
        assert sout is not None
        send, mv, size, length = sout.send, memoryview(batch), RECORD.size, _LENGTH.unpack_from
        while off < end:
            start = off + size
            stop = start + length(batch, off)[0]
            try:
                send(mv[start:stop], zmq.NOBLOCK)
            except zmq.Again:
                return off
            off = stop
        return off

    async def _send_batches(self, buf: bytearray, end: int, count: int, dropped: set[int],
                            worker: int) -> None:
        """Events-batch: the records of ``buf`` up to ``end`` as forwarded (stamped in
        place), but for the ``dropped`` ones (:class:`~shardctl.ipc.batch_out.BatchOutlet`)."""
        if self._bout is not None and self.batch_subscribers:
            await self.outlet.batch(buf, end, count, dropped, worker)

    def _delivered(self, events: list[Event] | None) -> None:
        """A batch is out on the bus: the stream, the in-process hook (one decode for both:
        the frames were checked on the way out), the waiters."""
        if events:
            if self.sink is not None:
                self.sink.put(events)
            if self.on_batch is not None:
                self.on_batch(events)
        if self.on_progress is not None:
            self.on_progress()

    def _divert(self, worker: int, batch: bytes) -> bytes | None:
        """The batch as ``worker``'s detour (:meth:`divert`) returns it; None: taken away."""
        sink = self._diverted.get(worker)
        return batch if sink is None else sink(batch)

    def _malformed(self, exc: Exception) -> None:
        self.stats.malformed += 1
        log.error("event forwarder: dropped a malformed worker batch: %s", exc)

    def _refused(self, worker: int | None) -> None:
        self.stats.refused += 1
        if self._first_time("refused", worker):
            log.warning("event forwarder: dropped a batch claiming worker %s without its "
                        "current publish key (a replaced worker's last batches, or a peer "
                        "that is not ours); counted, logged once per worker",
                        "(none)" if worker is None else worker)

    def _foreign(self, worker: int, shard: int) -> None:
        self.stats.foreign += 1
        if self._first_time("foreign", worker):
            log.warning("event forwarder: worker %d published for shard %d, which is not "
                        "assigned to it; dropped (counted, logged once per worker)",
                        worker, shard)

    def _first_time(self, what: str, worker: int | None) -> bool:
        # Claimed ids of unknown workers share one entry: a stranger cycling through them
        # must not grow this set or the log.
        known = worker is not None and self.publishers.known(worker)
        source = (what, worker if known else None)
        if source in self._logged:
            return False
        self._logged.add(source)
        return True

    def _forward_some(self, batch: bytes, buf: bytearray, off: int, remaining: int,
                      frames: list[bytes] | None, *, n: int, dropped: set[int],
                      allowed: frozenset[int], worker: int) -> tuple[int, int]:
        """The hot loop: stamp records in ``buf`` (those before ``n``: a stamped batch's
        trailer follows them) and send each on events-out (when anyone subscribes there)
        until done or the out socket is full.

        Only records of ``allowed`` shards (the sender's) go on; the others are dropped
        before they touch anything (their offsets go into ``dropped``).  Returns (offset,
        records remaining); remaining > 0 means EAGAIN (XPUB_NODROP).
        """
        sout = self._out
        assert sout is not None
        send = sout.send if self.subscriptions else None
        counters, last_seq, tags = self._counters, self.last_seq, self.session_tags
        stats, epoch = self.stats, self.epoch
        mv = memoryview(buf)
        record_size, header_size, mask = RECORD.size, HEADER_SIZE, self.sent_marks.mask
        route = _ROUTE.unpack_from
        while remaining:
            mlen, tlen, tag = RECORD.unpack_from(batch, off)
            start = off + record_size
            end = start + mlen
            h = start + tlen + 1
            # struct.error past the batch's end: malformed (the caller catches it)
            version, shard, flags, seq = route(batch, h)
            if (end > n or not 0 < tlen <= MAX_TYPE_LEN or h + header_size > end
                    or batch[h - 1] != 0 or version != VERSION or shard not in allowed):
                self._odd_record(batch, off, allowed, worker)  # raises unless foreign
                dropped.add(off)
                off, remaining = end, remaining - 1
                continue
            jump = ready = False
            if flags & HAS_SEQ:
                ready = tlen == _READY_LEN and batch[start:h - 1] == _READY_TOPIC
                last = (last_seq.get(shard) if tags.get(shard, tag) == tag
                        else self._other_session(shard, ready))
                if last is not None and seq != last + 1:
                    if seq > last:
                        jump = True
                    elif self._drop_duplicates and not ready:
                        stats.duplicates += 1
                        dropped.add(off)
                        off, remaining = end, remaining - 1
                        continue
            key = batch[start:h + 5]  # type NUL version shard: one counter per (type, shard)
            bus_seq = counters.get(key, 0) + 1
            BUS.pack_into(buf, h + BUS_OFFSET, bus_seq, epoch)
            if send is not None:
                try:
                    send(mv[start:end], zmq.NOBLOCK)
                except zmq.Again:
                    return off, remaining
            counters[key] = bus_seq
            if flags & HAS_SEQ:
                if jump:
                    self._upstream_gap(shard, last_seq[shard], seq)
                last_seq[shard], tags[shard] = seq, tag
                if ready or not (bus_seq - 1) & mask:  # 1 in sent_marks.every, or a READY
                    self._mark(key, bus_seq, seq, mv[h + header_size:end] if ready else None)
            stats.events += 1
            if frames is not None:
                frames.append(bytes(mv[start:end]))
            off, remaining = end, remaining - 1
        return off, 0

    def _mark(self, key: bytes, bus_seq: int, seq: int, ready: memoryview | None) -> None:
        """Off the hot path: note where the seq stood (drain()), and a READY's session."""
        marks = self.sent_marks
        if not (bus_seq - 1) & marks.mask:
            marks.note(key, bus_seq, seq)
        if ready is not None:
            shard = shard_of_key(key)
            marks.session_started(shard, seq, self._counters)
            self._note_session(shard, bytes(ready))

    def _odd_record(self, batch: bytes, off: int, allowed: frozenset[int], worker: int) -> None:
        """Off the hot path: ProtocolError for a malformed record; else it is well formed
        but of a shard the sender does not run, which is dropped alone."""
        h, _ = record_bounds(batch, off)
        version, shard = HEADER.unpack_from(batch, h)[:2]
        if version != VERSION:
            raise ProtocolError(f"unknown event version {version}")
        assert shard not in allowed
        self._foreign(worker, shard)

    def _other_session(self, shard: int, ready: bool) -> int | None:
        """Off the hot path: a dispatch of another session than ``last_seq``'s; returns the
        seq to compare it with: none (a new session restarts at 1: its events are no
        replays).  Without its READY the session is unknown here, so none is kept to RESUME
        (the pair would name the old session with the new session's seq)."""
        if not ready and shard in self.last_seq:
            self.stats.unseen_sessions += 1
            self.last_session.pop(shard, None)
            log.warning("event forwarder: shard %d is in a new session whose READY never "
                        "reached the bus; it will IDENTIFY rather than RESUME", shard)
        return None

    def _upstream_gap(self, shard: int, last: int, seq: int) -> None:
        self.stats.upstream_gaps += 1
        log.warning("event forwarder: shard %d seq jumped %d -> %d", shard, last, seq)

    def _note_session(self, shard: int, payload: bytes) -> None:
        """The session a READY started: with ``last_seq`` it is where a resume must start.

        Parsed here, once per session (READY is rare), so that the pair (session, last seq
        forwarded) always comes from the same stream and can never disagree.
        """
        session = ready_session(payload, self._resume_url_allowed)
        if session is not None:
            self.last_session[shard] = session
        else:
            self.last_session.pop(shard, None)  # no RESUME of this one: the shard IDENTIFYs

    def _subscription(self, sout: zmq.Socket[bytes], msg: bytes) -> bool:
        """Apply one consumer's (un)subscription to its pipe (XPUB_MANUAL: the pipe that
        sent the message just received); whether :attr:`subscriptions` changed."""
        topic = msg[1:]
        if msg[:1] == b"\x01":
            sout.setsockopt(zmq.SUBSCRIBE, topic)
            sout.setsockopt(zmq.SUBSCRIBE, _CLOSING_TOPIC)  # its SUB drops it unless it
            self._holders[topic] += 1                        # takes every type
        elif msg[:1] == b"\x00" and self._holders[topic] > 0:
            sout.setsockopt(zmq.UNSUBSCRIBE, topic)  # no-op for a pipe already gone
            self._holders[topic] -= 1
        else:
            return False
        before = len(self.subscriptions)
        if self._holders[topic] > 0:
            self.subscriptions.add(topic)
        else:
            self.subscriptions.discard(topic)
            del self._holders[topic]
        return len(self.subscriptions) != before

    def _batch_subscription(self, bout: zmq.Socket[bytes], msg: bytes) -> bool:
        """Events-batch: a consumer's subscription (the empty prefix; nothing else ever
        matches a batch, whose first byte is its version) or its end."""
        if msg[:1] == b"\x01":
            bout.setsockopt(zmq.SUBSCRIBE, msg[1:])
            self.batch_subscribers += 1
        elif msg[:1] == b"\x00" and self.batch_subscribers > 0:
            bout.setsockopt(zmq.UNSUBSCRIBE, msg[1:])
            self.batch_subscribers -= 1
        else:
            return False
        return True

    async def _read_subscriptions(self, sout: zmq.Socket[bytes],
                                  apply: Callable[[zmq.Socket[bytes], bytes], bool]) -> None:
        aout = zmq.asyncio.Socket.from_socket(sout)
        while True:
            await wait_socket(aout, _POLL_MS * 4, zmq.POLLIN)
            changed = False
            while True:
                try:
                    msg = sout.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                changed = apply(sout, msg) or changed
                if self._changed is not None:  # a waiter may count holders of one prefix
                    self._changed.set()
            if changed:
                log.debug("event forwarder: %d consumer subscriptions", len(self.subscriptions))
