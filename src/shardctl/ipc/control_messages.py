"""The control channel's messages as typed values, with one codec (after ``ipc/limiter.py``).

:func:`to_wire` turns a message into its ``(kind, body)`` and :func:`parse` turns a received
:class:`~shardctl.ipc.control.ControlMessage` back into one, so no call site builds or
picks apart a body by hand.  The wire is a contract (README "Control channel", workers of
another version, ``shardctl status``): the bodies are byte for byte what the dict-built
messages were -- same keys, same order (orjson keeps insertion order) -- and a test
proves it for every kind.

``parse`` checks what the receiver relies on and raises
:class:`~shardctl.errors.ProtocolError` naming the kind and field otherwise; unknown keys
are ignored, so a newer peer may add fields.  The two directions share two kinds: ``beat``
(both ways, ``{}``) and ``status`` (a query ``{}`` in, the answer out): ``parse`` reads
the direction from ``sender``.

Still dicts on purpose: the ``status`` answer, a command's ``args`` and ``value``, and the
``request``/``response``/``operation`` bodies of operator tools, which are documented and
validated where they are served (cluster/command_requests.py, cluster/rolling_requests.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from shardctl.errors import ProtocolError
from shardctl.ipc.assignment import Assignment

__all__ = ["Assign", "Beat", "Command", "ControlKind", "Generic", "Message", "Register",
           "Reply", "ShardReport", "State", "StatusQuery", "Stop", "parse", "to_wire"]


@dataclass(frozen=True, slots=True)
class Register:
    """Worker → supervisor: take slot ``worker`` with its per-spawn ``secret``, or (worker
    None) a free remote slot, proven by the CURVE key; ``pid`` for the status."""

    worker: int | None
    secret: str | None = field(default=None, repr=False)
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Beat:
    """Either way: I am alive."""


@dataclass(frozen=True, slots=True)
class ShardReport:
    """One shard in a ``state`` message (what ``shardctl status`` shows)."""

    id: int
    state: str
    session_id: str | None = None
    resume_gateway_url: str | None = None
    seq: int | None = None
    latency: float | None = None
    guilds: int = 0
    last_event: float | None = None
    #: a fatal close: {kind, code, message}
    error: Mapping[str, Any] | None = None
    #: events by type since the process started
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "session_id": self.session_id,
                "resume_gateway_url": self.resume_gateway_url, "seq": self.seq,
                "latency": self.latency, "guilds": self.guilds, "last_event": self.last_event,
                "error": None if self.error is None else dict(self.error),
                "counts": dict(self.counts)}


@dataclass(frozen=True, slots=True)
class State:
    """Worker → supervisor: every shard of this process."""

    shards: tuple[ShardReport, ...]
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Worker → supervisor: the outcome of command ``id``."""

    id: object
    ok: bool
    error: str | None = None
    retry_after: float | None = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class Assign:
    """Supervisor → worker: what to run (ipc/assignment.py)."""

    assignment: Assignment


@dataclass(frozen=True, slots=True)
class Command:
    """Supervisor → worker: run gateway command ``name`` on ``shard``."""

    id: str
    shard: int | None
    name: str
    args: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Stop:
    """Supervisor → worker: close every shard with ``code`` and exit (None: a code the
    worker could not read; it stops anyway, resumably)."""

    code: int | None


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Any peer → supervisor: the cluster's status, please."""


@dataclass(frozen=True, slots=True)
class Generic:
    """A kind still carried as a plain body (module docstring)."""

    kind: str
    body: Mapping[str, Any]


Message: TypeAlias = (Register | Beat | State | Reply | Assign | Command | Stop | StatusQuery
                      | Generic)
ControlKind: TypeAlias = Literal["supervisor", "peer"]


