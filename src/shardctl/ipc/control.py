"""Control channel wire format: supervisor (ROUTER) ⇄ worker (DEALER).

Every message is three ZeroMQ frames (after the ROUTER's identity frame on the supervisor
side)::

    b"SC1"          protocol version
    kind            ASCII message kind, one of KINDS below
    body            a JSON object (orjson), fields per kind

Worker → supervisor: ``register`` {worker, pid}, ``beat`` {}, ``state`` {shards: [...]},
``reply`` {id, ok, error}.  Supervisor → worker: ``assign`` {...}, ``beat`` {},
``command`` {id, shard, name, args}, ``stop`` {code}.  Any peer (``shardctl status``, not
only workers) may send ``status`` {}; the supervisor answers ``status`` {shards: [...],
summary: {...}} without taking the peer for a worker.

Anything else -- wrong frame count, unknown version or kind, a body that is not a JSON object
-- raises :class:`~shardctl.errors.ProtocolError`; receivers log it and drop the message, so a
stray or hostile peer can never crash the supervisor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import zmq
import zmq.asyncio

from shardctl.errors import ProtocolError
from shardctl.ipc import endpoints
from shardctl.ipc.security import CurveClient, CurveServer

log = logging.getLogger(__name__)

VERSION: Final = b"SC1"
KINDS: Final = frozenset(
    {"register", "beat", "state", "reply", "assign", "command", "stop", "status"}
)
#: A control message is small; anything larger is a bug or an attack.
MAX_BODY_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class ControlMessage:
    kind: str
    body: dict[str, Any]


def encode(kind: str, body: dict[str, Any] | None = None) -> list[bytes]:
    if kind not in KINDS:
        raise ValueError(f"unknown control message kind {kind!r}")
    return [VERSION, kind.encode("ascii"), orjson.dumps(body or {})]


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
    try:
        body = orjson.loads(body_bytes)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"control message {kind!r} body is not JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"control message {kind!r} body is not a JSON object")
    return ControlMessage(kind, body)


class ControlServer:
    """The supervisor's end: a ROUTER that knows its peers by ZeroMQ identity.

    Bound through :func:`shardctl.ipc.endpoints.bind` (locked ipc:// path, loopback tcp://)
    for the life of the object; :meth:`close` releases it.  With ``curve`` only workers
    holding an authorised key can connect, so only they can register or reply
    (:mod:`shardctl.ipc.security`); without it the endpoint is private to this user.
    """

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveServer | None = None) -> None:
        self._socket = (context or zmq.asyncio.Context.instance()).socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Commands to a worker that has gone away fail at once instead of queueing silently.
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._binding = endpoints.bind(self._socket, endpoint, curve=curve)
        try:
            self.endpoint = self._binding.__enter__()
        except BaseException:
            self._socket.close(linger=0)
            raise

    async def receive(self) -> tuple[bytes, ControlMessage]:
        """The next well-formed message; malformed ones are logged and dropped."""
        while True:
            frames = await self._socket.recv_multipart()
            if len(frames) < 2:
                continue
            try:
                return frames[0], decode(frames[1:])
            except ProtocolError as exc:
                log.warning("dropped a malformed control message: %s", exc)

    async def send(self, peer: bytes, kind: str, body: dict[str, Any] | None = None) -> bool:
        """False when the peer is gone (its message is dropped, never queued)."""
        try:
            await self._socket.send_multipart([peer, *encode(kind, body)])
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise
        return True

    def close(self) -> None:
        if not self._socket.closed:
            self._binding.__exit__(None, None, None)
            self._socket.close(linger=0)


class ControlClient:
    """A worker's end: a DEALER connected to the supervisor's ROUTER."""

    def __init__(self, endpoint: str, *, context: zmq.asyncio.Context | None = None,
                 curve: CurveClient | None = None) -> None:
        self._socket = (context or zmq.asyncio.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.connect(endpoint)

    async def receive(self) -> ControlMessage:
        while True:
            frames = await self._socket.recv_multipart()
            try:
                return decode(frames)
            except ProtocolError as exc:
                log.warning("dropped a malformed control message: %s", exc)

    async def send(self, kind: str, body: dict[str, Any] | None = None) -> None:
        await self._socket.send_multipart(encode(kind, body))

    def close(self) -> None:
        self._socket.close(linger=0)
