"""What the supervisor core decided: values the pump executes (spawn, signal, send, save).

Each action names a worker by slot index and carries what its execution needs; the pump
logs them, since a decision is what an operator wants explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from shardctl import errors
from shardctl.cluster.sessions import SessionRecord
from shardctl.ipc.assignment import ShardAssignment

__all__ = ["Action", "Adopt", "Assign", "CrashLoopError", "Fail", "Kill", "Lost",
           "NoAdopter", "Refuse", "SaveSessions", "Send", "Spawn", "StopPeer"]


class CrashLoopError(errors.ShardctlError):
    """A worker died too often in too short a time; respawning it would burn identifies."""


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a process for slot ``worker`` after ``delay`` seconds (``restart``: counted
    against its crash-loop budget; a drain's replacement is not)."""

    worker: int
    delay: float = 0.0
    restart: int = 0
    returncode: int | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """SIGKILL slot ``worker``'s process: silent for ``silent`` seconds (frozen)."""

    worker: int
    silent: float


@dataclass(frozen=True, slots=True)
class Lost:
    """Remote slot ``worker`` fell silent: forget its peer and revoke its publisher."""

    worker: int
    peer: bytes | None
    silent: float


@dataclass(frozen=True, slots=True)
class Adopt:
    """Slot ``worker`` now runs ``shards``, taken from lost slot ``lost``."""

    worker: int
    lost: int
    shards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NoAdopter:
    """Nobody live can take lost slot ``worker``'s shards: they wait for a registration."""

    worker: int
    shards: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Assign:
    """Send slot ``worker`` what it runs now: ``shards`` with the sessions to RESUME.

    ``same_process``: the worker already runs (an adoption), so its old publish key stays
    valid until it switched (ipc/publishers.py).
    """

    worker: int
    shards: tuple[ShardAssignment, ...]
    same_process: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """A registration from ``peer`` is refused, ``why`` (logged once per peer, counted)."""

    peer: bytes
    why: str


@dataclass(frozen=True, slots=True)
class Send:
    """A control message without a decision in its body: ``beat``, or ``stop`` with
    ``code``."""

    worker: int
    kind: Literal["beat", "stop"]
    code: int | None = None


@dataclass(frozen=True, slots=True)
class StopPeer:
    """Tell ``peer``, which holds no slot, to close its shards resumably: a remote worker
    taken for lost is back, and its shards run elsewhere now."""

    peer: bytes


@dataclass(frozen=True, slots=True)
class SaveSessions:
    """Write these records (one per shard) to the state file."""

    records: tuple[SessionRecord, ...]


@dataclass(frozen=True, slots=True)
class Fail:
    """A cluster-wide fatal error: stop everything and raise it from ``run()``."""

    error: errors.ShardctlError


Action: TypeAlias = (Spawn | Kill | Lost | Adopt | NoAdopter | Assign | Refuse | Send
                     | StopPeer | SaveSessions | Fail)
