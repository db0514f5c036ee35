"""The shard connection state machine: raw websocket messages and ``now`` in, actions out.

Rules of this file (after h11's ``_state.py``):

1. Every decision of the gateway protocol lives here, as data: heartbeat timing, zombie
   detection, resume-or-identify, reconnect delays, fatal closes, outbound rate limits.
   The driver (``worker.shard.Shard``) only executes the actions and sleeps until
   :meth:`ShardMachine.next_deadline`.
2. No I/O, no clock, no global state: time is the ``now`` argument (monotonic seconds) and
   randomness is the injected ``random.Random``.
3. The legal state transitions are the table below; any other transition is a bug in this
   file and raises :class:`IllegalTransition`.

Lifecycle (DESIGN.md §5)::

    closed ─start()→ connecting ─HELLO→ hello ─identify()→ identifying ─READY──→ ready
                                          └──(session)───→ resuming ──RESUMED─→ ready
    any live state ─op 7 / op 9 / close / zombie / timeout→ reconnecting ─HELLO→ hello ...
    any state ─shutdown() / fatal close / no auto-reconnect→ closed

One connection = one socket: :meth:`ShardMachine.opened` starts it (fresh inflater, fresh
outbound rate limit, no heartbeat until HELLO), and it ends either because the machine
decided so (a :class:`Close` action, always followed by :class:`Reconnect`, :class:`Stop` or
:class:`Fatal`) or because the driver reports :meth:`ShardMachine.closed`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from shardctl.errors import (
    AuthenticationError,
    DisallowedIntentsError,
    GatewayFatalError,
    InvalidIntentsError,
    ProtocolError,
    ShardingError,
)
from shardctl.gateway.backoff import backoff
from shardctl.gateway.closecodes import (
    SESSION_ENDING_CLIENT_CODES,
    ZOMBIE_CLOSE_CODE,
    CloseAction,
    CloseCode,
    classify,
)
from shardctl.gateway.frames import Frame, read_frame
from shardctl.gateway.heartbeat import Heartbeat, check_ack_timeout
from shardctl.gateway.inflate import new_inflater
from shardctl.gateway.intents import Intents
from shardctl.gateway.lifecycle import DISCONNECT, INVALID_SESSION, SHARD_READY, SHARD_RESUMED
from shardctl.gateway.opcodes import Op
from shardctl.gateway.payloads import heartbeat_frame, identify_frame, resume_frame
from shardctl.gateway.ratelimit import PRESENCE_LIMIT, CommandRateLimit, SlidingWindow


class ShardState(enum.Enum):
    CLOSED = "closed"              # not connected, no reconnect planned (initial and final)
    CONNECTING = "connecting"      # first socket of a start(): opening, awaiting HELLO
    HELLO = "hello"                # HELLO received; IDENTIFY waits for the session limiter
    IDENTIFYING = "identifying"    # IDENTIFY sent, awaiting READY
    RESUMING = "resuming"          # RESUME sent, awaiting RESUMED (and the replay)
    READY = "ready"                # session live
    RECONNECTING = "reconnecting"  # previous socket gone; next one planned/opening


_S = ShardState
#: The one table of legal transitions (from → allowed destinations).
TRANSITIONS: Final[Mapping[ShardState, frozenset[ShardState]]] = {
    _S.CLOSED: frozenset({_S.CONNECTING}),
    _S.CONNECTING: frozenset({_S.HELLO, _S.RECONNECTING, _S.CLOSED}),
    _S.HELLO: frozenset({_S.IDENTIFYING, _S.RESUMING, _S.RECONNECTING, _S.CLOSED}),
    _S.IDENTIFYING: frozenset({_S.READY, _S.RECONNECTING, _S.CLOSED}),
    _S.RESUMING: frozenset({_S.READY, _S.RECONNECTING, _S.CLOSED}),
    _S.READY: frozenset({_S.RECONNECTING, _S.CLOSED}),
    _S.RECONNECTING: frozenset({_S.HELLO, _S.RECONNECTING, _S.CLOSED}),
}

#: Gateway API version and encoding, sent on every connect and resume URL (protocol §1, §5).
API_VERSION: Final = 10
ENCODING: Final = "json"
#: Code for the connections we drop to reconnect (op 7, op 9, receive timeout, a corrupt
#: frame): anything but 1000/1001 keeps the session resumable (protocol §7).
RECONNECT_CLOSE_CODE: Final = CloseCode.UNKNOWN_ERROR
#: The first beat is due at ``interval * jitter`` and must arrive within [0, interval]
#: (protocol §3): jitter is drawn from [0, 0.9) so a busy event loop's lateness cannot push
#: a beat drawn near 1.0 past the interval.
FIRST_BEAT_SPREAD: Final = 0.9
#: Op 9 d:false → wait a random 1-5 s before re-identifying (protocol §6, [doc, old]).
INVALID_SESSION_DELAY: Final = (1.0, 5.0)
#: An op 9 this soon after our IDENTIFY, before READY, is Discord refusing the IDENTIFY (too
#: soon after the previous one of its bucket, by Discord's clock: protocol §9): the session
#: limiter hears of it.  Discord answers at once; a much later op 9 is about something else.
IDENTIFY_REJECT_WINDOW: Final = 5.0
#: Resume attempts whose socket never opened before the RESUME goes to the cached connect
#: URL instead of ``resume_gateway_url`` (that host may be the one that is down).  The
#: session is kept: a gateway outage of a few seconds must not cost an IDENTIFY per shard,
#: and a RESUME is always safe to try -- Discord answers op 9 d:false when the session is
#: gone, and the shard then IDENTIFYs (protocol §5, §7).
MAX_FAILED_RESUME_CONNECTS: Final = 3


_FROM_FRAME: Final[Any] = object()


class IllegalTransition(RuntimeError):
    """A transition outside :data:`TRANSITIONS`: a bug in the machine, not in the peer."""


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` (an encoded client frame) as one text message."""

    data: bytes
    op: int


