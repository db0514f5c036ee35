"""The Shard: lacord.shard's API in Python, a thin websocket + anyio driver around ShardMachine.

Everything the gateway protocol decides is decided by :class:`~shardctl.gateway.machine.
ShardMachine`; this module only executes its actions (send, emit, close, acquire the session
limiter, reconnect after a delay), feeds it what arrives, and sleeps until its next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeAlias

import anyio
import anyio.abc
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from shardctl.errors import (
    ConfigurationError,
    GatewayFatalError,
    PayloadError,
    ProtocolError,
)
from shardctl.gateway.lifecycle import SHARD_READY, SHARD_RESUMED
from shardctl.gateway.machine import (
    Action,
    Close,
    Emit,
    Fatal,
    IdentifyRejected,
    NeedIdentify,
    Reconnect,
    Refused,
    Send,
    ShardMachine,
    ShardState,
    Stop,
)
from shardctl.gateway.opcodes import Op
from shardctl.gateway.payloads import (
    presence_frame,
    request_guild_members_frame,
    voice_state_frame,
)
from shardctl.gateway.resume_url import resume_url_refusal
from shardctl.worker.limiter import LocalSessionLimiter, RejectionAware, SessionLimiter

__all__ = ["USER_AGENT", "CommandResult", "Shard"]

log = logging.getLogger(__name__)

#: REST and gateway callers identify themselves like this (protocol §1).
USER_AGENT: Final = "DiscordBot (https://github.com/shardctl/shardctl, 0.1.0)"
#: Discord compresses in the payload, and READY of a big bot is large: be generous.
MAX_MESSAGE_SIZE: Final = 64 * 2**20
#: How long opening a socket (TCP + TLS + upgrade) or closing one may take.
OPEN_TIMEOUT: Final = 15.0
CLOSE_TIMEOUT: Final = 3.0
#: Code used when the shard's task is cancelled from outside: not 1000/1001, so the session
#: stays resumable by whoever takes over (protocol §7).
CANCEL_CLOSE_CODE: Final = 4000

Output: TypeAlias = Callable[["Shard", str, Any], Awaitable[None] | None]
#: Called synchronously with every event as the machine emitted it, before ``output``: the
#: worker's bus publisher reads the raw payload bytes from ``emit.frame`` (never re-encoded).
#: What it returns, if not None, is awaited before the shard reads on (flow control: the
#: worker's bus pushing back).
RawOutput: TypeAlias = Callable[["Shard", Emit], Awaitable[None] | None]
Gateway: TypeAlias = str | Callable[["Shard"], str | Awaitable[str]]


class _StopSignal:
    """The connection loop ends: shutdown, fatal close, or no auto-reconnect."""


_STOP: Final = _StopSignal()
_Outcome: TypeAlias = Reconnect | _StopSignal | None


@dataclass(slots=True)
class CommandResult:
    """lacord's ``true`` / ``false, err``: truthy when sent; unpacks as ``ok, error``.

    ``retry_after`` is set when a rate limit refused the command; ``value`` carries what a
    command returns (the members of :meth:`Shard.fetch_guild_members`).
    """

    ok: bool
    error: str | None = None
    retry_after: float | None = None
    value: Any = None

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self) -> Any:
        return iter((self.ok, self.error))


@dataclass(slots=True)
class _MemberCollector:
    members: list[Any] = field(default_factory=list)
    not_found: list[Any] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    count: int | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def feed(self, d: Mapping[str, Any]) -> None:
        index, count = d.get("chunk_index"), d.get("chunk_count")
        if not isinstance(index, int) or not isinstance(count, int) or index in self.seen:
            return
        self.seen.add(index)
        self.count = count
        self.members.extend(d.get("members") or ())
        self.not_found.extend(d.get("not_found") or ())
        if len(self.seen) >= count:
            self.done.set()


def _loop_clock() -> Callable[[], float]:
    """``anyio.current_time`` without its per-call backend lookup (~1 µs a call, paid per
    message).  On asyncio, anyio's clock *is* the loop's ``time()``; elsewhere, anyio's."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:
        return anyio.current_time