def to_wire(message: Message) -> tuple[str, dict[str, Any]]:
    """``message``'s kind and body, exactly as the channel carries them."""
    match message:
        case Register(None, _, pid):
            return "register", {"worker": None, "pid": pid}
        case Register(worker, secret, _):
            return "register", {"worker": worker, "secret": secret}
        case Beat():
            return "beat", {}
        case State(shards, pid):
            return "state", {"pid": pid, "shards": [s.to_body() for s in shards]}
        case Reply(id_, ok, error, retry_after, value):
            return "reply", {"id": id_, "ok": ok, "error": error, "retry_after": retry_after,
                             "value": value}
        case Assign(assignment):
            return "assign", assignment.to_body()
        case Command(id_, shard, name, args):
            return "command", {"id": id_, "shard": shard, "name": name, "args": dict(args)}
        case Stop(code):
            return "stop", {"code": code}
        case StatusQuery():
            return "status", {}
        case Generic(kind, body):
            return kind, dict(body)
    raise TypeError(f"not a control message: {type(message).__name__}")  # pragma: no cover


def parse(kind: str, body: Mapping[str, Any], *, sender: ControlKind) -> Message:
    """The typed message of a received ``(kind, body)``; ``sender``: "supervisor" for what
    a worker receives, "peer" for what the supervisor receives."""
    parser = (_FROM_SUPERVISOR if sender == "supervisor" else _FROM_PEER).get(kind)
    if parser is None:
        return Generic(kind, body)
    try:
        return parser(body)
    except ProtocolError as exc:
        raise ProtocolError(f"control message {kind!r}: {exc}") from None


# -- field checks ------------------------------------------------------------------------------


def _int(body: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if type(value) is not int:  # bool is no slot number
        raise ProtocolError(f"field {key!r} must be an integer")
    return value


def _str(body: Mapping[str, Any], key: str, *, optional: bool = True) -> str | None:
    value = body.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string")
    return value


def _number(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise ProtocolError(f"field {key!r} must be a number")
    return float(value)


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = body.get(key)
    if value is not None and not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object")
    return value


# -- parsers -------------------------------------------------------------------------------------


def _register(body: Mapping[str, Any]) -> Register:
    return Register(_int(body, "worker", optional=True), _str(body, "secret"),
                    _int(body, "pid", optional=True))


def _shard_report(item: object) -> ShardReport:
    if not isinstance(item, dict):
        raise ProtocolError("each of 'shards' must be an object")
    shard_id, state = _int(item, "id"), _str(item, "state", optional=False)
    assert shard_id is not None and state is not None
    guilds = _int(item, "guilds", optional=True)
    return ShardReport(
        shard_id, state, _str(item, "session_id"), _str(item, "resume_gateway_url"),
        _int(item, "seq", optional=True), _number(item, "latency"), guilds or 0,
        _number(item, "last_event"), _object(item, "error"), _object(item, "counts") or {})


def _state(body: Mapping[str, Any]) -> State:
    shards = body.get("shards")
    if not isinstance(shards, list):
        raise ProtocolError("field 'shards' must be a list")
    return State(tuple(map(_shard_report, shards)), _int(body, "pid", optional=True))


def _reply(body: Mapping[str, Any]) -> Reply:
    ok = body.get("ok")
    if type(ok) is not bool:
        raise ProtocolError("field 'ok' must be true or false")
    return Reply(body.get("id"), ok, _str(body, "error"), _number(body, "retry_after"),
                 body.get("value"))


def _assign(body: Mapping[str, Any]) -> Assign:
    return Assign(Assignment.from_body(dict(body)))


def _command(body: Mapping[str, Any]) -> Command:
    command_id, name = _str(body, "id", optional=False), _str(body, "name", optional=False)
    assert command_id is not None and name is not None
    return Command(command_id, _int(body, "shard", optional=True), name,
                   _object(body, "args") or {})


def _stop(body: Mapping[str, Any]) -> Stop:
    # Never refused: a stop the worker cannot read is still a stop.
    code = body.get("code")
    return Stop(code if type(code) is int else None)


_Parser: TypeAlias = Callable[[Mapping[str, Any]], Message]

_FROM_PEER: dict[str, _Parser] = {
    "register": _register, "beat": lambda _: Beat(), "state": _state, "reply": _reply,
    "status": lambda _: StatusQuery(),
}
_FROM_SUPERVISOR: dict[str, _Parser] = {
    "assign": _assign, "beat": lambda _: Beat(), "command": _command, "stop": _stop,
}