class Emit:
    """Hand an event to the output: a dispatch (``frame`` set) or a lifecycle event.

    A dispatch's ``data`` is its frame's ``d``, parsed on first access (the worker forwards
    ``frame.raw`` and never needs it); it raises ProtocolError if the payload is not JSON.
    """

    __slots__ = ("_data", "frame", "name")

    def __init__(self, name: str, data: Any = _FROM_FRAME, frame: Frame | None = None) -> None:
        self.name, self._data, self.frame = name, data, frame

    @property
    def data(self) -> Any:
        if self._data is _FROM_FRAME:
            return None if self.frame is None else self.frame.d
        return self._data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Emit):
            return NotImplemented
        return (self.name, self.frame, self.data) == (other.name, other.frame, other.data)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Emit(name={self.name!r}, frame={self.frame!r})"


@dataclass(frozen=True, slots=True)
class Close:
    """Close the current socket with ``code``; a Reconnect, Stop or Fatal follows."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class NeedIdentify:
    """Acquire the session limiter for this shard, then call :meth:`ShardMachine.identify`."""


@dataclass(frozen=True, slots=True)
class Fatal:
    """The shard cannot continue with these settings; raise ``error``, never retry."""

    error: GatewayFatalError


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Open a new socket after ``delay`` seconds.

    ``resume`` → ``url`` is the session's resume URL (with our query); the driver must use it.
    Otherwise ``url`` is the cached connect URL with our query ("" if none is cached yet);
    a driver whose gateway is a callable resolves a fresh one instead.
    """

    url: str
    resume: bool
    delay: float


@dataclass(frozen=True, slots=True)
class IdentifyRejected:
    """Discord answered this connection's IDENTIFY with op 9, ``after`` seconds after it was
    sent: tell the session limiter, whose pace was too fast by Discord's clock.  (The
    re-IDENTIFY that follows goes through the limiter as a new request.)"""

    after: float


@dataclass(frozen=True, slots=True)
class Stop:
    """The socket is gone and no reconnect follows (shutdown, or auto_reconnect off)."""

    reason: str


Action: TypeAlias = (Send | Emit | Close | NeedIdentify | IdentifyRejected | Fatal | Reconnect
                     | Stop)


@dataclass(frozen=True, slots=True)
class Refused:
    """A user command that was not sent, and why (never an exception: lacord's false, err)."""

    reason: str
    retry_after: float | None = None


# --------------------------------------------------------------------------- helpers