async def _close_reading(ws: ClientConnection, code: int, reason: str) -> None:
    """Close (or finish closing) ``ws``, reading and dropping whatever still arrives.

    Nobody reads the socket once the pump has stopped, and websockets stops reading from the
    network when its queue is full: behind a burst the server's close frame is never read,
    and the socket stays half-closed until the close timeout (Discord then still holds the
    session and counts missed heartbeats).  What is dropped was not forwarded, so a RESUME
    replays it.
    """
    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv(decode=False)

    async with anyio.create_task_group() as tg:
        tg.start_soon(discard)
        await ws.close(code, reason)
        tg.cancel_scope.cancel()


def _complete_message_buffered(ws: ClientConnection) -> bool:
    """Whether websockets already holds a whole message, so ``recv()`` will not wait.

    Reads websockets' receive queue (``recv_messages.frames``; checked against 17); if
    that ever moves, this says False and every receive takes the deadline path.
    """
    queue: Any = getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue",
                         None)
    if not queue:
        return False
    return getattr(queue[-1], "fin", False) is True


def _compression(value: bool | str | None) -> str | None:
    if value is True:
        return "zlib-stream"
    if value is False or value is None:
        return None
    if value in ("zlib-stream", "zstd-stream"):
        return value
    raise ConfigurationError(f"transport_compression must be True, False, 'zlib-stream' or "
                     f"'zstd-stream', got {value!r}")


