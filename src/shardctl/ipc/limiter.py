"""The session-limiter channel: its wire format and both of its ends.

Shards in any process, on any host, ask one limiter "may shard S IDENTIFY?" and wait for the
answer.  This module only moves messages: :class:`LimiterClient` is the shards' end (DEALER),
:class:`LimiterWireServer` the limiter's (ROUTER).  The pacing policy that drives the server
end lives in ``cluster/`` (``SessionLimiterService``).

Wire format, version 1 (a contract between hosts; change it only by bumping the version)
---------------------------------------------------------------------------------------
Every message is one ZeroMQ multipart message of three frames (the service's ROUTER adds and
strips the peer's routing-id frame in front)::

    [b"SL1", KIND, BODY]

``KIND`` is an ASCII word, ``BODY`` a UTF-8 JSON object.  Unknown keys in a body are ignored,
so fields may be added without a new version; a message with another version frame, an
unknown kind, a body that is not an object or a field of the wrong type is logged and
dropped, never answered.  Field types: ``ID`` a string of 1-64 characters
``[A-Za-z0-9._:-]`` naming one client instance (random per process start); ``R`` a request
number and ``N`` a ping number, integers in 0..2**53-1, increasing per client; ``S`` a shard
id, an integer in 0..2**31-1; ``T`` a time in seconds on the sender's CLOCK_MONOTONIC
(``time.monotonic()``), a finite number >= 0; ``C`` names that clock, in the alphabet of
``ID``.  A key marked ``?`` may be absent (older peers never send it).

client (DEALER, connects) -> service (ROUTER, binds):

    ping       {"client": ID, "seq": N, "clock"?: C}
        sent on start and every ping interval: liveness, and a question answered by pong.
        ``clock`` names the client's monotonic clock (a hash of the host's boot id and the
        process's time-namespace offsets): a service whose own clock has the same name reads
        the client's ``T`` values as its own times (CLOCK_MONOTONIC is one clock per boot and
        time namespace on Linux) and may use ``sent_at`` and ``not_before`` with it.
    request    {"client": ID, "req": R, "shard": S}
        shard S wants to IDENTIFY.  Idempotent: a request already waiting is not queued twice.
    cancel     {"client": ID, "req": R}
        withdraw a waiting request.  Too late once granted: a grant sent is a slot spent.
    release    {"client": ID, "req": R, "sent_at"?: T}
        the granted shard's IDENTIFY has been sent (or never will be).  The service may pace
        the bucket's next grant from this moment, since a release is causally after the send.
        ``sent_at``: when the send ended (taken after it, so no later IDENTIFY of the bucket
        can have left before it).  A service sharing the client's clock paces from it instead,
        clamped to [grant start, release handled]; any other ignores it.
    rejected   {"client": ID, "req": R, "shard": S, "after"?: number >= 0 (seconds)}
        the IDENTIFY shard S sent under the grant of request R was answered with op 9
        (INVALID_SESSION) ``after`` seconds after it was sent, before any READY: what Discord
        answers an IDENTIFY it read too soon after the previous one of its bucket.  The
        service may widen that bucket's margin; it grants nothing for it (the shard asks
        again with a new request and waits its turn).  At most once per request; a service
        that no longer knows the grant ignores it.
    configure  {"client": ID, "max_concurrency"?: int >= 1, "remaining"?: int >= 0,
                "total"?: int >= 0, "reset_after"?: number >= 0 (seconds), "seq"?: N}
        new limits, e.g. from a fresh GET /gateway/bot (its reset_after is in ms: divide).
        With ``seq`` the service answers ``configured`` with the same ``seq``.

service -> client:

    grant      {"req": R, "shard": S, "not_before"?: T}
        shard S may send IDENTIFY now, or from ``not_before`` on: a service may grant a client
        sharing its clock a little ahead of the slot, and the client must wait until its
        ``time.monotonic()`` reaches ``not_before`` before sending.  Only sent to clients that
        named the service's clock in a ping, since older clients would not wait.  The slot
        counts as used from the moment this is sent, whether or not the client waits it out.
    pong       {"seq": N, "queued": [R, ...]}
        the requests of this client the service holds, as of ping N.
    probe      {}
        sent to the holder of an unreleased grant to learn whether its connection is still
        there (a failed send says it is not); clients ignore it.
    configured {"seq": N, "ok": bool, "reason"?: str}
        the answer to a ``configure`` that had a ``seq``: applied, or refused and why.
    refused    {"client": ID, "reason": str}
        a message naming client ``ID`` was ignored: that id belongs to another live
        connection (or principal).  Nothing of that client changed.

Who may say what (issue 12, item 3).  ``configure`` sets the pace of every shard that uses
the limiter, so it is taken only from the ``supervisor`` and ``operator`` roles: with CURVE,
the role of the peer's key (ZAP User-Id ``"<role>:<name>"``); without CURVE, from any peer
of an ``ipc://`` endpoint (a 0700 directory: this user only).  A ``tcp://`` loopback endpoint
without CURVE is reachable by every local user: the service refuses to bind one unless told
``insecure_loopback``, and then takes ``configure`` from nobody.  A client id belongs to the
connection (routing id) and principal (CURVE User-Id) that used it first: another connection
may take it over only with the same principal and once the first connection is gone, so no
peer can receive, cancel or release another's grants.

What a peer can make the service do is bounded too: messages over ``max_message_bytes`` are
refused by libzmq before they are allocated (``ZMQ_MAXMSGSIZE``), each peer may send at most
``peer_rate`` messages per second (bursts of ``peer_burst``; more are dropped, counted, logged
once per peer), and replies to a peer that does not read them are dropped, never waited for
(``NOBLOCK``; counted, logged once per peer).

Recovery without a session: ZeroMQ keeps order on a connection, so the service handles ping N
after every earlier message from that client and sends pong N after every earlier grant.  A
request sent before ping N that is neither granted nor listed in pong N was lost (service
restarted, connection dropped, client taken for dead): the client sends it again (one log
line per pong, with the count).  A grant that was lost on the way counts as used: a re-sent
request whose grant the service still holds (unreleased) gets that same grant again, since
its bucket has waited on it since; once released or expired, it waits for a new slot.  A
grant for a request the client no longer waits for (cancelled as the grant left, or a
repeat) is released at once (``release`` without ``sent_at``): nothing will be sent under
it, and the bucket need not wait for the hold limit.  A service whose loop is behind its
socket takes nobody for silent whose messages may be among the unread ones, and a client
whose connection went away (a DEALER reconnects after a heartbeat timeout, under a new
routing id) keeps its waiting requests, in their places, for ``client_timeout``.

The service sets ``ROUTER_MANDATORY``: a grant (or probe) for a peer whose connection is gone
fails to send, so the policy can give that slot to the next request instead of wasting it.
(``ZMQ_ROUTER_NOTIFY`` would report disconnects directly, but it is a draft option that the
libzmq 4.3.5 bundled with pyzmq 27 refuses with EINVAL, and a socket monitor reports file
descriptors, not routing ids.)  ZMTP heartbeats on both ends close connections whose peer
vanished without a FIN, so a dead remote host is noticed too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import re
import secrets
import time
from asyncio import Future
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

import anyio
import anyio.lowlevel
import orjson
import zmq
import zmq.asyncio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from shardctl.errors import ConfigurationError, ProtocolError
from shardctl.ipc import endpoints
from shardctl.ipc.security import CurveClient, CurveServer, peer_role

__all__ = [
    "VERSION",
    "Cancel",
    "ClientMessage",
    "Configure",
    "Configured",
    "GrantMessage",
    "LimiterClient",
    "LimiterRefusedError",
    "LimiterStats",
    "LimiterUnavailableError",
    "LimiterWireServer",
    "Ping",
    "Pong",
    "Probe",
    "Refused",
    "Rejected",
    "Release",
    "Request",
    "ServiceMessage",
    "clock_id",
    "decode_client_message",
    "decode_service_message",
    "encode",
]

log = logging.getLogger(__name__)

VERSION: Final = b"SL1"
MAX_ID: Final = 2**53 - 1  # exact in every JSON implementation's doubles
MAX_SHARD: Final = 2**31 - 1
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

DEFAULT_PING_INTERVAL: Final = 1.0
"""Seconds between client pings: bounds how long a lost request stays lost."""

_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
_TIMENS_OFFSETS: Final = Path("/proc/self/timens_offsets")

#: Roles whose peers may send ``configure`` (DESIGN.md §3: only the supervisor sets the pace).
CONFIGURE_ROLES: Final = frozenset({"supervisor", "operator"})
#: The role of an ipc:// peer without CURVE: this user, through the 0700 runtime directory.
LOCAL_ROLE: Final = "operator"
MAX_MESSAGE_BYTES: Final = 4 * 1024
"""Largest client message the service reads (its ZMQ_MAXMSGSIZE): SL1 client bodies are a
few hundred bytes; with a queue of ``peer_burst`` messages per peer, this bounds its memory."""
DEFAULT_PEER_RATE: Final = 2000.0
"""Messages per second one peer may send: far above a worker starting thousands of shards
(one request, one release and a ping per second each)..."""
DEFAULT_PEER_BURST: Final = 20_000
"""... with bursts this large (every shard of a big worker asking at once)."""
#: Peers whose rate and role the service remembers; the least recently heard go first.
_MAX_PEERS: Final = 4096

_DEFAULT_HWM: Final = 1000  # libzmq's
_HEARTBEAT_MS: Final = 1000
_HEARTBEAT_TIMEOUT_MS: Final = 3000
_RECONNECT_MS: Final = 100
_RECONNECT_MAX_MS: Final = 2000


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    client: str
    seq: int
    clock: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    client: str
    req: int
    shard: int


@dataclass(frozen=True, slots=True)
class Cancel:
    client: str
    req: int


@dataclass(frozen=True, slots=True)
class Release:
    client: str
    req: int
    sent_at: float | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    client: str
    req: int
    shard: int
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Configure:
    client: str
    max_concurrency: int | None = None
    remaining: int | None = None
    total: int | None = None
    reset_after: float | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class GrantMessage:
    req: int
    shard: int
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int
    queued: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Probe:
    pass


@dataclass(frozen=True, slots=True)
class Configured:
    seq: int
    ok: bool
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    client: str
    reason: str


ClientMessage = Ping | Request | Cancel | Release | Rejected | Configure
ServiceMessage = GrantMessage | Pong | Probe | Configured | Refused

_KINDS: Final[dict[type[Any], bytes]] = {
    Ping: b"ping",
    Request: b"request",
    Cancel: b"cancel",
    Release: b"release",
    Rejected: b"rejected",
    Configure: b"configure",
    GrantMessage: b"grant",
    Pong: b"pong",
    Probe: b"probe",
    Configured: b"configured",
    Refused: b"refused",
}


def _present(body: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """``body`` with the optional fields that have a value (absent keys stay absent)."""
    body.update((k, v) for k, v in optional.items() if v is not None)
    return body


def encode(message: ClientMessage | ServiceMessage) -> list[bytes]:
    """The three frames of ``message`` (without any routing id)."""
    body: dict[str, Any]
    match message:
        case Ping(client, seq, clock):
            body = _present({"client": client, "seq": seq}, clock=clock)
        case Request(client, req, shard):
            body = {"client": client, "req": req, "shard": shard}
        case Release(client, req, sent_at):
            body = _present({"client": client, "req": req}, sent_at=sent_at)
        case Cancel(client, req):
            body = {"client": client, "req": req}
        case Rejected(client, req, shard, after):
            body = _present({"client": client, "req": req, "shard": shard}, after=after)
        case Configure(client, max_concurrency, remaining, total, reset_after, seq):
            body = _present({"client": client}, max_concurrency=max_concurrency,
                            remaining=remaining, total=total, reset_after=reset_after, seq=seq)
        case GrantMessage(req, shard, not_before):
            body = _present({"req": req, "shard": shard}, not_before=not_before)
        case Pong(seq, queued):
            body = {"seq": seq, "queued": list(queued)}
        case Probe():
            body = {}
        case Configured(seq, ok, reason):
            body = _present({"seq": seq, "ok": ok}, reason=reason)
        case Refused(client, reason):
            body = {"client": client, "reason": reason}
    return [VERSION, _KINDS[type(message)], orjson.dumps(body)]


def _int(body: Mapping[str, Any], key: str, low: int, high: int, *, optional: bool = False
         ) -> int | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or not low <= value <= high:  # bool is not an int here
        raise ProtocolError(f"field {key!r} must be an integer in {low}..{high}")
    return value


def _req_int(body: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = _int(body, key, low, high)
    assert value is not None
    return value


def _time(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        raise ProtocolError(f"field {key!r} must be a finite number >= 0 (monotonic seconds)")
    return float(value)


def _seconds(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value < math.inf:
        raise ProtocolError(f"field {key!r} must be a finite number >= 0 (seconds)")
    return float(value)


def _clock(body: Mapping[str, Any]) -> str | None:
    clock = body.get("clock")
    if clock is not None and (not isinstance(clock, str) or not _CLIENT_ID.fullmatch(clock)):
        raise ProtocolError("field 'clock' must be 1-64 characters of [A-Za-z0-9._:-]")
    return clock


def _client(body: Mapping[str, Any]) -> str:
    client = body.get("client")
    if not isinstance(client, str) or not _CLIENT_ID.fullmatch(client):
        raise ProtocolError("field 'client' must be 1-64 characters of [A-Za-z0-9._:-]")
    return client


def _body(frames: Sequence[bytes]) -> tuple[bytes, dict[str, Any]]:
    if len(frames) != 3:
        raise ProtocolError(f"expected 3 frames, got {len(frames)}")
    version, kind, raw = frames
    if version != VERSION:
        raise ProtocolError(f"unsupported limiter protocol version {version[:16]!r}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    return bytes(kind), body


def decode_client_message(frames: Sequence[bytes]) -> ClientMessage:
    """Parse what a client sent; :class:`ProtocolError` if it is not a valid SL1 message."""
    kind, body = _body(frames)
    if kind == b"ping":
        return Ping(_client(body), _req_int(body, "seq", 0, MAX_ID), _clock(body))
    if kind == b"request":
        return Request(
            _client(body), _req_int(body, "req", 0, MAX_ID), _req_int(body, "shard", 0, MAX_SHARD)
        )
    if kind == b"cancel":
        return Cancel(_client(body), _req_int(body, "req", 0, MAX_ID))
    if kind == b"release":
        return Release(_client(body), _req_int(body, "req", 0, MAX_ID), _time(body, "sent_at"))
    if kind == b"rejected":
        return Rejected(_client(body), _req_int(body, "req", 0, MAX_ID),
                        _req_int(body, "shard", 0, MAX_SHARD), _seconds(body, "after"))
    if kind == b"configure":
        reset_after = body.get("reset_after")
        if reset_after is not None and (
            type(reset_after) not in (int, float) or not 0 <= reset_after < math.inf
        ):
            raise ProtocolError("field 'reset_after' must be a finite number >= 0 (seconds)")
        return Configure(
            _client(body),
            max_concurrency=_int(body, "max_concurrency", 1, MAX_SHARD, optional=True),
            remaining=_int(body, "remaining", 0, MAX_ID, optional=True),
            total=_int(body, "total", 0, MAX_ID, optional=True),
            reset_after=None if reset_after is None else float(reset_after),
            seq=_int(body, "seq", 0, MAX_ID, optional=True),
        )
    raise ProtocolError(f"unknown client message kind {kind[:32]!r}")


def decode_service_message(frames: Sequence[bytes]) -> ServiceMessage:
    """Parse what the service sent; :class:`ProtocolError` if it is not a valid SL1 message."""
    kind, body = _body(frames)
    if kind == b"grant":
        return GrantMessage(_req_int(body, "req", 0, MAX_ID),
                            _req_int(body, "shard", 0, MAX_SHARD), _time(body, "not_before"))
    if kind == b"pong":
        queued = body.get("queued")
        if not isinstance(queued, list) or not all(
            type(r) is int and 0 <= r <= MAX_ID for r in queued
        ):
            raise ProtocolError("field 'queued' must be a list of request numbers")
        return Pong(_req_int(body, "seq", 0, MAX_ID), tuple(queued))
    if kind == b"probe":
        return Probe()
    if kind == b"configured":
        ok = body.get("ok")
        if type(ok) is not bool:
            raise ProtocolError("field 'ok' must be true or false")
        return Configured(_req_int(body, "seq", 0, MAX_ID), ok, _text(body, "reason"))
    if kind == b"refused":
        return Refused(_client(body), _text(body, "reason") or "")
    raise ProtocolError(f"unknown service message kind {kind[:32]!r}")


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return None if value is None else value[:300]


@functools.cache
def clock_id() -> str | None:
    """The name of this process's ``time.monotonic()`` clock, or None if it cannot be named.

    On Linux CLOCK_MONOTONIC is one clock for every process of a boot, shifted only by a
    time namespace's offset: two processes whose boot id and offsets match read the same
    clock.  Elsewhere (no /proc) the clock is not shared by anyone, as far as we can tell.
    """
    try:
        boot = _BOOT_ID.read_bytes().strip()
    except OSError:
        return None
    if not boot:
        return None
    try:
        offsets = _TIMENS_OFFSETS.read_bytes()
    except OSError:  # no time namespaces in this kernel: no offsets
        offsets = b""
    return "m1:" + hashlib.sha256(boot + b"\0" + offsets).hexdigest()[:32]


def _heartbeats(sock: zmq.asyncio.Socket) -> None:
    # ZMTP heartbeats close a connection whose peer vanished without a FIN (host down,
    # cable pulled), so the ROUTER forgets it and the DEALER reconnects.
    sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.LINGER, 0)


# -- service end -----------------------------------------------------------------------------


class LimiterRefusedError(ConfigurationError):
    """The limiter refused what we asked (``configure`` from a role that may not)."""


class LimiterUnavailableError(ConfigurationError):
    """No limiter answered at the endpoint in time."""


def check_bind(endpoint: str, *, curve: bool, insecure_loopback: bool = False) -> None:
    """Refuse a limiter endpoint that strangers could steer (module docstring).

    ``tcp://`` without CURVE is reachable by every user of this host (and other hosts are
    refused anyway, :func:`shardctl.ipc.endpoints.check_bind_allowed`).
    """
    endpoints.check_bind_allowed(endpoint, curve=curve)
    tcp = endpoints.parse_endpoint(endpoint).transport == "tcp"
    if tcp and not curve and not insecure_loopback:
        raise ConfigurationError(
            f"refusing to serve the limiter on {endpoint} without CURVE keys: every user of "
            "this host can reach a loopback port and steer its pace; serve it on ipc:// "
            "(this user only), configure keys (--keys), or pass --insecure-loopback (then "
            "no peer may configure it)")


@dataclass(slots=True)
class LimiterStats:
    """What peers were denied, for operators (each kind is also logged once per peer)."""

    #: replies dropped because their peer did not read (its queue was full)
    dropped_replies: int = 0
    #: messages dropped because their peer sent faster than ``peer_rate``
    rate_limited: int = 0
    #: messages refused: a client id held by another connection, or a configure from a
    #: role that may not
    refused: int = 0


@dataclass(slots=True)
class _Peer:
    """What the service knows of one connection (routing id)."""

    role: str | None
    principal: str  # the CURVE User-Id; "" without CURVE
    tokens: float
    at: float
    noted: set[str] = field(default_factory=set)  # what was logged about it already


class LimiterWireServer:
    """The ROUTER end: binds, yields client messages, sends grants and pongs; no policy.

    Use as ``async with LimiterWireServer(endpoint) as service:``; ``service.endpoint`` is the
    endpoint actually bound (a ``tcp://...:*`` bind names its port there).
    ``curve``: CURVE server keys; only clients with authorised keys are heard, and the
    endpoint may then be reachable from other hosts (:mod:`shardctl.ipc.security`).
    ``insecure_loopback`` allows a loopback ``tcp://`` endpoint without CURVE; its peers are
    anonymous (:meth:`may_configure` is false for them).  ``peer_rate``/``peer_burst`` bound
    what one connection may send, ``max_message_bytes`` each message (module docstring).
    """

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveServer | None = None, insecure_loopback: bool = False,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 peer_rate: float = DEFAULT_PEER_RATE, peer_burst: int = DEFAULT_PEER_BURST,
                 clock: Callable[[], float] = time.monotonic,
                 stats: LimiterStats | None = None) -> None:
        check_bind(endpoint, curve=curve is not None, insecure_loopback=insecure_loopback)
        self._curve = curve
        self._anonymous = curve is None and endpoints.parse_endpoint(endpoint).transport == "tcp"
        self._requested = endpoint
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._stack = contextlib.ExitStack()
        self._max_message_bytes = max_message_bytes
        self._rate, self._burst, self._clock = peer_rate, peer_burst, clock
        self._peers: OrderedDict[bytes, _Peer] = OrderedDict()
        self.endpoint = endpoint
        self.stats = stats if stats is not None else LimiterStats()

    async def __aenter__(self) -> Self:
        sock = self._context.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            # A peer's whole burst fits unread: at libzmq's default of 1,000 a big worker's
            # start-up filled the queue, libzmq stopped reading that connection (its
            # heartbeats too), the heartbeat timeout closed it, and every reconnect cost the
            # worker's requests (issue 14).  The rate limit bounds what stays queued.
            sock.setsockopt(zmq.RCVHWM, max(_DEFAULT_HWM, self._burst))
            _heartbeats(sock)
            self.endpoint = self._stack.enter_context(
                endpoints.bind(sock, self._requested, curve=self._curve))
        except BaseException:
            sock.close(linger=0)
            raise
        if self._anonymous:
            log.warning("limiter: serving %s without CURVE keys (--insecure-loopback): every "
                        "user of this host can ask it for slots; none may configure it",
                        self.endpoint)
        self._socket = sock
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sock, self._socket = self._socket, None
        try:
            self._stack.close()
        finally:
            if sock is not None:
                sock.close(linger=0)

    def _sock(self) -> zmq.asyncio.Socket:
        if self._socket is None:
            raise RuntimeError("LimiterWireServer is not open")
        return self._socket

    def backlog(self) -> bool:
        """Whether a message waits to be read (the reader is behind)."""
        return bool(cast("int", self._sock().get(zmq.EVENTS)) & zmq.POLLIN)

    async def receive(self) -> tuple[bytes, ClientMessage]:
        """The next valid client message and its sender's routing id.

        Malformed messages are logged and skipped, and so are messages over the sender's
        rate.  Not cancel-safe (a message that arrives as the wait is cancelled is lost):
        call it from a task that is only cancelled at shutdown.
        """
        sock = self._sock()
        while True:
            frames = await sock.recv_multipart(copy=False)
            if len(frames) < 2:
                log.warning("limiter: dropped a message without a routing id")
                continue
            peer = frames[0].bytes
            if not self._admit(peer, frames[1]):
                continue
            try:
                return peer, decode_client_message([f.bytes for f in frames[1:]])
            except ProtocolError as exc:
                log.warning("limiter: dropped a malformed message from peer %s: %s",
                            peer.hex(), exc)

    def _admit(self, peer: bytes, frame: zmq.Frame) -> bool:
        """Note the peer's role; False when it is over its rate (token bucket)."""
        now = self._clock()
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = self._new_peer(frame, now)
            while len(self._peers) > _MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
            state.tokens = min(self._burst, state.tokens + (now - state.at) * self._rate)
            state.at = now
        if state.tokens >= 1:
            state.tokens -= 1
            return True
        self.stats.rate_limited += 1
        if self._note_once(state, "rate"):
            log.warning("limiter: peer %s sends over %g messages/s; dropping the excess "
                        "(counted, logged once per peer)", peer.hex(), self._rate)
        return False

    def _new_peer(self, frame: zmq.Frame, now: float) -> _Peer:
        role: str | None
        if self._curve is not None:
            role = peer_role(frame)
            try:
                principal = str(frame.get("User-Id"))
            except zmq.ZMQError:
                principal = ""
        else:
            role, principal = (None if self._anonymous else LOCAL_ROLE), ""
        return _Peer(role, principal, float(self._burst), now)

    @staticmethod
    def _note_once(state: _Peer, what: str) -> bool:
        if what in state.noted:
            return False
        state.noted.add(what)
        return True

    def first_time(self, peer: bytes, what: str) -> bool:
        """True the first time ``what`` happens with ``peer``: log it then, not again."""
        state = self._peers.get(peer)
        return state is None or self._note_once(state, what)

    def role_of(self, peer: bytes) -> str | None:
        """The role ``peer`` spoke with (None: anonymous, or not heard lately)."""
        state = self._peers.get(peer)
        return None if state is None else state.role

    def principal_of(self, peer: bytes) -> str:
        """Who holds ``peer``'s key (its CURVE User-Id); "" without CURVE."""
        state = self._peers.get(peer)
        return "" if state is None else state.principal

    def may_configure(self, peer: bytes) -> str | None:
        """None if ``peer`` may send ``configure``; else why not (for the refusal)."""
        role = self.role_of(peer)
        if role in CONFIGURE_ROLES:
            return None
        if role is None:
            return ("anonymous peers (tcp:// without CURVE keys) may not configure this "
                    "limiter; use ipc:// or CURVE keys with the supervisor or operator role")
        return (f"the {role} role may not configure the limiter; only supervisor and "
                "operator keys may")

    def _send(self, peer: bytes, message: ServiceMessage) -> bool:
        sent = self._sock().send_multipart([peer, *encode(message)], flags=zmq.NOBLOCK)
        # NOBLOCK sends complete (or fail) before returning; read the outcome now.
        try:
            cast("Future[Any]", sent).result()
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the peer's connection is gone (ROUTER_MANDATORY).  EAGAIN: its
            # queue is full (it does not read) or closing.  Either way nothing was queued
            # for it, and nothing here waits for it.
            if exc.errno == zmq.EAGAIN:
                self._dropped_reply(peer)
            else:
                log.debug("limiter: peer %s unreachable: %s", peer.hex(), exc)
            return False
        return True

    def _dropped_reply(self, peer: bytes) -> None:
        self.stats.dropped_replies += 1
        if self.first_time(peer, "unread"):
            log.warning("limiter: peer %s does not read its replies; dropping them (counted, "
                        "logged once per peer)", peer.hex())

    def send_grant(self, peer: bytes, req: int, shard: int, *,
                   not_before: float | None = None) -> bool:
        """Send a grant; False if it certainly did not leave (the peer is gone)."""
        return self._send(peer, GrantMessage(req, shard, not_before))

    def send_pong(self, peer: bytes, seq: int, queued: Sequence[int]) -> bool:
        return self._send(peer, Pong(seq, tuple(queued)))

    def send_configured(self, peer: bytes, seq: int, reason: str | None = None) -> bool:
        """Acknowledge a ``configure``: applied (no ``reason``) or refused."""
        if reason is not None:
            self.stats.refused += 1
        return self._send(peer, Configured(seq, reason is None, reason))

    def send_refused(self, peer: bytes, client: str, reason: str) -> bool:
        self.stats.refused += 1
        return self._send(peer, Refused(client, reason))

    def probe(self, peer: bytes) -> bool:
        """False if ``peer``'s connection is certainly gone.  A full queue is not: a holder
        whose loop is too busy to read (a big worker starting) may still send the IDENTIFY
        it holds a grant for, so its hold must stay (:meth:`connected`)."""
        return self.connected(peer)

    def connected(self, peer: bytes) -> bool:
        """Whether ``peer``'s connection is still there (a full queue still counts)."""
        try:
            cast("Future[Any]", self._sock().send_multipart(
                [peer, *encode(Probe())], flags=zmq.NOBLOCK)).result()
        except zmq.ZMQError as exc:
            return exc.errno == zmq.EAGAIN
        return True


# -- client end ------------------------------------------------------------------------------


def _some(shards: Sequence[int], shown: int = 8) -> str:
    """``shards`` for a log line: the first few, then how many more."""
    head = ", ".join(map(str, shards[:shown]))
    return head if len(shards) <= shown else f"{head} and {len(shards) - shown} more"


#: The last stretch before a ``not_before`` is waited out by yielding, not by a timer.
_SPIN: Final = 0.0015


async def _until(deadline: float) -> None:
    """Return once ``time.monotonic()`` reaches ``deadline``, never before, and promptly.

    The loop's timers run on its own clock and may fire a hair early by ours: check on ours.
    They also fire up to a millisecond late (epoll's resolution), and every gap of a bucket
    would carry that lateness, so the last ``_SPIN`` is spent yielding to the loop (other
    tasks still run) until the clock says go.  The margin between an exactly paced IDENTIFY
    and the previous one is the service's margin, not this lateness.
    """
    while (left := deadline - time.monotonic()) > _SPIN:  # noqa: ASYNC110
        await anyio.sleep(left - _SPIN)
    while time.monotonic() < deadline:
        await anyio.lowlevel.checkpoint()


@dataclass(slots=True)
class _Pending:
    shard: int
    covered_by: int  # the first ping sent after this request; its pong proves receipt
    granted: anyio.Event = field(default_factory=anyio.Event)
    not_before: float | None = None  # time.monotonic() before which the grant may not be used
    closed: bool = False


class LimiterClient:
    """The DEALER end, one per process, shared by all its shards: a ``SessionLimiter``.

    ``async with LimiterClient(endpoint) as limiter:`` connects; then any task may
    ``async with limiter.identify(shard_id): <send IDENTIFY>``.  Entering waits for the
    grant for as long as it takes (an unreachable service means waiting, never identifying
    without a grant), and for an early grant's ``not_before`` too.  A waiter that is cancelled
    withdraws its request so the slot goes to the next shard; a grant that already arrived
    counts as used (and is released, not withdrawn).  Leaving the body releases the grant
    with ``sent_at``, the time the body (the IDENTIFY send) ended.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        context: zmq.asyncio.Context | None = None,
        client_id: str | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        endpoints.parse_endpoint(endpoint)
        self._curve = curve
        if client_id is not None and not _CLIENT_ID.fullmatch(client_id):
            raise ValueError("client_id must be 1-64 characters of [A-Za-z0-9._:-]")
        self.endpoint = endpoint
        self.client_id = client_id or secrets.token_hex(8)
        self._ping_interval = ping_interval
        self._context = context or zmq.asyncio.Context.instance()
        self._socket: zmq.asyncio.Socket | None = None
        self._tg: TaskGroup | None = None
        self._outbox: MemoryObjectSendStream[list[bytes]] | None = None
        self._pending: dict[int, _Pending] = {}
        self._used: dict[int, int] = {}  # shard -> request of its last grant used
        self._in_use: set[int] = set()  # requests granted and not yet released
        self._req_numbers = itertools.count()
        self._ping_seq = 0  # last ping queued
        self._configures = itertools.count(1)
        #: configure seq -> its answer, once it came
        self._answers: dict[int, Configured | None] = {}
        self._answered = anyio.Event()
        self._refusals: set[str] = set()  # logged once each
        #: requests sent again because a pong did not list them (a genuine loss, or a bug)
        self.reasked = 0

    async def __aenter__(self) -> Self:
        sock = self._context.socket(zmq.DEALER)
        try:
            _heartbeats(sock)
            sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_MAX_MS)
            if self._curve is not None:
                self._curve.apply(sock)
            sock.connect(self.endpoint)
        except BaseException:
            sock.close(linger=0)
            raise
        self._socket = sock
        send, receive = anyio.create_memory_object_stream[list[bytes]](math.inf)
        self._outbox = send
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._sender, sock, receive)
        tg.start_soon(self._receiver, sock)
        tg.start_soon(self._pinger)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
            for pending in self._pending.values():
                pending.closed = True
                pending.granted.set()

    # The background tasks; each is cancelled only when the client closes.

    async def _sender(
        self, sock: zmq.asyncio.Socket, outbox: MemoryObjectReceiveStream[list[bytes]]
    ) -> None:
        async with outbox:
            async for frames in outbox:
                await sock.send_multipart(frames)

    async def _receiver(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            frames = await sock.recv_multipart()
            try:
                message = decode_service_message(frames)
            except ProtocolError as exc:
                log.warning("limiter client: dropped a malformed message: %s", exc)
                continue
            if isinstance(message, GrantMessage):
                pending = self._pending.get(message.req)
                if pending is not None:
                    pending.not_before = message.not_before
                    pending.granted.set()
                elif message.req not in self._in_use:
                    # The waiter was cancelled after the grant left, or this repeats a grant
                    # already used: the slot is spent, but no IDENTIFY will follow under it,
                    # so the service need not hold the bucket for it.
                    self._post(Release(self.client_id, message.req))
            elif isinstance(message, Pong):
                self._resync(message)
            elif isinstance(message, Configured):
                if message.seq in self._answers:
                    self._answers[message.seq] = message
                    self._answered.set()
                    self._answered = anyio.Event()
            elif isinstance(message, Refused):
                self._refused(message)

    def _refused(self, message: Refused) -> None:
        """The service ignored us: a configure waiting for its answer has it; requests wait
        on (our id is held by our own connection before a reconnect until the service sees
        that one gone: pings go on, and the next pong resyncs)."""
        waiting = [seq for seq, answer in self._answers.items() if answer is None]
        for seq in waiting:
            self._answers[seq] = Configured(seq, False, message.reason)
        if waiting:
            self._answered.set()
            self._answered = anyio.Event()
        if message.reason not in self._refusals:
            self._refusals.add(message.reason)
            log.warning("limiter client %s: the limiter ignored us: %s", self.client_id,
                        message.reason)

    async def _pinger(self) -> None:
        while True:
            self._ping_seq += 1
            self._post(Ping(self.client_id, self._ping_seq, clock_id()))
            await anyio.sleep(self._ping_interval)

    def _resync(self, pong: Pong) -> None:
        held = set(pong.queued)
        lost: list[int] = []
        for req, pending in self._pending.items():
            if pending.granted.is_set() or req in held or pending.covered_by > pong.seq:
                continue
            lost.append(pending.shard)
            pending.covered_by = self._ping_seq + 1
            self._post(Request(self.client_id, req, pending.shard))
        if lost:
            # One line per pong, however many: a service that lost a big worker's queue
            # must not print a line per shard (145,000 in a 10,000-shard start, issue 14).
            self.reasked += len(lost)
            log.info("limiter client %s: the service lost %d request(s) (shards %s); asking "
                     "again", self.client_id, len(lost), _some(lost))

    def _post(self, message: ClientMessage) -> None:
        if self._outbox is None:
            raise RuntimeError("LimiterClient is not open")
        self._outbox.send_nowait(encode(message))

    # The SessionLimiter interface.

    @contextlib.contextmanager
    def answer_within(self, seconds: float) -> Iterator[None]:
        """Bound a wait for the service (``with client.answer_within(5): await
        client.configure(...)``): :class:`LimiterUnavailableError`, naming the endpoint, if
        it has not answered by then."""
        with anyio.move_on_after(seconds) as scope:
            yield
        if scope.cancelled_caught:
            raise LimiterUnavailableError(
                f"no limiter answered at {self.endpoint} within {seconds:g} s (is `shardctl "
                "limiter` serving there, and reachable with these keys?)")

    def identify(self, shard_id: int) -> AbstractAsyncContextManager[None]:
        """Wait for shard ``shard_id``'s IDENTIFY slot; the body runs holding the grant."""
        if not 0 <= shard_id <= MAX_SHARD:
            raise ValueError(f"shard_id out of range: {shard_id}")
        return self._identify(shard_id)

    @asynccontextmanager
    async def _identify(self, shard_id: int) -> AsyncIterator[None]:
        req = next(self._req_numbers)
        pending = _Pending(shard_id, covered_by=self._ping_seq + 1)
        self._post(Request(self.client_id, req, shard_id))
        self._pending[req] = pending
        try:
            await pending.granted.wait()
        except BaseException:
            if not pending.granted.is_set() and self._outbox is not None:
                # Withdraw: if the grant crossed this cancel, the service counts it as used.
                self._post(Cancel(self.client_id, req))
            raise
        finally:
            self._pending.pop(req, None)
        if pending.closed:
            raise anyio.ClosedResourceError("limiter client closed while waiting for a grant")
        self._used[shard_id] = req
        self._in_use.add(req)
        try:
            if pending.not_before is not None:
                await _until(pending.not_before)
            yield
        finally:
            # Sent or not, the IDENTIFY is behind us: the bucket's next interval starts now.
            # (Cancelled before not_before, nothing was sent: the service still counts the
            # slot from its start.)
            self._in_use.discard(req)
            if self._outbox is not None:
                self._post(Release(self.client_id, req, time.monotonic()))

    def identify_rejected(self, shard_id: int, after: float | None = None) -> None:
        """Shard ``shard_id``'s last IDENTIFY was answered with op 9, ``after`` seconds after
        it was sent: tell the service (fire and forget; once per grant, nothing if this
        client granted the shard nothing)."""
        req = self._used.pop(shard_id, None)
        if req is not None and self._outbox is not None:
            self._post(Rejected(self.client_id, req, shard_id,
                                None if after is None else max(0.0, after)))

    async def configure(
        self,
        *,
        max_concurrency: int | None = None,
        remaining: int | None = None,
        total: int | None = None,
        reset_after: float | None = None,
    ) -> None:
        """Tell the service new limits (``reset_after`` in seconds) and wait until it took
        them: :class:`LimiterRefusedError` if it refused them (our role may not configure,
        or a value is out of range).  An absent limiter never answers: bound the wait with
        :meth:`answer_within`."""
        seq = next(self._configures)
        self._answers[seq] = None
        try:
            self._post(Configure(self.client_id, max_concurrency, remaining, total,
                                 reset_after, seq))
            while (answer := self._answers[seq]) is None:
                await self._answered.wait()
        finally:
            self._answers.pop(seq)
        if not answer.ok:
            raise LimiterRefusedError(
                f"the limiter at {self.endpoint} refused our limits: {answer.reason}")