def gateway_url(base: str, compression: str | None) -> str:
    """``base`` with our ``v``/``encoding``/``compress`` query (replacing any given ones)."""
    parts = urlsplit(base)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"gateway URL must be ws:// or wss://, got {base!r}")
    ours = {"v", "encoding", "compress"}
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    query += [("v", str(API_VERSION)), ("encoding", ENCODING)]
    if compression:
        query.append(("compress", compression))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def fatal_error(code: int, *, shard_id: int, intents: int) -> GatewayFatalError:
    """The exception for a close code that forbids reconnecting, naming the cause and fix."""
    info = classify(code)
    head = f"shard {shard_id}: gateway closed with {code} ({info.name}): {info.message}"
    if code == CloseCode.AUTHENTICATION_FAILED:
        return AuthenticationError(
            f"{head}. Check the bot token (Developer Portal → Bot → Reset Token); "
            "shardctl does not retry a rejected token.", code=code)
    if code in (CloseCode.INVALID_SHARD, CloseCode.SHARDING_REQUIRED):
        return ShardingError(
            f"{head}. Fetch /gateway/bot again and restart with its recommended shard count.",
            code=code)
    if code == CloseCode.INVALID_INTENTS:
        return InvalidIntentsError(f"{head} (intents sent: {intents}).", code=code)
    if code == CloseCode.DISALLOWED_INTENTS:
        names = Intents(intents).privileged.names()
        asked = ", ".join(names) if names else "none"
        return DisallowedIntentsError(
            f"{head}. Privileged intents requested: {asked}. Enable them in the Developer "
            "Portal → Bot → Privileged Gateway Intents, or remove them from the intents.",
            code=code, intents=names)
    return GatewayFatalError(f"{head}.", code=code)


# --------------------------------------------------------------------------- machine


