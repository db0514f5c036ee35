"""One gateway socket: a single reader task with every timer folded into its receive deadline.

The reader waits for the next client frame inside a cancel scope whose deadline is the
earliest timer (heartbeat deadline, op 7 grace, op 9 idle/delay, scheduled faults); arming a
timer from elsewhere just lowers that deadline.  So a thousand idle sockets cost a thousand
parked reads, nothing else.  All sends of one socket go through one lock, which keeps the
compression context and the order of ``s`` consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event

from shardctl.gateway.closecodes import FATAL, SESSION_ENDING_CLIENT_CODES, keeps_session
from shardctl.gateway.intents import PRIVILEGED_INTENTS
from shardctl.gateway.opcodes import PRE_AUTH_OPS, Op
from shardctl.sandbox import arrival, commands, wire
from shardctl.sandbox.arrival import KernelStampedSocket
from shardctl.sandbox.compress import compress_payload, new_compressor
from shardctl.sandbox.faults import (
    Close,
    CorruptFrame,
    Drop,
    Fault,
    GuildOutage,
    InvalidSession,
    NotJson,
    Reconnect,
    RefuseConnections,
    RequestHeartbeat,
    Zombie,
)
from shardctl.sandbox.rules import HeartbeatMonitor, SlidingWindow
from shardctl.sandbox.session import Session
from shardctl.sandbox.validate import (
    Note,
    Reject,
    parse_frame,
    validate_heartbeat,
    validate_identify,
    validate_resume,
)

if TYPE_CHECKING:
    from shardctl.sandbox.server import Sandbox

_DISPATCH_QUIET: Final = 1.0
#: Older docs: wait a random 1-5 s after op 9 before re-identifying (§6).
REIDENTIFY_MIN_DELAY: Final = 1.0


class StampedServerConnection(ServerConnection):
    """A websockets server connection that notes when each client message reached the host.

    Every sandbox socket is one.  Each complete message gets the kernel's receive time
    (:mod:`shardctl.sandbox.arrival`) where the platform gives one, else the loop's time in
    the iteration that read the bytes.  Rules with a deadline (IDENTIFY pacing above all)
    judge a frame by it only with ``arrival_stamp="kernel"``, kinder than a busy real server,
    which stamps a frame when its loop reads it (the default, ``loop``); either way the
    records carry it as ``received``, so a test can tell the client's pace from this
    machine's own lateness in reading it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: deque[float] = deque()
        self._stamped: KernelStampedSocket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._stamped = arrival.install(transport)
        super().connection_made(transport)

    def process_event(self, event: Event) -> None:
        # One stamp per complete message (its final frame), in the order recv() returns them.
        if self.request is not None and isinstance(event, Frame) \
                and event.opcode in DATA_OPCODES and event.fin:
            now = self.loop.time()
            self.arrivals.append(now if self._stamped is None else self._stamped.arrival(now))
        super().process_event(event)


@dataclass(frozen=True, slots=True)
class Arrival:
    """When the client frame being handled counts as arrived (``at``, what rules judge), when
    it reached this host (``received``) and the jitter drawn for it: ``at - jitter -
    received`` is how late this machine's loop read it (0 with ``arrival_stamp="kernel"``)."""

    at: float
    received: float
    jitter: float = 0.0


