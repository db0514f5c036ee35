"""Faults the sandbox can provoke (protocol §16 "provoke" items), as plain values.

A fault is a small frozen dataclass; :func:`parse_fault` also takes the short forms tests
like to write: ``"reconnect"``, ``("invalid_session", True)``, ``"drop"``, ``("zombie", True)``,
``("close", 4000)``, ``"request_heartbeat"``, ``"corrupt_frame"``, ``"not_json"``,
``("refuse_connections", 3.0)``.  :class:`ScheduledFault` puts one on a timer
measured from a connection event, so a config can provoke faults without a test driving them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Reconnect:
    """Op 7; ``before_hello`` sends it instead of HELLO (only meaningful when scheduled)."""

    before_hello: bool = False


@dataclass(frozen=True, slots=True)
class InvalidSession:
    """Op 9 with ``d = resumable``; ``False`` also ends the session."""

    resumable: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    """Abort the TCP connection without a close frame (client sees 1006)."""


@dataclass(frozen=True, slots=True)
class Zombie:
    """Stop (``on=True``) or restart ACKing heartbeats while keeping the socket open."""

    on: bool = True


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with ``code``."""

    code: int = 4000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RequestHeartbeat:
    """Server op 1: the client must beat at once."""


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """A binary message the client cannot inflate (a broken zlib/zstd stream)."""


@dataclass(frozen=True, slots=True)
class NotJson:
    """A payload that decompresses fine but is not JSON (compressed like any other)."""


@dataclass(frozen=True, slots=True)
class RefuseConnections:
    """An outage: drop this socket and refuse every upgrade (HTTP 503) for ``duration`` s."""

    duration: float = 3.0


@dataclass(frozen=True, slots=True)
class GuildOutage:
    """GUILD_DELETE ``unavailable: true`` for ``guild_id`` then GUILD_CREATE after ``duration``."""

    guild_id: int
    duration: float = 1.0


Fault: TypeAlias = (
    Reconnect | InvalidSession | Drop | Zombie | Close | RequestHeartbeat | GuildOutage
    | CorruptFrame | NotJson | RefuseConnections
)
FaultLike: TypeAlias = Fault | str | tuple[str, object]

_SIMPLE: dict[str, Fault] = {
    "reconnect": Reconnect(),
    "reconnect_before_hello": Reconnect(before_hello=True),
    "drop": Drop(),
    "zombie": Zombie(),
    "request_heartbeat": RequestHeartbeat(),
    "invalid_session": InvalidSession(),
    "close": Close(),
    "corrupt_frame": CorruptFrame(),
    "not_json": NotJson(),
    "refuse_connections": RefuseConnections(),
}


def parse_fault(value: FaultLike) -> Fault:
    """Turn any accepted spelling into a :data:`Fault`; ``ValueError`` on anything else."""
    if isinstance(value, str):
        if value in _SIMPLE:
            return _SIMPLE[value]
        raise ValueError(f"unknown fault {value!r}")
    if isinstance(value, tuple):
        name, arg = value
        if name == "invalid_session" and isinstance(arg, bool):
            return InvalidSession(resumable=arg)
        if name == "zombie" and isinstance(arg, bool):
            return Zombie(on=arg)
        if name == "close" and isinstance(arg, int) and not isinstance(arg, bool):
            return Close(code=arg)
        if name == "guild_outage" and isinstance(arg, int):
            return GuildOutage(guild_id=arg)
        if name == "refuse_connections" and isinstance(arg, int | float) \
                and not isinstance(arg, bool):
            return RefuseConnections(duration=float(arg))
        raise ValueError(f"unknown fault {value!r}")
    if isinstance(value, Reconnect | InvalidSession | Drop | Zombie | Close | RequestHeartbeat
                  | GuildOutage | CorruptFrame | NotJson | RefuseConnections):
        return value
    raise ValueError(f"unknown fault {value!r}")


Trigger: TypeAlias = Literal["connect", "ready"]


@dataclass(frozen=True, slots=True)
class ScheduledFault:
    """Apply ``fault`` ``after`` seconds past ``trigger`` on connections of ``shard_id``.

    ``shard_id=None`` means every shard.  ``once=True`` fires on the first matching connection
    only; otherwise on every matching connection (e.g. op 7 on every fresh session).
    A ``Reconnect(before_hello=True)`` fires at connect time, in place of HELLO.
    """

    fault: Fault
    after: float = 0.0
    shard_id: int | None = None
    trigger: Trigger = "ready"
    once: bool = True


def parse_scheduled(text: str) -> ScheduledFault:
    """CLI form ``KIND[:ARG]@SECONDS[/SHARD]``, e.g. ``reconnect@10/0``, ``close:4000@5``."""
    spec, _, when = text.partition("@")
    seconds, _, shard = when.partition("/")
    kind, _, arg = spec.partition(":")
    fault: Fault
    if not arg:
        fault = parse_fault(kind)
    elif kind in ("invalid_session", "zombie"):
        fault = parse_fault((kind, arg.lower() in ("1", "true", "yes")))
    elif kind == "refuse_connections":
        fault = parse_fault((kind, float(arg)))
    else:
        fault = parse_fault((kind, int(arg)))
    trigger: Trigger = "connect" if fault == Reconnect(before_hello=True) else "ready"
    return ScheduledFault(fault=fault, after=float(seconds or 0.0),
                          shard_id=int(shard) if shard else None, trigger=trigger, once=False)