class ShardMachine:
    """One shard's gateway protocol, sans I/O.

    Driver contract: call :meth:`start` to get the first :class:`Reconnect`; for every
    Reconnect, wait its delay, open a socket and call :meth:`opened`; feed each message to
    :meth:`receive`; call :meth:`tick` when :meth:`next_deadline` passes; report a socket the
    machine did not close itself with :meth:`closed`; answer :class:`NeedIdentify` by
    acquiring the session limiter and calling :meth:`identify`.
    """

    def __init__(
        self,
        *,
        shard_id: int,
        shard_count: int,
        token: str,
        intents: int,
        rng: random.Random,
        compression: str | None = "zlib-stream",
        large_threshold: int = 50,
        presence: Mapping[str, Any] | None = None,
        receive_timeout: float | None = 60.0,
        auto_reconnect: bool = True,
        properties: Mapping[str, str] | None = None,
        heartbeat_ack_timeout: float | None = None,
    ) -> None:
        # Checked now, so a bad value fails at construction rather than at the first HELLO.
        self.heartbeat_ack_timeout = check_ack_timeout(heartbeat_ack_timeout,
                                                       "heartbeat_ack_timeout")
        if compression not in (None, "zlib-stream", "zstd-stream"):
            raise ValueError(f"unknown transport compression {compression!r}")
        if receive_timeout is not None and not receive_timeout > 0:
            raise ValueError("receive_timeout must be positive or None")
        self.shard_id = shard_id
        self.shard_count = shard_count
        self._token = token
        self.intents = int(intents)
        self._rng = rng
        self.compression = compression
        self.large_threshold = large_threshold
        self.presence = dict(presence) if presence is not None else None
        self.receive_timeout = receive_timeout
        self.auto_reconnect = auto_reconnect
        self.properties = dict(properties) if properties is not None else None
        new_inflater(compression)  # ConfigurationError now if zstandard is missing
        # Build one IDENTIFY now so a bad presence or large_threshold fails at construction
        # (PayloadError, a ConfigurationError), not at the first HELLO.
        self._identify_data()

        self._state = ShardState.CLOSED
        # Session: survives connections until Discord or a 1000/1001 close ends it.
        self.session_id: str | None = None
        self.seq: int | None = None
        self.resume_gateway_url: str | None = None
        self.connect_url: str | None = None  # cached connect URL, without our query
        self.latency: float | None = None
        # Connection: reset by opened().
        self._socket_open = False
        self._heartbeat: Heartbeat | None = None
        self._inflater: Any = None
        self._last_receive = 0.0
        self._identify_wanted = False
        self._identify_sent_at: float | None = None  # this connection's IDENTIFY
        self._resuming = False  # the current/next socket is meant to RESUME
        self._limit = CommandRateLimit()
        # Per shard, not per connection: 5 presence updates per 20 s (protocol §9).
        self._presence_limit = SlidingWindow(*PRESENCE_LIMIT)
        self._backoff: Iterator[float] = backoff(rng)
        self._failed_resume_connects = 0

    def __repr__(self) -> str:
        return (f"<ShardMachine shard={self.shard_id}/{self.shard_count} "
                f"state={self._state.value} session={self.session_id!r} seq={self.seq}>")

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> ShardState:
        return self._state

    @property
    def socket_open(self) -> bool:
        return self._socket_open

    @property
    def resuming(self) -> bool:
        """Whether the planned (or current) socket is meant to RESUME."""
        return self._resuming

    def resume_url(self) -> str | None:
        if self.resume_gateway_url is None:
            return None
        return gateway_url(self.resume_gateway_url, self.compression)

    def use_gateway(self, base: str) -> str:
        """Cache ``base`` as the connect URL (for IDENTIFY); returns it with our query."""
        url = gateway_url(base, self.compression)
        self.connect_url = base
        return url

    # ------------------------------------------------------------------ transitions

    def _to(self, new: ShardState) -> None:
        if new is not self._state and new not in TRANSITIONS[self._state]:
            raise IllegalTransition(f"shard {self.shard_id}: {self._state.value} → {new.value}")
        self._state = new

    def _forget_session(self) -> None:
        self.session_id = None
        self.seq = None
        self.resume_gateway_url = None

    def _has_session(self) -> bool:
        return self.session_id is not None and self.resume_gateway_url is not None

    def _plan(self, *, delay: float | None = None, resume: bool | None = None) -> Reconnect:
        """Decide the next socket: RESUME on the resume URL when a session exists."""
        want_resume = self._has_session() if resume is None else (resume and self._has_session())
        self._resuming = want_resume
        step = next(self._backoff)
        wait = step if delay is None else max(delay, step)
        if want_resume:
            url = self.resume_url() or ""
            if self._failed_resume_connects >= MAX_FAILED_RESUME_CONNECTS and self.connect_url:
                url = gateway_url(self.connect_url, self.compression)
        else:
            url = gateway_url(self.connect_url, self.compression) if self.connect_url else ""
        return Reconnect(url=url, resume=want_resume, delay=wait)

    def _disconnected(self, code: int | None, reason: str, action: str) -> Emit:
        return Emit(DISCONNECT, {"code": code, "reason": reason, "action": action,
                                 "resumable": self._has_session()})

    def _end_connection(self, code: int | None, reason: str, *, close: bool,
                        resume: bool | None = None, delay: float | None = None,
                        forget: bool = False) -> list[Action]:
        """Finish the current socket and decide what follows (reconnect or stop)."""
        actions: list[Action] = []
        if close and self._socket_open:
            actions.append(Close(code if code is not None else RECONNECT_CLOSE_CODE, reason))
        was_open = self._socket_open
        self._socket_open = False
        self._heartbeat = None
        self._inflater = None
        self._identify_wanted = False
        if forget:
            self._forget_session()
        if not self.auto_reconnect:
            if was_open:
                actions.append(self._disconnected(code, reason, "stop"))
            self._to(ShardState.CLOSED)
            self._resuming = False
            actions.append(Stop(f"{reason}; auto_reconnect is off"))
            return actions
        plan = self._plan(delay=delay, resume=resume)
        if was_open:
            actions.append(self._disconnected(code, reason,
                                              "resume" if plan.resume else "identify"))
        self._to(ShardState.RECONNECTING)
        actions.append(plan)
        return actions

    # ------------------------------------------------------------------ driver inputs

    def restore_session(self, session_id: str, resume_gateway_url: str, seq: int | None) -> None:
        """Adopt a session another process ran (a respawned worker, a restarted cluster).

        The next :meth:`start` RESUMEs it; if Discord no longer knows it, op 9 d:false
        leads to a fresh IDENTIFY as usual.
        """
        if self._state is not ShardState.CLOSED:
            raise IllegalTransition(f"restore_session() in state {self._state.value}")
        if not session_id or not resume_gateway_url:
            raise ValueError("a restored session needs a session_id and a resume_gateway_url")
        self.session_id = session_id
        self.resume_gateway_url = resume_gateway_url
        self.seq = seq


    def start(self, now: float) -> Reconnect:
        """Begin connecting (``Shard.connect()``): RESUME if a session survived, else IDENTIFY."""
        del now
        self._to(ShardState.CONNECTING)
        self._backoff = backoff(self._rng)
        self._failed_resume_connects = 0
        plan = self._plan(delay=0.0)
        return Reconnect(url=plan.url, resume=plan.resume, delay=0.0)

    def opened(self, now: float) -> list[Action]:
        """A socket is open: fresh inflater (a resume too, protocol §8) and rate limit."""
        if self._state not in (ShardState.CONNECTING, ShardState.RECONNECTING):
            raise IllegalTransition(f"opened() in state {self._state.value}")
        self._socket_open = True
        self._inflater = new_inflater(self.compression)
        self._heartbeat = None
        self._last_receive = now
        self._identify_wanted = False
        self._identify_sent_at = None
        self._limit.reset()
        self._failed_resume_connects = 0
        return []

    def resume_refused(self, now: float) -> Reconnect:
        """The driver will not send a RESUME to ``resume_gateway_url`` (not a host it trusts
        with the token, :mod:`shardctl.gateway.resume_url`): forget the session and connect
        to IDENTIFY instead, at once (the socket planned has not been opened yet)."""
        del now
        if self._state not in (ShardState.CONNECTING, ShardState.RECONNECTING):
            raise IllegalTransition(f"resume_refused() in state {self._state.value}")
        self._forget_session()
        self._resuming = False
        url = gateway_url(self.connect_url, self.compression) if self.connect_url else ""
        return Reconnect(url=url, resume=False, delay=0.0)

    def connect_failed(self, reason: str, now: float) -> list[Action]:
        """The socket could not be opened (DNS, refused, handshake): back off and retry."""
        del now
        if self._state not in (ShardState.CONNECTING, ShardState.RECONNECTING):
            return []
        if self._resuming:
            self._failed_resume_connects += 1
        return self._end_connection(None, f"connect failed: {reason}", close=False)

    def receive(self, message: bytes | str, now: float) -> list[Action]:
        """One websocket message as received (compressed or not)."""
        if not self._socket_open:
            return []
        self._last_receive = now
        if self._heartbeat is not None:
            self._heartbeat.heard = True  # alive, even if the ACK is queued behind this
        try:
            frame = self._decode(message)
        except ProtocolError as exc:
            return self._end_connection(RECONNECT_CLOSE_CODE, f"bad frame from gateway: {exc}",
                                        close=True)
        if frame is None:
            return []
        return self._on_frame(frame, now)

    def _decode(self, message: bytes | str) -> Frame | None:
        if self._inflater is not None and isinstance(message, (bytes, bytearray, memoryview)):
            payload = self._inflater.feed(bytes(message))
            if payload is None:  # zlib-stream: buffering until the 00 00 ff ff suffix
                return None
            return read_frame(payload)
        return read_frame(message)

    def _on_frame(self, frame: Frame, now: float) -> list[Action]:
        op = frame.op
        if op == Op.DISPATCH:
            return self._on_dispatch(frame)
        if op == Op.HELLO:
            return self._on_hello(frame, now)
        if op == Op.HEARTBEAT_ACK:
            if self._heartbeat is not None:
                latency = self._heartbeat.acked(now)
                if latency is not None:
                    self.latency = latency
            return []
        if op == Op.HEARTBEAT:
            # The server asks for a beat now, not at our next timer tick (protocol §3).
            return self._beat(now)
        if op == Op.RECONNECT:
            # Op 7: close non-1000 and RESUME; with no session yet, IDENTIFY (protocol §6).
            return self._end_connection(RECONNECT_CLOSE_CODE, "gateway requested reconnect",
                                        close=True)
        if op == Op.INVALID_SESSION:
            return self._on_invalid_session(frame, now)
        return []  # unknown server op: ignore, like unknown keys (protocol §2)

    def _on_hello(self, frame: Frame, now: float) -> list[Action]:
        if self._state not in (ShardState.CONNECTING, ShardState.RECONNECTING):
            # A repeated HELLO on a live socket is ignored: re-creating the heartbeat would
            # forget an unanswered beat and hide a zombie.
            return []
        d = frame.d
        interval = d.get("heartbeat_interval") if isinstance(d, dict) else None
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            return self._end_connection(RECONNECT_CLOSE_CODE, "HELLO without heartbeat_interval",
                                        close=True)
        try:
            self._heartbeat = Heartbeat(interval / 1000.0, now=now,
                                        jitter=self._rng.random() * FIRST_BEAT_SPREAD,
                                        ack_timeout=self.heartbeat_ack_timeout)
        except ProtocolError as exc:
            return self._end_connection(RECONNECT_CLOSE_CODE, str(exc), close=True)
        self._to(ShardState.HELLO)
        if self._resuming and self._has_session():
            assert self.session_id is not None
            self._to(ShardState.RESUMING)
            self._limit.try_acquire(now, priority=True)
            return [Send(resume_frame(token=self._token, session_id=self.session_id,
                                      seq=self.seq), Op.RESUME)]
        self._resuming = False
        self._identify_wanted = True
        return [NeedIdentify()]

    def identify(self, now: float) -> list[Action]:
        """The session limiter granted this shard a slot: send IDENTIFY (if still wanted)."""
        if not (self._socket_open and self._identify_wanted and self._state is ShardState.HELLO):
            return []
        self._identify_wanted = False
        self._identify_sent_at = now
        self._limit.try_acquire(now, priority=True)
        self._to(ShardState.IDENTIFYING)
        return [Send(self._identify_data(), Op.IDENTIFY)]

    def _identify_data(self) -> bytes:
        return identify_frame(
            token=self._token, intents=self.intents, shard=(self.shard_id, self.shard_count),
            properties=self.properties, large_threshold=self.large_threshold,
            presence=self.presence)

    def _on_dispatch(self, frame: Frame) -> list[Action]:
        if frame.s is not None and frame.s >= 0:
            self.seq = frame.s  # newest non-null s, for heartbeats and RESUME (protocol §2)
        name = frame.t or ""
        actions: list[Action] = [Emit(name, frame=frame)]
        if name == "READY" and self._state is ShardState.IDENTIFYING:
            d = frame.d if isinstance(frame.d, dict) else {}
            session_id = d.get("session_id")
            self.session_id = session_id if isinstance(session_id, str) and session_id else None
            resume = d.get("resume_gateway_url")
            # RESUME only on resume_gateway_url (protocol §4); fall back if it is missing.
            self.resume_gateway_url = resume if isinstance(resume, str) else self.connect_url
            self._to(ShardState.READY)
            self._backoff = backoff(self._rng)
            actions.append(Emit(SHARD_READY, {"session_id": self.session_id,
                                              "resume_gateway_url": self.resume_gateway_url,
                                              "shard": [self.shard_id, self.shard_count]}))
        elif name == "RESUMED" and self._state is ShardState.RESUMING:
            self._to(ShardState.READY)
            self._backoff = backoff(self._rng)
            actions.append(Emit(SHARD_RESUMED, {"session_id": self.session_id,
                                                "seq": self.seq}))
        return actions

    def _on_invalid_session(self, frame: Frame, now: float) -> list[Action]:
        resumable = frame.d is True
        told: list[Action] = [Emit(INVALID_SESSION, {"resumable": resumable})]
        sent = self._identify_sent_at
        if self._state is ShardState.IDENTIFYING and sent is not None \
                and now - sent <= IDENTIFY_REJECT_WINDOW:
            told.append(IdentifyRejected(max(0.0, now - sent)))
        if resumable and self._has_session():
            return [*told, *self._end_connection(RECONNECT_CLOSE_CODE,
                                                 "invalid session (resumable)", close=True,
                                                 resume=True)]
        # d:false: forget the session, wait 1-5 s, IDENTIFY via the limiter (protocol §6).
        delay = self._rng.uniform(*INVALID_SESSION_DELAY)
        return [*told, *self._end_connection(RECONNECT_CLOSE_CODE, "invalid session",
                                             close=True, resume=False, delay=delay,
                                             forget=True)]

    def closed(self, code: int | None, reason: str, now: float) -> list[Action]:
        """The socket closed without the machine asking (server close, drop: code None)."""
        del now
        if not self._socket_open:
            return []  # we closed it ourselves and already decided what follows
        info = classify(code)
        why = f"gateway closed {code if code is not None else '(no close frame)'}"
        if reason:
            why += f": {reason}"
        if info.action is CloseAction.FATAL:
            assert code is not None
            error = fatal_error(code, shard_id=self.shard_id, intents=self.intents)
            disconnected = self._disconnected(code, why, "fatal")
            self._socket_open = False
            self._heartbeat = None
            self._inflater = None
            self._forget_session()
            self._to(ShardState.CLOSED)
            self._resuming = False
            return [disconnected, Fatal(error)]
        forget = info.action is CloseAction.REIDENTIFY
        return self._end_connection(code, why, close=False, forget=forget)

    def tick(self, now: float) -> list[Action]:
        """Timers: receive timeout, zombie check, scheduled heartbeat."""
        if not self._socket_open:
            return []
        if self.receive_timeout is not None and now >= self._last_receive + self.receive_timeout:
            return self._end_connection(RECONNECT_CLOSE_CODE,
                                        f"nothing received for {self.receive_timeout:g} s",
                                        close=True)
        hb = self._heartbeat
        if hb is None:
            return []
        if hb.is_zombie(now):
            # The last beat's ACK is late: zombie, close non-1000 and RESUME (protocol §3).
            return self._end_connection(ZOMBIE_CLOSE_CODE, "no heartbeat ACK (zombie connection)",
                                        close=True)
        if not hb.due(now):
            return []
        return self._beat(now)

    def _beat(self, now: float) -> list[Action]:
        hb = self._heartbeat
        if hb is None or not self._socket_open:
            return []
        if not self._limit.try_acquire(now, priority=True):
            # Only reachable if more than the reserved slots went to priority frames; wait
            # for a slot rather than earn a 4008 (protocol §9).
            hb.postpone(max(self._limit.next_free(now, priority=True), now + 0.001))
            return []
        hb.sent(now)
        return [Send(heartbeat_frame(self.seq), Op.HEARTBEAT)]

    def next_deadline(self) -> float | None:
        """When :meth:`tick` must next run (None while no socket is open)."""
        if not self._socket_open:
            return None
        deadlines: list[float] = []
        if self.receive_timeout is not None:
            deadlines.append(self._last_receive + self.receive_timeout)
        if self._heartbeat is not None:
            deadlines.append(self._heartbeat.deadline())
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------ user requests

    def command(self, data: bytes, now: float, *, op: int) -> Send | Refused:
        """A user command (op 3/4/8/31/43): sent only on a live session, within the limits."""
        if not self._socket_open or self._state is not ShardState.READY:
            return Refused(f"shard {self.shard_id} is not connected (state "
                           f"{self._state.value})")
        if op == Op.PRESENCE_UPDATE and self._presence_limit.next_free(now) > now:
            wait = self._presence_limit.next_free(now) - now
            return Refused("presence updates are limited to 5 per 20 s", retry_after=wait)
        if not self._limit.try_acquire(now):
            wait = max(0.0, self._limit.next_free(now) - now)
            return Refused("gateway commands are limited to 120 per 60 s (with room kept for "
                           "heartbeats)", retry_after=wait)
        if op == Op.PRESENCE_UPDATE:
            self._presence_limit.try_acquire(now)
        return Send(data, op)

    def disconnect(self, code: int, reason: str, now: float) -> list[Action]:
        """User disconnect: close with ``code``; reconnect if auto_reconnect (lacord).

        1000/1001 end the session on Discord's side (protocol §7), so the session is
        forgotten and the reconnect IDENTIFYs; any other code keeps it resumable.
        """
        del now
        forget = code in SESSION_ENDING_CLIENT_CODES
        if not self._socket_open:
            if forget:
                self._forget_session()
            return []
        return self._end_connection(code, reason, close=True, forget=forget)

    def shutdown(self, code: int, reason: str, now: float) -> list[Action]:
        """Close for good: no reconnect.  The session survives unless ``code`` is 1000/1001,
        so a later :meth:`start` RESUMEs within Discord's resume window."""
        del now
        forget = code in SESSION_ENDING_CLIENT_CODES
        if self._state is ShardState.CLOSED:
            if forget:
                self._forget_session()
            return []
        saved, self.auto_reconnect = self.auto_reconnect, False
        try:
            if self._socket_open:
                return self._end_connection(code, reason, close=True, forget=forget)
            if forget:
                self._forget_session()
            self._to(ShardState.CLOSED)
            self._resuming = False
            return [Stop(reason)]
        finally:
            self.auto_reconnect = saved

