"""``StreamPublisher``: the supervisor's forwarded events into JetStream, and the record of
what the stream acknowledged (DESIGN.md §7: with the stream on, that is "forwarded").

The forwarder (ipc/bus.py) hands over the consumer frames of each batch it forwards, in
order, with :meth:`put` -- sync, on its hot path; a READY among them starts a session (its
id and resume URL are read here, as the forwarder reads them).  Frames wait in a queue;
one task publishes them pipelined (up to ``window`` awaiting their acknowledgement) with
the headers and ``Nats-Msg-Id`` of :mod:`shardctl.stream.subjects`.  Acknowledgements
settle in order: a frame counts only once every frame before it is stored too, and then
its (session, seq) becomes the shard's :meth:`durable` record, which the supervisor saves,
checkpoints and RESUMEs from.

Loss policy: nothing is dropped here.  A refusal (a full stream), a missing answer
(``ack_timeout``: a server down, a leader election) or a broken connection puts every
unacknowledged frame back at the head of the queue and sends them again after a backoff;
``Nats-Msg-Id`` makes the server drop those it had stored.  While the queue holds
``max_pending`` frames or more, :attr:`full` is true and the forwarder stops reading worker
batches, so the workers' publishers block and their shards pause reading (the bus's own
back-pressure, ipc/bus.py).  Each outage is logged when it starts and when it ends.

Order: frames are stored in the order they were put, except after a resend: a frame whose
answer was lost may then land after later ones of its shard (``Shardctl-Seq`` tells).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import anyio.lowlevel

from shardctl.ipc.events import NEW_SESSION_TYPE, Event, ready_session
from shardctl.stream import _nats, subjects
from shardctl.stream.settings import StreamSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger(__name__)

#: Frames published and not yet acknowledged at once.
DEFAULT_WINDOW: Final = 2_000
#: Seconds without an answer before unacknowledged frames are sent again.
DEFAULT_ACK_TIMEOUT: Final = 5.0
_BACKOFF_MIN: Final = 0.1
_BACKOFF_MAX: Final = 2.0
#: JetStream's "stream name already in use" (an existing stream: update it instead).
_STREAM_EXISTS: Final = 10058

Session = tuple[str, str]


class _Pending:
    __slots__ = ("answer", "frame", "sent_at", "session", "token")

    def __init__(self, frame: Event, session: Session | None) -> None:
        self.frame = frame
        self.session = session
        #: None: no answer yet; b"": stored; b"dup": stored before; else the refusal
        self.answer: bytes | None = None
        self.token = 0
        self.sent_at = 0.0


class StreamPublisher:
    """Publishes forwarded frames into the stream; see the module docstring.

    ``await tg.start(publisher.run)`` returns at once (the stream may be unreachable: then
    frames wait and back-pressure builds); :attr:`connected` says whether it is reachable.
    """

    def __init__(self, settings: StreamSettings, *, max_pending: int | None = None,
                 window: int = DEFAULT_WINDOW, ack_timeout: float = DEFAULT_ACK_TIMEOUT,
                 on_progress: Callable[[], None] | None = None,
                 resume_url_allowed: Callable[[str], bool] | None = None,
                 commands: Callable[[object, object], Awaitable[dict[str, Any]]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        _nats.require()  # one clear line now, not when the first event arrives
        self.settings = settings
        self.max_pending = settings.buffer if max_pending is None else max_pending
        self.window = min(window, self.max_pending)
        self.ack_timeout = ack_timeout
        self.on_progress = on_progress
        #: answers gateway commands over NATS request-reply (None: not served)
        self.commands = commands
        self._resume_url_allowed = resume_url_allowed
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._inflight: deque[_Pending] = deque()
        #: publish token → the frame awaiting that publish's answer
        self._waiting: dict[int, _Pending] = {}
        self._tokens = 0
        self._current: dict[int, Session | None] = {}
        self._durable: dict[int, tuple[str, str, int]] = {}
        self._wake: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._outage_since: float | None = None
        self.connected = False
        #: frames stored by the stream (acknowledged; duplicates it dropped included)
        self.acked = 0
        #: acknowledgements that said "duplicate": a resend or a replay the server dropped
        self.duplicates = 0
        #: times the queue reached ``max_pending`` and held the forwarder back
        self.stalls = 0

    # -- the forwarder's side (sync, hot path) -----------------------------------------------

    def put(self, events: Sequence[Event]) -> None:
        """The events of one forwarded batch, in order (the forwarder decoded them)."""
        queue, current = self._queue, self._current
        for frame in events:
            if frame.type == NEW_SESSION_TYPE and frame.seq is not None:
                # None: a session nobody may RESUME (the forwarder's rule, ipc/bus.py)
                current[frame.shard] = ready_session(frame.raw, self._resume_url_allowed)
            queue.append(_Pending(frame, current.get(frame.shard)))
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def seed(self, records: Iterable[tuple[int, str, str, int]]) -> None:
        """Sessions resumed from the state file: (shard, session, url, seq) each."""
        for shard, session, url, seq in records:
            self._current[shard] = (session, url)
            self._durable[shard] = (session, url, seq)

    @property
    def pending(self) -> int:
        """Frames not yet stored (queued or awaiting an answer)."""
        return len(self._queue) + len(self._inflight)

    @property
    def full(self) -> bool:
        return self.pending >= self.max_pending

    async def wait_room(self) -> None:
        """Return once fewer than half of ``max_pending`` frames wait (hysteresis, so the
        forwarder does not flap at the bound)."""
        if not self.full:
            return
        self.stalls += 1
        log.warning("stream: %d events wait for %s; holding the workers back (shards "
                    "pause reading) until the stream takes them", self.pending,
                    ",".join(self.settings.servers))
        while self.pending >= self.max_pending // 2:
            room = self._room = anyio.Event()
            await room.wait()
        log.info("stream: taking events again (%d waiting)", self.pending)

    def durable(self, shard: int) -> tuple[str, str, int] | None:
        """(session id, resume URL, seq) of the last frame of ``shard`` the stream stored
        with everything before it; None: no resumable session stored."""
        return self._durable.get(shard)

    # -- the publishing task -----------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        nc = await self._connect()
        try:
            await self._ensure_stream(nc.jetstream())
            # Acknowledgements come to one inbox, a token per publish (the stream's PubAck
            # JSON is only searched, not parsed: the per-event cost is the point here).
            inbox = nc.new_inbox()
            await nc.subscribe(f"{inbox}.*", cb=self._on_answer)
            async with anyio.create_task_group() as tg:
                if self.commands is not None:
                    from shardctl.stream.commands import serve

                    await serve(nc, self.settings.prefix, self.commands, tg)
                await self._pump(nc, inbox)
        finally:
            # a connection NATS already broke may fail to close: nothing is left to lose
            with anyio.CancelScope(shield=True), anyio.move_on_after(2), \
                    contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self) -> Client:
        nats = _nats.require()
        backoff = _BACKOFF_MIN

        async def disconnected() -> None:
            self.connected = False
            log.warning("stream: disconnected from NATS; events wait (reconnecting)")

        async def reconnected() -> None:
            self.connected = True
            log.info("stream: reconnected to NATS")

        async def error(exc: Exception) -> None:
            log.debug("stream: NATS client error: %s", exc)

        while True:
            try:
                nc: Client = await nats.connect(
                    servers=list(self.settings.servers), name="shardctl supervisor",
                    allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                    connect_timeout=2, error_cb=error, disconnected_cb=disconnected,
                    reconnected_cb=reconnected)
            except Exception as exc:  # any failure: retry, never lose
                self._outage(f"cannot connect to {','.join(self.settings.servers)}: {exc}")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX * 2)
                continue
            self.connected = True
            return nc

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream, or bring an existing one to our settings (retried: a cluster
        may still be electing its meta leader)."""
        from nats.js import api
        from nats.js import errors as js_errors

        s = self.settings
        config = api.StreamConfig(
            name=s.name, subjects=[f"{s.prefix}.>"], max_age=s.max_age, max_bytes=s.max_bytes,
            discard=api.DiscardPolicy.NEW, storage=api.StorageType.FILE,
            num_replicas=s.replicas, duplicate_window=s.duplicate_window,
            description="shardctl gateway events")
        backoff = _BACKOFF_MIN
        while True:
            try:
                try:
                    await js.add_stream(config)
                except js_errors.BadRequestError as exc:
                    if exc.err_code != _STREAM_EXISTS:
                        raise
                    await js.update_stream(config)
                break
            except Exception as exc:
                self._outage(f"cannot create or update stream {s.name}: {exc}")
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
        log.info("stream: publishing to %s (subjects %s.>, %d replica(s))", s.name, s.prefix,
                 s.replicas)

    async def _pump(self, nc: Client, inbox: str) -> None:
        backoff = _BACKOFF_MIN
        while True:
            wake = self._wake = anyio.Event()
            failed = self._settle()
            if failed is None and self._timed_out():
                failed = f"no acknowledgement within {self.ack_timeout:g} s"
            if failed is not None:
                self._outage(failed)
                self._resend()
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            sent = await self._send(nc, inbox + ".")
            if sent is not None:
                self._outage(sent)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            if self._queue and len(self._inflight) < self.window:
                await anyio.lowlevel.checkpoint()
                continue
            timeout = self.ack_timeout if self._inflight else None
            with anyio.move_on_after(timeout):
                await wake.wait()

    async def _send(self, nc: Client, reply_prefix: str) -> str | None:
        """Publish queued frames while the window has room; an error text if one failed.

        No await inside suspends while the connection is up: the client then writes the
        whole run of publishes with one flush, not one syscall each."""
        queue, inflight, prefix = self._queue, self._inflight, self.settings.prefix
        waiting = self._waiting
        budget = 256  # then let the loop (and the forwarder) run
        while queue and len(inflight) < self.window and budget:
            p = queue[0]
            frame = p.frame
            session = p.session[0] if p.session is not None else None
            self._tokens += 1
            token = self._tokens
            try:
                await nc.publish(subjects.subject(prefix, frame.type, frame.shard),
                                 frame.raw, reply=f"{reply_prefix}{token}",
                                 headers=subjects.headers(frame, session))
            except Exception as exc:  # disconnected, buffer full: retry
                return f"publish failed: {exc!r}"
            queue.popleft()
            p.answer, p.token, p.sent_at = None, token, self._clock()
            waiting[token] = p
            inflight.append(p)
            budget -= 1
        return None

    async def _on_answer(self, msg: Msg) -> None:
        """The stream's answer to one publish: ``{"stream":...,"seq":N}`` (maybe with
        ``"duplicate":true``), an ``{"error":...}``, or a 503 status (no stream listens)."""
        try:
            token = int(msg.subject.rpartition(".")[2])
        except ValueError:
            return
        p = self._waiting.pop(token, None)
        if p is None:
            return  # answered after it was sent again: the new send's answer counts
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            p.answer = b"no stream answered (JetStream down or the stream missing)"
        elif b'"error":' in data:
            p.answer = data[:200]
        else:
            p.answer = b"dup" if b'"duplicate"' in data else b""
        wake = self._wake
        if wake is not None and not wake.is_set():
            wake.set()

    def _settle(self) -> str | None:
        """Move acknowledged frames off the head of the window into the durable record;
        an error text if the head was refused."""
        inflight, durable = self._inflight, self._durable
        settled = 0
        error = None
        while inflight:
            answer = inflight[0].answer
            if answer is None:
                break
            if answer and answer != b"dup":
                error = f"the stream refused an event: {answer.decode(errors='replace')}"
                break
            p = inflight.popleft()
            settled += 1
            if answer:
                self.duplicates += 1
            seq, shard = p.frame.seq, p.frame.shard
            if seq is not None:
                if p.session is not None:
                    durable[shard] = (p.session[0], p.session[1], seq)
                else:
                    durable.pop(shard, None)
        if settled:
            self.acked += settled
            if self._outage_since is not None:
                log.info("stream: storing events again after %.1f s",
                         self._clock() - self._outage_since)
                self._outage_since = None
            room = self._room
            if room is not None and self.pending < self.max_pending // 2:
                room.set()
            if self.on_progress is not None:
                self.on_progress()
        return error

    def _timed_out(self) -> bool:
        return bool(self._inflight) and (
            self._clock() - self._inflight[0].sent_at > self.ack_timeout)

    def _resend(self) -> None:
        """Every unacknowledged frame back to the head of the queue, in order."""
        inflight = self._inflight
        while inflight:
            p = inflight.pop()
            self._waiting.pop(p.token, None)
            p.answer = None
            self._queue.appendleft(p)

    def _outage(self, why: str) -> None:
        if self._outage_since is None:
            self._outage_since = self._clock()
            log.warning("stream: %s; %d events wait, nothing is dropped", why, self.pending)
        else:
            log.debug("stream: still failing: %s", why)