class Connection:
    """State of one socket; ``run()`` is its only task."""

    def __init__(self, sb: Sandbox, ws: ServerConnection, conn_id: int, path: str,
                 query: dict[str, str]) -> None:
        cfg = sb.config
        self.sb, self.ws, self.id, self.path, self.query = sb, ws, conn_id, path, query
        self.compressor = new_compressor(query.get("compress"), split=cfg.zlib_split,
                                         zstd_level=cfg.zstd_level)
        self.payload_compress = False
        self.lock = anyio.Lock()
        self.session: Session | None = None
        self.shard_id: int | None = None
        self.authed = False
        self.closed = False
        self.zombie = False
        self.hb: HeartbeatMonitor | None = None
        self.frames = SlidingWindow(cfg.frame_limit, cfg.frame_window,
                                    fixed=cfg.frame_window_fixed)
        self.presences = SlidingWindow(cfg.presence_limit, cfg.presence_window)
        self.timers: dict[str, float] = {}
        self.faults: list[tuple[float, Fault]] = []
        self.last_s: int | None = None
        self.last_send_at = -math.inf
        self.op9_resumable = False
        self.sent_op9 = False
        #: the client frame being handled (set before each ``on_message`` from ``run``)
        self.arrived: Arrival | None = None
        self._scope: anyio.CancelScope | None = None

    # -- recording helpers ------------------------------------------------------------------

    def rec(self, kind: str, *, at: float | None = None, **details: Any) -> None:
        self.sb.recorder.add(kind, shard_id=self.shard_id, conn=self.id, at=at, **details)

    def violation(self, rule: str, detail: str) -> None:
        self.rec("violation", rule=rule, detail=detail)

    def note(self, notes: Iterable[Note]) -> None:
        """Accepted fields Discord ignores (legacy or unknown keys): recorded, not closed."""
        for n in notes:
            self.rec("note", rule=n.rule, detail=n.detail)

    # -- timers -----------------------------------------------------------------------------

    def arm(self, name: str, at: float) -> None:
        self.timers[name] = at
        self._wake(at)

    def _wake(self, at: float) -> None:
        if self._scope is not None and at < self._scope.deadline:
            self._scope.deadline = at

    def next_deadline(self) -> float:
        candidates = list(self.timers.values())
        if self.hb is not None:
            candidates.append(self.hb.deadline())
        candidates.extend(at for at, _ in self.faults)
        return min(candidates, default=math.inf)

    def schedule(self, trigger: str, now: float) -> None:
        for item in self.sb.take_scheduled(trigger, self.shard_id):
            self.faults.append((now + item.after, item.fault))
            self._wake(now + item.after)

    # -- sending ----------------------------------------------------------------------------

    async def send(self, frame: bytes, *, force_compress: bool = False) -> None:
        async with self.lock:
            await self.send_unlocked(frame, force_compress=force_compress)

    async def send_unlocked(self, frame: bytes, *, force_compress: bool = False) -> None:
        if self.closed:
            return
        try:
            if self.compressor is not None:
                for message in self.compressor.compress(frame):
                    await self.ws.send(message)
            elif self.payload_compress and (
                    force_compress or len(frame) >= self.sb.config.payload_compress_threshold):
                await self.ws.send(compress_payload(frame))
            else:
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            pass

    async def invalid_session(self, resumable: bool, **details: Any) -> None:
        """Send op 9; remember when a shard was told to start over (checklist 34)."""
        await self.send(wire.invalid_session(resumable))
        self.sent_op9 = True
        self.op9_resumable = resumable
        if not resumable and self.shard_id is not None:
            self.sb.last_op9[self.shard_id] = anyio.current_time()
        self.rec("invalid_session", resumable=resumable, **details)

    def note_dispatch(self, seq: int) -> None:
        self.last_s = seq
        self.last_send_at = anyio.current_time()

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.sb.config
        now = anyio.current_time()
        self.rec("connect", path=self.path, query=dict(self.query))
        items = self.sb.take_scheduled("connect", None)
        before_hello = [i for i in items if i.fault == Reconnect(before_hello=True)]
        for item in items:
            if item not in before_hello:
                self.faults.append((now + item.after, item.fault))
        if before_hello:
            # §6: op 7 may arrive even instead of HELLO.
            await self.apply(before_hello[0].fault, now)
        else:
            if self.query.get("v") != "10":
                if cfg.hello_before_version_close:
                    await self.send(wire.hello(cfg.heartbeat_interval_ms))
                self.violation("invalid_api_version", f"v={self.query.get('v')!r}")
                await self.close(4012, "invalid API version")
                return
            await self.send(wire.hello(cfg.heartbeat_interval_ms))
            self.hb = HeartbeatMonitor(cfg.heartbeat_interval, cfg.heartbeat_tolerance,
                                       anyio.current_time())
            self.rec("hello", heartbeat_interval=cfg.heartbeat_interval_ms)
        while not self.closed:
            if self.next_deadline() < anyio.current_time():
                # A chatty client must not starve the timers: check them before reading.
                await self.on_timers(anyio.current_time())
                continue
            raw: bytes | None = None
            with anyio.CancelScope(deadline=self.next_deadline()) as scope:
                self._scope = scope
                try:
                    raw = await self.ws.recv(decode=False)
                except ConnectionClosed as exc:
                    self._scope = None
                    self.on_closed(exc)
                    return
            self._scope = None
            if raw is None:
                await self.on_timers(anyio.current_time())
            else:
                self.arrived = await self._arrival()
                await self.on_message(raw, self.arrived.at)

    async def _arrival(self) -> Arrival:
        """When the frame just read counts as arrived (``SandboxConfig.arrival_stamp``).

        ``loop``: now, when this handler reads it, late by whatever else the loop was doing,
        as a busy server stamps it; ``kernel``: the kernel's receive time.  With
        ``arrival_jitter_ms`` the frame counts as read a random 0..jitter later, and is
        handled no sooner, as on a loaded server: two IDENTIFYs of a bucket, read on
        different connections, get different lateness, and the later one may look early.
        (The stamp is the draw, not the timer's wake-up: this machine's own scheduling
        noise is already in the loop stamp once.)
        """
        now = anyio.current_time()
        received = (self.ws.arrivals.popleft()
                    if isinstance(self.ws, StampedServerConnection) and self.ws.arrivals
                    else now)
        stamp = received if self.sb.config.arrival_stamp == "kernel" else now
        jitter = self.sb.config.arrival_jitter_ms
        delay = 0.0
        if jitter > 0:
            delay = self.sb.arrival_rng.uniform(0.0, jitter / 1000.0)
            await anyio.sleep(delay)
        return Arrival(stamp + delay, received, delay)

    def on_closed(self, exc: ConnectionClosed) -> None:
        if self.closed or self.sb.stopping:
            self.closed = True
            return
        self.closed = True
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        self.rec("client_close", code=code, reason=reason, tcp_drop=exc.rcvd is None)
        self.detach(kill=code in SESSION_ENDING_CLIENT_CODES)

    def detach(self, *, kill: bool) -> None:
        session, self.session = self.session, None
        self.authed = False
        if session is not None and session.conn is self:
            session.conn = None
            session.detached_at = anyio.current_time()
            if kill:
                self.sb.sessions.kill(session)

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.rec("server_close", code=code, reason=reason)
        if code in FATAL and self.sb.attempts_after_fatal is None:
            self.sb.attempts_after_fatal = 0
        # The client's machine decides from the same test whether to RESUME (§7).
        self.detach(kill=not keeps_session(code))
        await self.ws.close(code, reason)

    def drop(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.rec("drop")
        self.detach(kill=False)
        self.ws.transport.abort()

    # -- timers firing ----------------------------------------------------------------------

    async def on_timers(self, now: float) -> None:
        if self.hb is not None and self.hb.expired(now):
            self.violation("heartbeat_late",
                           f"no heartbeat within {self.hb.interval * (1 + self.hb.tolerance):.3f}"
                           " s")
            await self.close(4000, "heartbeat deadline missed")
            return
        due = [name for name, at in self.timers.items() if at <= now]
        for name in due:
            del self.timers[name]
            await self._fire(name, now)
            if self.closed:
                return
        ready = [f for f in self.faults if f[0] <= now]
        self.faults = [f for f in self.faults if f[0] > now]
        for _, fault in ready:
            await self.apply(fault, now)
            if self.closed:
                return

    async def _fire(self, name: str, now: float) -> None:
        if name == "op7_close":
            self.violation("reconnect_ignored", "client still open after op 7")
            await self.close(4000, "reconnect requested")
        elif name == "op9_send":
            await self.invalid_session(False, delayed=True)
            self.arm("op9_idle", now + self.sb.config.op9_idle_timeout)
        elif name == "op9_idle":
            self.violation("invalid_session_idle", "client did nothing after op 9")
            await self.close(4000 if self.op9_resumable else 4003, "idle after invalid session")
        elif name == "beat_request":
            self.violation("heartbeat_request_ignored",
                           "no heartbeat after the server's op 1")
        elif name.startswith("outage_end:"):
            await commands.guild_back(self, int(name.split(":", 1)[1]))

    # -- faults -----------------------------------------------------------------------------

    async def apply(self, fault: Fault, now: float) -> None:
        """Provoke ``fault`` on this socket (checklist "provoke" items)."""
        self.rec("fault", fault=fault)
        if isinstance(fault, Reconnect):
            await self.send(wire.RECONNECT)
            self.rec("reconnect")
            self.arm("op7_close", now + self.sb.config.reconnect_close_after)
        elif isinstance(fault, InvalidSession):
            await self.invalid_session(fault.resumable)
            self.detach(kill=not fault.resumable)
            self.arm("op9_idle", now + self.sb.config.op9_idle_timeout)
        elif isinstance(fault, Drop):
            self.drop()
        elif isinstance(fault, Zombie):
            self.zombie = fault.on
        elif isinstance(fault, Close):
            await self.close(fault.code, fault.reason)
        elif isinstance(fault, RequestHeartbeat):
            await self.send(wire.HEARTBEAT_REQUEST)
            self.rec("heartbeat_request")
            self.arm("beat_request", now + self.sb.config.heartbeat_request_grace)
        elif isinstance(fault, GuildOutage) and await commands.guild_down(self, fault.guild_id):
            self.arm(f"outage_end:{fault.guild_id}", now + fault.duration)
        elif isinstance(fault, CorruptFrame):
            # Bytes no inflater accepts, ending in the zlib-stream suffix so a client that
            # buffers until 00 00 ff ff tries (and fails) to inflate them at once.
            await self._send_raw(b"\xff\xfe\xfd\xfc garbage \x00\x00\xff\xff")
        elif isinstance(fault, NotJson):
            await self.send(b"\x00this is not JSON {")
        elif isinstance(fault, RefuseConnections):
            self.sb.refuse_connections(fault.duration, now)
            self.drop()

    async def _send_raw(self, message: bytes) -> None:
        async with self.lock:
            if not self.closed:
                with contextlib.suppress(ConnectionClosed):
                    await self.ws.send(message)

    # -- client frames ----------------------------------------------------------------------

    async def on_message(self, raw: bytes, now: float | None = None) -> None:
        """Handle one client frame that arrived at ``now`` (default: the current time)."""
        if now is None:
            now = anyio.current_time()
        try:
            if not self.frames.hit(now):
                raise Reject(4008, "frame_rate",
                             f"more than {self.frames.limit} frames in {self.frames.per} s")
            op, d = parse_frame(raw, self.sb.config.max_payload_bytes)
            if op == Op.HEARTBEAT:
                await self.on_heartbeat(d, now)
                return
            if not self.authed and op not in PRE_AUTH_OPS:
                raise Reject(4003, "not_authenticated", f"op {op} before IDENTIFY/RESUME")
            if op in (Op.IDENTIFY, Op.RESUME):
                self.count_attempt_after_fatal()
            if op == Op.IDENTIFY:
                await self.on_identify(d, now)
            elif op == Op.RESUME:
                await self.on_resume(d, now)
            else:
                self.rec("command", op=op)
                await commands.handle(self, op, d, now)
        except Reject as rej:
            self.violation(rej.rule, rej.detail)
            await self.close(rej.code, rej.rule)

    async def on_heartbeat(self, d: Any, now: float) -> None:
        seq = validate_heartbeat(d)
        if self.hb is None:  # op 7 replaced HELLO; beats are still answered
            self.hb = HeartbeatMonitor(self.sb.config.heartbeat_interval,
                                       self.sb.config.heartbeat_tolerance, now)
        first = self.hb.beats == 0
        gap = self.hb.beat(now)
        requested = self.timers.pop("beat_request", None) is not None
        self.rec("heartbeat", d=seq, gap=gap, first=first, since_hello=now - self.hb.hello_at,
                 expected=self.last_s, requested=requested)
        if first and gap > self.hb.interval:
            self.violation("heartbeat_first_late",
                           f"first heartbeat {gap:.3f} s after HELLO > interval")
        # Only judge sockets that sent dispatches: a resuming client rightly beats with the
        # old socket's seq before RESUME.
        if (self.last_s is not None and seq != self.last_s
                and now - self.last_send_at > _DISPATCH_QUIET):
            self.rec("warning", rule="heartbeat_seq", detail=f"d={seq} last s={self.last_s}")
        if not self.zombie:
            await self.send(wire.HEARTBEAT_ACK)

    async def on_identify(self, d: Any, now: float) -> None:
        sb, cfg = self.sb, self.sb.config
        if self.authed:
            raise Reject(4005, "already_authenticated", "IDENTIFY on an authenticated socket")
        token = d.get("token") if isinstance(d, dict) else None
        if isinstance(token, str) and not sb.token_ok(token):
            # The token is judged before the rest of the payload (4004 beats 4013/4010).
            raise Reject(4004, "authentication_failed", "unknown or reset token")
        ident = validate_identify(d, strict=cfg.strict)
        self.note(ident.notes)
        denied = ident.intents & PRIVILEGED_INTENTS & ~sb.privileged_intents
        if denied:
            raise Reject(4014, "disallowed_intents", f"privileged intents {denied} not enabled")
        shard_id, num_shards = ident.shard or (0, 1)
        self.shard_id = shard_id
        if num_shards % cfg.required_shard_multiple:
            raise Reject(4010, "invalid_shard",
                         f"{num_shards} shards is not a multiple of "
                         f"{cfg.required_shard_multiple}")
        if num_shards < sb.required_shards:
            raise Reject(4011, "sharding_required",
                         f"{num_shards} shards; the bot needs {sb.required_shards}")
        guilds = sb.world.guilds_for(shard_id, num_shards)
        if len(guilds) > cfg.max_guilds_per_shard:
            raise Reject(4011, "sharding_required",
                         f"{len(guilds)} guilds > {cfg.max_guilds_per_shard} per shard")
        self.timers.pop("op9_idle", None)
        self.check_reidentify(shard_id, now)
        bucket, gap = sb.pacer.key(shard_id), sb.pacer.gap(shard_id, now)
        if not sb.pacer.try_acquire(shard_id, now):
            self.rec("identify_rejected", at=now, reason="pacing", bucket=bucket, gap=gap,
                     path=self.path, **self.arrival_details(now))
            self.violation("identify_pacing",
                           f"bucket {bucket} identified again after {gap:.3f} s "
                           f"< {cfg.identify_interval} s")
            if cfg.op9_delay > 0:
                self.arm("op9_send", now + cfg.op9_delay)
            else:
                await self.invalid_session(False)
                self.arm("op9_idle", now + cfg.op9_idle_timeout)
            return
        if not sb.budget.take(now):
            self.rec("identify_rejected", reason="session_budget", bucket=bucket, gap=gap,
                     path=self.path)
            self.violation("session_budget", "IDENTIFY past session_start_limit.total")
            await sb.token_reset(self)
            return
        session = sb.sessions.create(
            shard_id=shard_id, num_shards=num_shards, shard_sent=ident.shard is not None,
            intents=ident.intents, large_threshold=ident.large_threshold, guilds=guilds,
            query=dict(self.query), replay_depth=cfg.replay_buffer, created_at=now)
        self.payload_compress = ident.compress and self.compressor is None
        self.check_order(shard_id, num_shards)
        self.rec("identify", at=now, session_id=session.id, bucket=bucket, gap=gap,
                 path=self.path, **self.arrival_details(now),
                 shard=[shard_id, num_shards], intents=ident.intents, compress=ident.compress,
                 properties=ident.properties)
        await commands.start_session(self, session)
        self.schedule("ready", now)

    def arrival_details(self, now: float) -> dict[str, float]:
        """``received`` and ``jitter`` of the frame stamped ``now`` (see :class:`Arrival`),
        for its record; none for a frame handed in some other way."""
        arrived = self.arrived
        if arrived is None or arrived.at != now:
            return {}
        return {"received": arrived.received, "jitter": arrived.jitter}

    def count_attempt_after_fatal(self) -> None:
        """Checklist 37: after 4004/4010-4014, at most one more attempt, never a loop."""
        sb = self.sb
        if sb.attempts_after_fatal is None:
            return
        sb.attempts_after_fatal += 1
        if sb.attempts_after_fatal == 2:
            self.violation("retry_after_fatal_close",
                           "the client keeps connecting after a close that forbids it")

    def check_order(self, shard_id: int, num_shards: int) -> None:
        """§9: buckets go in ascending order; an earlier round left out is only logged."""
        if self.sb.order_checked_elsewhere:
            return
        mc = self.sb.config.max_concurrency
        done = self.sb.identified_shards.setdefault(num_shards, set())
        skipped = [j for j in range(shard_id - shard_id % mc) if j not in done]
        if skipped:
            self.rec("warning", rule="identify_out_of_order",
                     detail=f"shard {shard_id} before shards {skipped[:5]} of an earlier round")
        done.add(shard_id)

    def check_reidentify(self, shard_id: int, now: float) -> None:
        """Log (never fail) IDENTIFYs on the resume URL, or < 1 s after op 9 (§6, item 34)."""
        if self.path == "resume" and not self.sent_op9:
            self.rec("warning", rule="identify_on_resume_url",
                     detail="IDENTIFY should go to the cached connect url")
        since = self.sb.last_op9.pop(shard_id, None)
        if since is not None and now - since < REIDENTIFY_MIN_DELAY:
            self.rec("warning", rule="reidentify_too_soon",
                     detail=f"IDENTIFY {now - since:.3f} s after op 9 (advised: 1-5 s)")

    async def on_resume(self, d: Any, now: float) -> None:
        sb, cfg = self.sb, self.sb.config
        if self.authed:
            raise Reject(4005, "already_authenticated", "RESUME on an authenticated socket")
        req = validate_resume(d)
        self.note(req.notes)
        if not sb.token_ok(req.token):
            raise Reject(4004, "authentication_failed", "unknown or reset token")
        self.timers.pop("op9_idle", None)
        if self.path != "resume":
            self.rec("warning", rule="resume_on_connect_url",
                     detail="RESUME should go to resume_gateway_url")
        session = sb.sessions.get(req.session_id, now)
        seq = req.seq or 0
        reason = None
        if session is None:
            reason = "unknown_or_expired"
        elif seq > session.seq:
            self.shard_id = session.shard_id
            if not cfg.resume_seq_ahead_op9:
                sb.sessions.kill(session)
                raise Reject(4007, "invalid_seq", f"seq {seq} > last sent {session.seq}")
            reason = "seq_ahead"
        elif session.replay_after(seq) is None:
            reason = "replay_evicted"
        if reason is not None or session is None:
            self.rec("resume_rejected", reason=reason, session_id=req.session_id, seq=req.seq,
                     path=self.path)
            await self.invalid_session(False)
            self.arm("op9_idle", now + cfg.op9_idle_timeout)
            return
        self.shard_id = session.shard_id
        if session.query != self.query:
            self.rec("warning", rule="resume_query_mismatch",
                     detail=f"{session.query} then {self.query}")
            if cfg.strict and session.query.get("v") != self.query.get("v"):
                raise Reject(4012, "invalid_api_version", "RESUME with a different v")
        old = session.conn
        if old is not None and old is not self:
            # §5: the session moves; the old socket is closed 4000.
            old.session = None
            old.authed = False
            session.conn = None
            sb.spawn(old.close, 4000, "session resumed elsewhere")
        self.rec("resume", session_id=session.id, seq=req.seq, path=self.path)
        await commands.resume_session(self, session, seq)
        self.schedule("ready", now)

