"""Control channel wire format: supervisor (ROUTER) ⇄ worker (DEALER).

Every message is three ZeroMQ frames (after the ROUTER's identity frame on the supervisor
side)::

    b"SC1"          protocol version
    kind            ASCII message kind, one of KINDS below
    body            a JSON object (orjson), fields per kind

Worker → supervisor: ``register`` {worker, secret} from a worker the supervisor spawned
(``secret``: the hex per-spawn secret it read on its stdin), or {worker: null, pid} from a
worker on another host (it proves itself with its CURVE ``worker`` key); ``beat`` {},
``state`` {shards: [...]}, ``reply`` {id, ok, error, retry_after, value}.  Supervisor →
worker: ``assign`` {...}, ``beat`` {}, ``command`` {id, shard, name, args}, ``stop`` {code},
``report`` {} (send a ``state`` now, not at the next beat: a reshard's catch-up),
``rebase`` {generation, deltas} (the worker's event numbering is out of step with the bus:
ipc/watermarks.py).
Any peer (``shardctl status``, not only workers) may send ``status`` {}; the supervisor
answers ``status`` {shards: [...], workers: [...], summary: {...}} without taking the peer
for a worker -- in full to an operator, and with ``redacted: true`` and states and counts
only (no pids, sessions, seqs) to a peer without credentials.

Gateway commands from other processes (:mod:`shardctl.ipc.commands_client`): a peer sends
``request`` {id, name, args} (``name``: update_status, update_voice, request_guild_members,
fetch_guild_members; ``args``: that method's arguments); the supervisor answers ``response``
{id, ok, error, replies: [{shard, ok, error, retry_after, value}]} -- ``ok`` false with an
``error`` and no replies when it refused the request (only operators may send commands).

Drains and restarts (:mod:`shardctl.ipc.operations`): a peer sends ``operation`` {id, name,
args} (``name``: drain {worker, ready_timeout} or restart_workers {rolling, ready_timeout});
the supervisor answers ``operation`` {id, done: false, progress} whenever the progress
changes and ``operation`` {id, done: true, ok, error, progress} at the end -- ``ok`` false
with an ``error`` when it refused (operators only, one operation at a time) or the
operation failed.

Parts.  A body is at most :data:`MAX_BODY_BYTES`; a longer one (a member list, the state of
a thousand shards, a large status) travels as consecutive ``part`` messages::

    part {id, kind, index, count, data}

``id`` names the message (16 hex digits, fresh per message), ``kind`` is the kind it
carries, ``index`` counts 0 .. ``count``-1 in order, and ``data`` is base64 of the next at
most :data:`PART_BYTES` bytes of the carried body's JSON.  The receiver joins them
(:class:`Reassembler`) and handles the result like any message of ``kind``; a part out of
order, or a message over :data:`MAX_MESSAGE_BYTES`, is dropped whole.  Every socket of this
channel sets ``ZMQ_MAXMSGSIZE`` to :data:`MAX_FRAME_BYTES`, so libzmq drops a peer that
sends a larger frame before allocating it.

Typed.  :mod:`shardctl.ipc.control_messages` holds each kind as a dataclass with one codec:
``send`` takes one (or a kind and a body), and receivers turn what they got into one with
:func:`~shardctl.ipc.control_messages.parse`.

Anything else -- wrong frame count, unknown version or kind, a body that is not a JSON object
-- raises :class:`~shardctl.errors.ProtocolError`; receivers log it and drop the message, so a
stray or hostile peer can never crash the supervisor.  Nor can one that never reads: the
supervisor's sends never block (a reply that does not fit in the peer's queue is dropped and
counted, see :meth:`ControlServer.send`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import orjson
import zmq
import zmq.asyncio

from shardctl.errors import ConfigurationError, ProtocolError
from shardctl.ipc import endpoints
from shardctl.ipc.control_messages import Message, to_wire
from shardctl.ipc.security import CurveClient, CurveServer, Role, for_socket, peer_role

log = logging.getLogger(__name__)

VERSION: Final = b"SC1"
KINDS: Final = frozenset(
    {"register", "beat", "state", "reply", "assign", "command", "stop", "status", "part",
     "request", "response", "operation", "report", "rebase"}
)
#: One control message's body; anything longer travels in parts.
MAX_BODY_BYTES: Final = 1 << 20
#: Bytes of the carried body per part: base64 makes 4/3 of it, well under MAX_BODY_BYTES.
PART_BYTES: Final = 512 << 10
#: ZMQ_MAXMSGSIZE of every control socket: the largest frame a peer may send.
MAX_FRAME_BYTES: Final = MAX_BODY_BYTES + (64 << 10)
#: A message in parts is at most this long once joined (a few hundred thousand members).
MAX_MESSAGE_BYTES: Final = 256 << 20
#: Messages in parts one sender may have half-sent at once; the oldest is dropped beyond.
MAX_PENDING: Final = 4
#: Replies a peer has not read yet before more are dropped (ZMQ_SNDHWM of the ROUTER).
SEND_HWM: Final = 1000


class MessageTooLargeError(ProtocolError):
    """A body over :data:`MAX_MESSAGE_BYTES`: it cannot be sent even in parts."""


@dataclass(frozen=True, slots=True)
class ControlMessage:
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message the supervisor received, with who sent it.

    ``role``: the sender's CURVE role; on a private ``ipc://``/``inproc://`` endpoint
    without CURVE (only this OS user can connect) ``Role.OPERATOR``; None for a peer without
    any credential (insecure loopback tcp).
    """

    peer: bytes
    message: ControlMessage
    role: Role | None


