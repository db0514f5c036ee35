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

Typed on the way out only: ``request``, ``response`` and ``operation``.  What an operator
tool sends is judged where it is served, each flaw answered with its own refusal
(cluster/command_requests.py, cluster/rolling_requests.py), and the tools read the answers
as documented bodies; ``parse`` hands these kinds, and the ``status`` answer, over as
:class:`Generic`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

from shardctl.errors import ProtocolError
from shardctl.ipc.assignment import Assignment
from shardctl.ipc.watermarks import is_counter_key

__all__ = [
    "Assign",
    "Beat",
    "Command",
    "ControlKind",
    "Generic",
    "Message",
    "Operation",
    "OperationUpdate",
    "Register",
    "Reply",
    "ReportNow",
    "Request",
    "Response",
    "ShardReport",
    "State",
    "StatusQuery",
    "Stop",
    "parse",
    "to_wire",
]


@dataclass(frozen=True, slots=True)
class Register:
    """Worker → supervisor: take slot ``worker`` with its per-spawn ``secret``, or (worker
    None) a free remote slot, proven by the CURVE key; ``pid`` for the status."""

    KIND: ClassVar = "register"
    worker: int | None
    secret: str | None = field(default=None, repr=False)
    pid: int | None = None

    def to_body(self) -> dict[str, Any]:
        if self.worker is None:
            return {"worker": None, "pid": self.pid}
        return {"worker": self.worker, "secret": self.secret}


@dataclass(frozen=True, slots=True)
class Beat:
    """Either way: I am alive."""

    KIND: ClassVar = "beat"

    def to_body(self) -> dict[str, Any]:
        return {}


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
                "error": _plain(self.error), "counts": dict(self.counts)}


@dataclass(frozen=True, slots=True)
class State:
    """Worker → supervisor: every shard of this process."""

    KIND: ClassVar = "state"
    shards: tuple[ShardReport, ...]
    pid: int | None = None

    def to_body(self) -> dict[str, Any]:
        return {"pid": self.pid, "shards": [s.to_body() for s in self.shards]}


@dataclass(frozen=True, slots=True)
class Reply:
    """Worker → supervisor: the outcome of command ``id``."""

    KIND: ClassVar = "reply"
    id: object
    ok: bool
    error: str | None = None
    retry_after: float | None = None
    value: Any = None

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.ok, "error": self.error,
                "retry_after": self.retry_after, "value": self.value}


@dataclass(frozen=True, slots=True)
class Assign:
    """Supervisor → worker: what to run (ipc/assignment.py)."""

    KIND: ClassVar = "assign"
    assignment: Assignment

    def to_body(self) -> dict[str, Any]:
        return self.assignment.to_body()


@dataclass(frozen=True, slots=True)
class Command:
    """Supervisor → worker: run gateway command ``name`` on ``shard``."""

    KIND: ClassVar = "command"
    id: str
    shard: int | None
    name: str
    args: Mapping[str, Any]

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "shard": self.shard, "name": self.name, "args": dict(self.args)}


@dataclass(frozen=True, slots=True)
class Stop:
    """Supervisor → worker: close every shard with ``code`` and exit (None: a code the
    worker could not read; it stops anyway, resumably)."""

    KIND: ClassVar = "stop"
    code: int | None

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code}


@dataclass(frozen=True, slots=True)
class Rebase:
    """Supervisor → worker: your event numbering is out of step with the bus; add each
    key's delta to it and mark batches from now on with ``generation``
    (ipc/watermarks.py)."""

    KIND: ClassVar = "rebase"
    generation: int
    #: (counter key, delta) pairs
    deltas: tuple[tuple[bytes, int], ...]

    def to_body(self) -> dict[str, Any]:
        return {"generation": self.generation,
                "deltas": [[key.hex(), delta] for key, delta in self.deltas]}


@dataclass(frozen=True, slots=True)
class ReportNow:
    """Supervisor → worker: send a state report now, not at the next interval (a reshard's
    catch-up waits for each old worker's latest seqs)."""

    KIND: ClassVar = "report"

    def to_body(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Any peer → supervisor: the cluster's status, please."""

    KIND: ClassVar = "status"

    def to_body(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Request:
    """Operator → supervisor: gateway command ``name`` (ipc/commands_client.py)."""

    KIND: ClassVar = "request"
    id: str
    name: str
    args: Mapping[str, Any]

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": dict(self.args)}


@dataclass(frozen=True, slots=True)
class Response:
    """Supervisor → operator: the answer to request ``id``; ``result`` for a cluster
    operation's outcome (absent from the body when None), else one reply per shard."""

    KIND: ClassVar = "response"
    id: str
    ok: bool
    error: str | None
    replies: tuple[Mapping[str, Any], ...] = ()
    result: Mapping[str, Any] | None = None

    def to_body(self) -> dict[str, Any]:
        body = {"id": self.id, "ok": self.ok, "error": self.error,
                "replies": [dict(r) for r in self.replies]}
        if self.result is not None:
            body["result"] = dict(self.result)
        return body


@dataclass(frozen=True, slots=True)
class Operation:
    """Operator → supervisor: start drain or restart_workers (ipc/operations.py)."""

    KIND: ClassVar = "operation"
    id: str
    name: str
    args: Mapping[str, Any]

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": dict(self.args)}


@dataclass(frozen=True, slots=True)
class OperationUpdate:
    """Supervisor → operator: operation ``id``'s progress; once ``done``, ``ok`` and
    ``error`` too."""

    KIND: ClassVar = "operation"
    id: str
    done: bool
    progress: Mapping[str, Any] | None
    ok: bool = True
    error: str | None = None

    def to_body(self) -> dict[str, Any]:
        if not self.done:
            return {"id": self.id, "done": False, "progress": _plain(self.progress)}
        return {"id": self.id, "done": True, "ok": self.ok, "error": self.error,
                "progress": _plain(self.progress)}


@dataclass(frozen=True, slots=True)
class Generic:
    """A kind handed over as a plain body (module docstring)."""

    kind: str
    body: Mapping[str, Any]


Message: TypeAlias = (Register | Beat | State | Reply | Assign | Command | Stop | Rebase
                      | ReportNow | StatusQuery | Request | Response | Operation
                      | OperationUpdate | Generic)
ControlKind: TypeAlias = Literal["supervisor", "peer"]


def to_wire(message: Message) -> tuple[str, dict[str, Any]]:
    """``message``'s kind and body, exactly as the channel carries them."""
    if isinstance(message, Generic):
        return message.kind, dict(message.body)
    return message.KIND, message.to_body()


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


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


def _rebase(body: Mapping[str, Any]) -> Rebase:
    generation, deltas = _int(body, "generation"), body.get("deltas")
    assert generation is not None
    if not 0 <= generation <= 0xFF:
        raise ProtocolError("field 'generation' must be 0-255")
    if not isinstance(deltas, list):
        raise ProtocolError("field 'deltas' must be a list")
    return Rebase(generation, tuple(map(_delta, deltas)))


def _delta(item: object) -> tuple[bytes, int]:
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
            and type(item[1]) is int):
        raise ProtocolError("each of 'deltas' must be a [key, delta] pair")
    try:
        key = bytes.fromhex(item[0])
    except ValueError:
        raise ProtocolError("a key of 'deltas' is not hex") from None
    if not is_counter_key(key):
        raise ProtocolError("a key of 'deltas' is not a counter key")
    return key, item[1]


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
    "report": lambda _: ReportNow(), "rebase": _rebase,
}