class Shard:
    """One gateway connection, reconnecting and resuming as the protocol requires.

    Options are lacord's (``Shard(*, id, token, total_shard_count, gateway, output, intents,
    transport_compression=True, auto_reconnect=True, receive_timeout=60.0,
    large_threshold=50, presence=None, session_limiter=None)``).  ``gateway`` is a URL or a
    callable (sync or async) called with the shard before every fresh connect (never before
    a RESUME, which goes to the session's ``resume_gateway_url``).  ``output(shard, name,
    data)`` (sync or async, awaited in order) gets every dispatch (``data`` = the parsed
    ``d``) and the lifecycle events ``SHARD_READY``, ``SHARD_RESUMED``, ``INVALID_SESSION``
    and ``DISCONNECT``, in the order they happened.  Beyond lacord: ``raw_output`` (the
    undecoded frames, for the worker's bus) and ``heartbeat_ack_timeout`` (seconds a beat's
    ACK may take before the connection counts as a zombie; default 7.5 % of the heartbeat
    interval, at least 1 s: :func:`shardctl.gateway.heartbeat.default_ack_timeout`).  A
    ``session_limiter`` that has ``identify_rejected`` (:class:`~shardctl.worker.limiter.
    RejectionAware`) hears of every IDENTIFY Discord answered with op 9.

    lacord's ``loop`` is anyio structured concurrency:

    - ``await shard.connect()`` runs the connection, inside a task group the shard owns for
      it, until the shard closes for good: :meth:`shutdown`, a close while
      ``auto_reconnect`` is off, or a fatal close, which raises its
      :class:`~shardctl.errors.GatewayFatalError` (no retry loop).  Run it as a task:
      ``tg.start_soon(shard.connect)``, or ``await tg.start(shard.connect)`` to return once
      the shard is READY (or RESUMED).  :meth:`run` is the same coroutine.
    - ``async with shard:`` does that for you: it starts the connection in its own task group,
      returns once READY, and on exit shuts the shard down (code 4009, session kept) and
      waits for the connection to end.

    Commands (:meth:`update_status`, :meth:`update_voice`, :meth:`request_guild_members`)
    return a :class:`CommandResult` and never raise for a closed connection or a rate limit.
    """

    def __init__(
        self,
        *,
        id: int,  # lacord's option name, shadowing the builtin on purpose
        token: str,
        total_shard_count: int,
        gateway: Gateway,
        output: Output | None,
        intents: int,
        transport_compression: bool | str = True,
        auto_reconnect: bool = True,
        receive_timeout: float = 60.0,
        large_threshold: int = 50,
        presence: Mapping[str, Any] | None = None,
        session_limiter: SessionLimiter | None = None,
        raw_output: RawOutput | None = None,
        heartbeat_ack_timeout: float | None = None,
    ) -> None:
        if not 0 <= id < total_shard_count:
            raise ConfigurationError(f"shard id {id} is outside 0..{total_shard_count - 1}")
        self._id = id
        self._gateway = gateway
        self._output = output
        self._raw_output = raw_output
        self._limiter: SessionLimiter = session_limiter or LocalSessionLimiter()
        self._machine = ShardMachine(
            shard_id=id, shard_count=total_shard_count, token=token, intents=intents,
            rng=random.Random(), compression=_compression(transport_compression),
            large_threshold=large_threshold, presence=presence,
            receive_timeout=receive_timeout, auto_reconnect=auto_reconnect,
            heartbeat_ack_timeout=heartbeat_ack_timeout)
        self._ws: ClientConnection | None = None
        self._running = False
        self._outcome: _Outcome = None  # decided by disconnect()/shutdown() from other tasks
        self._wake = anyio.Event()
        self._attempt_scope: anyio.CancelScope | None = None
        self._task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        self._started = False
        self._collectors: dict[str, _MemberCollector] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._clock: Callable[[], float] = anyio.current_time
        self._refused_resumes: set[str] = set()  # logged once each

    def __repr__(self) -> str:
        m = self._machine
        return (f"<Shard id={self._id}/{m.shard_count} state={m.state.value} "
                f"session={m.session_id!r} seq={m.seq}>")

    # ------------------------------------------------------------------ properties

    @property
    def id(self) -> int:
        return self._id

    @property
    def total_shard_count(self) -> int:
        return self._machine.shard_count

    @property
    def state(self) -> str:
        """``closed``, ``connecting``, ``hello``, ``identifying``, ``resuming``, ``ready`` or
        ``reconnecting`` (the machine's transition table)."""
        return self._machine.state.value

    @property
    def session_id(self) -> str | None:
        return self._machine.session_id

    @property
    def seq(self) -> int | None:
        return self._machine.seq

    @property
    def latency(self) -> float | None:
        """Seconds between the last heartbeat and its ACK (None before the first ACK)."""
        return self._machine.latency

    @property
    def resume_gateway_url(self) -> str | None:
        return self._machine.resume_gateway_url

    @property
    def auto_reconnect(self) -> bool:
        return self._machine.auto_reconnect

    @auto_reconnect.setter
    def auto_reconnect(self, value: bool) -> None:
        self._machine.auto_reconnect = value

    def restore_session(self, session_id: str, resume_gateway_url: str,
                        seq: int | None) -> None:
        """Before :meth:`connect`: RESUME this session (run by another process) instead of
        identifying; a session Discord no longer knows falls back to IDENTIFY."""
        self._machine.restore_session(session_id, resume_gateway_url, seq)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Shard:
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            await group.start(self.connect)
        except BaseException as exc:
            try:
                await group.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group_exc:
                # A fatal close before READY: raise it as itself, like connect() does.
                inner = group_exc.exceptions
                if len(inner) == 1 and isinstance(inner[0], GatewayFatalError):
                    raise inner[0] from None
                raise
            raise
        self._group = group
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        group, self._group = self._group, None
        await self.shutdown()
        if group is None:
            return None
        return await group.__aexit__(exc_type, exc, tb)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Same as :meth:`connect`."""
        await self.connect(task_status=task_status)

    async def connect(self, *,
                      task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                      ) -> None:
        """Connect and stay connected until the shard closes for good (see the class doc).

        With ``await tg.start(shard.connect)`` it reports started at the first READY or
        RESUMED (or when the shard closes before either).
        """
        if self._running:
            raise RuntimeError(f"shard {self._id} is already connected")
        self._running = True
        self._outcome = None
        self._wake = anyio.Event()
        self._task_status = task_status
        self._started = False
        try:
            fatal = await self._loop()
        finally:
            self._running = False
            self._ws = None
            self._attempt_scope = None
            if self._machine.state is not ShardState.CLOSED:
                # Cancelled from outside: the socket was closed with CANCEL_CLOSE_CODE, so
                # the session stays resumable by a later connect().
                self._machine.shutdown(CANCEL_CLOSE_CODE, "cancelled", anyio.current_time())
        if fatal is not None:
            raise fatal
        if not self._started:
            self._started = True
            task_status.started()  # closed before READY: let tg.start() return, not hang

    async def _loop(self) -> GatewayFatalError | None:
        m = self._machine
        plan: Reconnect | None = m.start(anyio.current_time())
        while plan is not None:
            if plan.delay > 0:
                with anyio.move_on_after(plan.delay):
                    await self._wake.wait()
            if self._outcome is _STOP or m.state is ShardState.CLOSED:
                return None
            outcome = await self._attempt(plan)
            if isinstance(outcome, Fatal):
                return outcome.error
            plan = outcome
        return None

    async def _url(self, plan: Reconnect) -> str:
        if plan.resume:
            if self._resume_allowed(plan.url):
                return plan.url
            plan = self._machine.resume_refused(anyio.current_time())
        gateway = self._gateway
        if isinstance(gateway, str):
            return self._machine.use_gateway(gateway)
        # Called before every fresh connect, never before a RESUME (lacord's gateway option).
        base = gateway(self)
        if inspect.isawaitable(base):
            base = await base
        return self._machine.use_gateway(base)

    def _resume_allowed(self, url: str) -> bool:
        """Defense in depth: a RESUME carries the token, so it goes only where
        :func:`~shardctl.gateway.resume_url.resume_url_refusal` allows, whoever handed us
        the URL (READY, or a restored session from the supervisor)."""
        trusted = [g for g in (self._gateway, self._machine.connect_url) if isinstance(g, str)]
        refusal = resume_url_refusal(url, trusted)
        if refusal is None:
            return True
        if refusal not in self._refused_resumes:
            self._refused_resumes.add(refusal)
            log.warning("shard %d: not resuming there: %s; identifying instead", self._id,
                        refusal)
        return False

    async def _attempt(self, plan: Reconnect) -> Reconnect | Fatal | None:
        """One socket: open it, pump it, return what the machine decided next."""
        m = self._machine
        self._outcome = None
        with anyio.CancelScope() as scope:
            self._attempt_scope = scope
            try:
                url = await self._url(plan)
            except ValueError as exc:
                raise ConfigurationError(f"shard {self._id}: bad gateway URL: {exc}") from None
            try:
                ws = await ws_connect(
                    url, compression=None, max_size=MAX_MESSAGE_SIZE,
                    user_agent_header=USER_AGENT, open_timeout=OPEN_TIMEOUT,
                    close_timeout=CLOSE_TIMEOUT, ping_interval=None)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.warning("shard %d: connecting failed: %s", self._id, type(exc).__name__)
                failed = m.connect_failed(type(exc).__name__, anyio.current_time())
                return await self._decide(failed)
            try:
                self._ws = ws
                return await self._pump(ws)
            finally:
                self._ws = None
                with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
                    await _close_reading(ws, CANCEL_CLOSE_CODE, "shard stopped")
        # Only reached when shutdown() cancelled the socket being opened.
        return None

    async def _decide(self, actions: list[Action]) -> Reconnect | Fatal | None:
        """Execute actions that arrive with no socket; return the next plan."""
        result: Reconnect | Fatal | None = None
        for action in actions:
            if isinstance(action, Emit):
                await self._emit(action)
            elif isinstance(action, (Reconnect, Fatal)):
                result = action
        return result

    async def _pump(self, ws: ClientConnection) -> Reconnect | Fatal | None:
        m = self._machine
        self._clock = _loop_clock()
        async with anyio.create_task_group() as conn:
            try:
                outcome = await self._execute(m.opened(anyio.current_time()), ws, conn)
                while outcome is None and self._outcome is None:
                    outcome = await self._step(ws, conn)
                if outcome is None:
                    outcome = self._outcome
            finally:
                conn.cancel_scope.cancel()  # e.g. an identify still waiting for the limiter
        if isinstance(outcome, (Reconnect, Fatal)):
            return outcome
        return None

    async def _step(self, ws: ClientConnection, conn: anyio.abc.TaskGroup
                    ) -> Reconnect | Fatal | _StopSignal | None:
        # The per-message path (DESIGN.md §3): one cancel scope on the machine's absolute
        # deadline and one clock read, not fail_after's relative timeout and three reads.
        m = self._machine
        if _complete_message_buffered(ws):
            # Already here: recv() returns without waiting, so it needs no deadline (and a
            # cancel scope costs more than the rest of the message's handling in the worker).
            try:
                ready = await ws.recv()
            except ConnectionClosed:
                pass  # handled below, with the deadline, like any other close
            else:
                return await self._handle(ready, self._clock(), ws, conn)
        deadline = m.next_deadline()
        message: str | bytes | None = None
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
            try:
                message = await ws.recv()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                closed = m.closed(code, reason, self._clock())
                scope.deadline = math.inf  # never cancel the close handling itself
                outcome = await self._execute(closed, ws, conn)
                return outcome if outcome is not None else (self._outcome or _STOP)
        now = self._clock()
        if message is None:
            return await self._execute(m.tick(now), ws, conn)
        return await self._handle(message, now, ws, conn)

    async def _handle(self, message: str | bytes, now: float, ws: ClientConnection,
                      conn: anyio.abc.TaskGroup) -> Reconnect | Fatal | _StopSignal | None:
        m = self._machine
        outcome = await self._execute(m.receive(message, now), ws, conn)
        if outcome is None:
            deadline = m.next_deadline()
            if deadline is not None and deadline <= now:
                outcome = await self._execute(m.tick(now), ws, conn)
        return outcome

    async def _execute(self, actions: list[Action], ws: ClientConnection | None,
                       conn: anyio.abc.TaskGroup | None
                       ) -> Reconnect | Fatal | _StopSignal | None:
        outcome: Reconnect | Fatal | _StopSignal | None = None
        for action in actions:
            if isinstance(action, Send):
                if ws is not None:
                    await self._send(ws, action.data)
            elif isinstance(action, Emit):
                await self._emit(action)
            elif isinstance(action, Close):
                if ws is not None:
                    with anyio.move_on_after(CLOSE_TIMEOUT):
                        await ws.close(action.code, action.reason[:120])
            elif isinstance(action, NeedIdentify):
                if ws is not None and conn is not None:
                    conn.start_soon(self._identify, ws)
            elif isinstance(action, IdentifyRejected):
                self._identify_rejected(action.after)
            elif isinstance(action, (Reconnect, Fatal)):
                outcome = action
            elif isinstance(action, Stop):
                outcome = _STOP
        return outcome

    async def _send(self, ws: ClientConnection, data: bytes) -> bool:
        try:
            await ws.send(data.decode())  # client frames are JSON text (protocol §8)
        except ConnectionClosed:
            return False  # the receive side reports the close to the machine
        return True

    def _raw(self, raw_output: RawOutput, action: Emit) -> Awaitable[None] | None:
        try:
            return raw_output(self, action)
        except Exception:
            log.exception("shard %d: raw output failed for %s", self._id, action.name)
            return None

    async def _identify(self, ws: ClientConnection) -> None:
        # Every IDENTIFY goes through the session limiter; a RESUME never does (protocol §5).
        async with self._limiter.identify(self._id):
            await self._execute(self._machine.identify(anyio.current_time()), ws, None)

    def _identify_rejected(self, after: float) -> None:
        # The limiter logs it with its figures; one warning per op 9 is enough.
        log.debug("shard %d: IDENTIFY answered with op 9 after %.3f s", self._id, after)
        if isinstance(self._limiter, RejectionAware):
            self._limiter.identify_rejected(self._id, after)

    async def _emit(self, action: Emit) -> None:
        name = action.name
        if self._raw_output is not None:
            pause = self._raw(self._raw_output, action)
            if pause is not None:
                await pause
        if self._output is None and name != "GUILD_MEMBERS_CHUNK":
            data: Any = None  # nobody reads it: leave the payload unparsed (DESIGN.md §3)
        else:
            try:
                data = action.data
            except ProtocolError as exc:
                log.warning("shard %d: %s payload is not JSON: %s", self._id, name, exc)
                data = None
        if name == "GUILD_MEMBERS_CHUNK" and isinstance(data, dict):
            nonce = data.get("nonce")
            collector = self._collectors.get(nonce) if isinstance(nonce, str) else None
            if collector is not None:
                collector.feed(data)
        try:
            if self._output is not None:
                result = self._output(self, name, data)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            # A bug in the consumer must not take the gateway connection down with it.
            log.exception("shard %d: output callback failed for %s", self._id, name)
        if name in (SHARD_READY, SHARD_RESUMED) and not self._started:
            # After the output saw it, so whoever awaited tg.start() sees a READY shard.
            self._started = True
            self._task_status.started()

    # ------------------------------------------------------------------ user requests

    async def disconnect(self, why: str = "requested", code: int = 4009) -> None:
        """Close the connection with ``code``; an auto-reconnecting shard reconnects.

        4009 (the default) keeps the session resumable; 1000/1001 end it (protocol §7).
        """
        actions = self._machine.disconnect(code, why, anyio.current_time())
        await self._apply_user(actions)

    async def shutdown(self, why: str = "shutdown", code: int = 4009) -> None:
        """Disconnect for good: no reconnect, ``connect()`` returns.  The session survives
        unless ``code`` is 1000/1001, so a later ``connect()`` RESUMEs."""
        was_open = self._machine.socket_open
        actions = self._machine.shutdown(code, why, anyio.current_time())
        self._outcome = _STOP
        self._wake.set()
        await self._apply_user(actions)
        if not was_open and self._attempt_scope is not None:
            self._attempt_scope.cancel()  # still opening the socket

    async def _apply_user(self, actions: list[Action]) -> None:
        # Publish the decision before closing: the pump wakes up on the close and reads it.
        for action in actions:
            if isinstance(action, Reconnect):
                self._outcome = action
            elif isinstance(action, Stop):
                self._outcome = _STOP
        await self._execute(actions, self._ws, None)

    async def _command(self, data: bytes, op: int) -> CommandResult:
        ws = self._ws
        if ws is None:
            return CommandResult(False, f"shard {self._id} is not connected")
        decision = self._machine.command(data, anyio.current_time(), op=op)
        if isinstance(decision, Refused):
            return CommandResult(False, decision.reason, retry_after=decision.retry_after)
        if not await self._send(ws, decision.data):
            return CommandResult(False, f"shard {self._id}: the connection closed")
        return CommandResult(True)

    async def update_status(self, presence: Mapping[str, Any]) -> CommandResult:
        """Op 3 presence update (5 per 20 s per shard)."""
        try:
            data = presence_frame(presence)
        except PayloadError as exc:
            return CommandResult(False, str(exc))
        return await self._command(data, Op.PRESENCE_UPDATE)

    async def update_voice(self, guild_id: int | str, channel_id: int | str | None,
                           self_mute: bool = False, self_deaf: bool = False) -> CommandResult:
        """Op 4 voice state update (``channel_id=None`` leaves)."""
        try:
            data = voice_state_frame(guild_id, channel_id, self_mute, self_deaf)
        except PayloadError as exc:
            return CommandResult(False, str(exc))
        return await self._command(data, Op.VOICE_STATE_UPDATE)

    async def request_guild_members(
        self, guild_id: int | str, *, query: str | None = None, limit: int | None = None,
        presences: bool = False, user_ids: int | str | Sequence[int | str] | None = None,
        nonce: str | None = None,
    ) -> CommandResult:
        """Op 8; the members arrive as GUILD_MEMBERS_CHUNK dispatches on the output."""
        try:
            data = request_guild_members_frame(guild_id, query=query, limit=limit,
                                               presences=presences, user_ids=user_ids,
                                               nonce=nonce)
        except PayloadError as exc:
            return CommandResult(False, str(exc))
        return await self._command(data, Op.REQUEST_GUILD_MEMBERS)

    async def fetch_guild_members(
        self, guild_id: int | str, *, query: str | None = None, limit: int | None = None,
        presences: bool = False, user_ids: int | str | Sequence[int | str] | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - a timeout is a result here, not an exception
    ) -> CommandResult:
        """Op 8 with a fresh nonce; collects every chunk of that nonce.

        Returns a :class:`CommandResult` whose ``value`` is the list of member objects (in
        chunk order of arrival); ``error`` says why not on a refusal or a timeout.
        """
        nonce = secrets.token_hex(8)
        collector = _MemberCollector()
        self._collectors[nonce] = collector
        try:
            sent = await self.request_guild_members(
                guild_id, query=query, limit=limit, presences=presences, user_ids=user_ids,
                nonce=nonce)
            if not sent:
                return sent
            with anyio.move_on_after(timeout):
                await collector.done.wait()
            if not collector.done.is_set():
                got = len(collector.seen)
                return CommandResult(
                    False, f"timed out after {timeout:g} s waiting for member chunks "
                    f"({got} of {collector.count if collector.count is not None else '?'})",
                    value=collector.members)
            return CommandResult(True, value=collector.members)
        finally:
            del self._collectors[nonce]