def encode(kind: str, body: dict[str, Any] | None = None) -> list[bytes]:
    """One message, whatever its size (:func:`encode_parts` splits long ones)."""
    if kind not in KINDS:
        raise ValueError(f"unknown control message kind {kind!r}")
    return [VERSION, kind.encode("ascii"), orjson.dumps(body or {})]


def encode_parts(kind: str, body: dict[str, Any] | None = None) -> list[list[bytes]]:
    """The messages that carry ``body``: one, or ``part`` messages (module docstring)."""
    frames = encode(kind, body)
    data = frames[2]
    if len(data) <= MAX_BODY_BYTES:
        return [frames]
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"control message {kind!r} is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    message_id = secrets.token_hex(8)
    count = -(-len(data) // PART_BYTES)
    return [encode("part", {
        "id": message_id, "kind": kind, "index": index, "count": count,
        "data": base64.b64encode(data[index * PART_BYTES:(index + 1) * PART_BYTES]).decode(),
    }) for index in range(count)]


def decode(frames: Sequence[bytes]) -> ControlMessage:
    if len(frames) != 3:
        raise ProtocolError(f"control message has {len(frames)} frames, expected 3")
    version, kind_bytes, body_bytes = frames
    if version != VERSION:
        raise ProtocolError(f"unknown control protocol version {bytes(version[:16])!r}")
    try:
        kind = bytes(kind_bytes).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("control message kind is not ASCII") from None
    if kind not in KINDS:
        raise ProtocolError(f"unknown control message kind {kind[:32]!r}")
    if len(body_bytes) > MAX_BODY_BYTES:
        raise ProtocolError(f"control message body too large ({len(body_bytes)} bytes)")
    return ControlMessage(kind, _body(kind, body_bytes))


def _body(kind: str, data: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"control message {kind!r} body is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"control message {kind!r} body is not a JSON object")
    return body


# -- reassembly ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Partial:
    kind: str
    count: int
    chunks: list[bytes] = field(default_factory=list)


class Reassembler:
    """Joins ``part`` messages back into the message they carry, per sender.

    Bounded: at most :data:`MAX_PENDING` unfinished messages per sender (the oldest goes),
    each at most :data:`MAX_MESSAGE_BYTES`.  Feed it only senders you would accept the
    joined message from -- it holds their parts in memory until the last arrives.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[bytes, str], _Partial] = {}

    def feed(self, sender: bytes, message: ControlMessage) -> ControlMessage | None:
        """The message itself, the joined message on its last part, else None (so far).

        A malformed part raises :class:`ProtocolError` and drops that message's parts.
        """
        if message.kind != "part":
            return message
        body = message.body
        message_id, index = body.get("id"), body.get("index")
        if not isinstance(message_id, str) or not 0 < len(message_id) <= 32:
            raise ProtocolError("control part without a valid id")
        key = (sender, message_id)
        try:
            partial = self._partial(key, body) if index == 0 else self._pending.get(key)
            if partial is None:
                raise ProtocolError("its first part never came")
            chunk = _part_data(body, index, partial)
        except ProtocolError as exc:
            self._pending.pop(key, None)
            raise ProtocolError(
                f"dropped part {str(index)[:16]} of control message {message_id!r}: {exc}"
            ) from None
        partial.chunks.append(chunk)
        if len(partial.chunks) < partial.count:
            return None
        del self._pending[key]
        return ControlMessage(partial.kind, _body(partial.kind, b"".join(partial.chunks)))

    def forget(self, sender: bytes) -> None:
        """Drop what ``sender`` left half-sent (it is gone)."""
        for key in [k for k in self._pending if k[0] == sender]:
            del self._pending[key]

    def _partial(self, key: tuple[bytes, str], body: dict[str, Any]) -> _Partial:
        kind, count = body.get("kind"), body.get("count")
        if not isinstance(kind, str) or kind not in KINDS or kind == "part":
            raise ProtocolError(f"control part carries an unknown kind {str(kind)[:32]!r}")
        if not isinstance(count, int) or not 1 < count <= MAX_MESSAGE_BYTES // PART_BYTES:
            raise ProtocolError(f"control part count {count!r} out of range")
        mine = [k for k in self._pending if k[0] == key[0]]
        for old in mine[:max(0, len(mine) - MAX_PENDING + 1)]:
            log.warning("dropped an unfinished control message in parts (%s)", old[1])
            del self._pending[old]
        partial = self._pending[key] = _Partial(kind, count)
        return partial


def _part_data(body: dict[str, Any], index: object, partial: _Partial) -> bytes:
    if index != len(partial.chunks):
        raise ProtocolError(f"expected part {len(partial.chunks)}")
    data = body.get("data")
    if not isinstance(data, str) or len(data) > (PART_BYTES // 3 + 1) * 4:
        raise ProtocolError("part data missing or too long")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("part data is not base64") from None


# -- sockets ---------------------------------------------------------------------------------


def _private(endpoint: str) -> bool:
    """Whether only this OS user can connect: an ipc:// file in the 0700 runtime directory
    (endpoints.bind refuses any other), or inproc:// in this process."""
    return endpoints.parse_endpoint(endpoint).transport in {"ipc", "inproc"}


def check_control_endpoint(endpoint: str, *, curve: bool, insecure_loopback: bool) -> None:
    """Refuse a control endpoint any local user could reach, unless opted in.

    Loopback tcp without CURVE is open to every user of this host: one of them could ask
    for status or try to pass for a worker.  ``insecure_loopback`` accepts that (status to
    such peers is redacted, and no slot is taken without a worker's credential).
    """
    if curve or _private(endpoint) or insecure_loopback:
        return
    raise ConfigurationError(
        f"control endpoint {endpoint} is reachable by every user of this host without CURVE "
        "keys: use --keys DIR, an ipc:// endpoint, or --insecure-loopback to accept that")


class ControlServer:
    """The supervisor's end: a ROUTER that knows its peers by ZeroMQ identity.

    Bound through :func:`shardctl.ipc.endpoints.bind` (locked ipc:// path, loopback tcp://)
    for the life of the object; :meth:`close` releases it.  With ``curve`` it admits the
    ``worker`` and ``operator`` roles only (:data:`~shardctl.ipc.security.ADMITTED`); without
    it, loopback tcp needs ``insecure_loopback`` (:func:`check_control_endpoint`).
    """

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveServer | None = None, insecure_loopback: bool = False) -> None:
        endpoints.check_bind_allowed(endpoint, curve=curve is not None)
        check_control_endpoint(endpoint, curve=curve is not None,
                               insecure_loopback=insecure_loopback)
        self._curve = curve is not None
        self._private = _private(endpoint) and curve is None
        #: Replies and commands dropped because the peer was gone or had not read enough.
        self.drops = 0
        self._dropped_peers: set[bytes] = set()
        self._socket = (context or zmq.asyncio.Context.instance()).socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        # A full or missing peer fails the send at once (dropped) instead of queueing.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._binding = endpoints.bind(self._socket, endpoint,
                                       curve=for_socket(curve, "control"))
        try:
            self.endpoint = self._binding.__enter__()
        except BaseException:
            self._socket.close(linger=0)
            raise

    async def receive(self) -> Incoming:
        """The next well-formed message; malformed ones are logged and dropped."""
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            if len(frames) < 2:
                continue
            try:
                message = decode([f.bytes for f in frames[1:]])
            except ProtocolError as exc:
                log.warning("dropped a malformed control message: %s", exc)
                continue
            return Incoming(frames[0].bytes, message, self._role(frames[1]))

    def _role(self, frame: zmq.Frame) -> Role | None:
        if self._curve:
            return peer_role(frame)
        return Role.OPERATOR if self._private else None

    def send(self, peer: bytes, kind: str | Message, body: dict[str, Any] | None = None
             ) -> bool:
        """Queue a message (typed, or a kind and body) for ``peer`` without ever blocking;
        False if it was dropped.

        Dropped when the peer is gone, or has not read what it was sent up to the high-water
        mark (a peer that never reads must not stall or crash the supervisor): counted in
        :attr:`drops`, logged once per peer.
        """
        if not isinstance(kind, str):
            kind, body = to_wire(kind)
        return self.send_parts(peer, kind, encode_parts(kind, body))

    def send_parts(self, peer: bytes, kind: str, parts: Sequence[list[bytes]]) -> bool:
        """:meth:`send` of what :func:`encode_parts` made already: a long body can be
        encoded in a thread (the supervisor's ``status`` at 10,000 shards), and only this
        stays on the loop."""
        for frames in parts:
            # A non-blocking send resolves its future at once (pyzmq short-circuits it).
            future = cast("asyncio.Future[object]", self._socket.send_multipart(
                [peer, *frames], flags=zmq.NOBLOCK))
            error = future.exception()
            if error is None:
                continue
            if not isinstance(error, zmq.ZMQError) or error.errno not in (
                    zmq.EAGAIN, zmq.EHOSTUNREACH):
                raise error
            self._dropped(peer, kind, gone=error.errno == zmq.EHOSTUNREACH)
            return False
        return True

    def _dropped(self, peer: bytes, kind: str, *, gone: bool) -> None:
        self.drops += 1
        if peer in self._dropped_peers:
            return
        if len(self._dropped_peers) >= 4096:  # a bound on memory, not a schedule
            self._dropped_peers.clear()
        self._dropped_peers.add(peer)
        log.warning("control: dropped a %s message for peer %s: %s (further drops for this "
                    "peer are counted, not logged)", kind, peer.hex(),
                    "it is gone" if gone else "it is not reading")

    def close(self) -> None:
        if not self._socket.closed:
            self._binding.__exit__(None, None, None)
            self._socket.close(linger=0)


class ControlClient:
    """A worker's end: a DEALER connected to the supervisor's ROUTER.

    Long messages go out in parts and come back joined (module docstring).
    """

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveClient | None = None) -> None:
        self._socket = (context or zmq.asyncio.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._parts = Reassembler()
        if curve is not None:
            curve.apply(self._socket)
        self._socket.connect(endpoint)

    async def receive(self) -> ControlMessage:
        while True:
            frames = await self._socket.recv_multipart()
            try:
                message = self._parts.feed(b"", decode(frames))
            except ProtocolError as exc:
                log.warning("dropped a malformed control message: %s", exc)
                continue
            if message is not None:
                return message

    async def send(self, kind: str | Message, body: dict[str, Any] | None = None) -> None:
        """Send a typed message (or ``kind`` and ``body``), in parts if long;
        :class:`MessageTooLargeError` if too long."""
        if not isinstance(kind, str):
            kind, body = to_wire(kind)
        for frames in encode_parts(kind, body):
            await self._socket.send_multipart(frames)

    def close(self) -> None:
        self._socket.close(linger=0)
