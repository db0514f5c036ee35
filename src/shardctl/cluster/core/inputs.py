"""What the supervisor core is told: facts the pump observed, each a frozen value.

Time is always an argument (``now``, monotonic seconds); nothing here reads a clock or a
socket.  ``worker`` is a slot index (:attr:`WorkerSlot.index`), never a position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from shardctl.ipc.security import Role

__all__ = ["Beat", "Input", "ShardFailed", "StopRequested", "Stray", "Tick", "Watermark",
           "WorkerExited", "WorkerRegistered"]


@dataclass(frozen=True, slots=True)
class WorkerRegistered:
    """A peer sent ``register`` with ``body`` (its claim: a slot and its secret, or a free
    remote slot); ``role`` is what its credentials prove (cluster/registration.py)."""

    peer: bytes
    body: Mapping[str, Any] = field(repr=False)
    role: Role | None
    now: float


@dataclass(frozen=True, slots=True)
class Stray:
    """A ``kind`` message from a peer that holds no slot (and is not registering or asking
    as an operator); ``role`` is what its credentials prove."""

    peer: bytes
    kind: str
    role: Role | None


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """Slot ``worker``'s process exited; ``planned``: a drain or roll asked it to."""

    worker: int
    now: float
    returncode: int | None = None
    planned: bool = False


@dataclass(frozen=True, slots=True)
class Beat:
    """Any message from slot ``worker``'s registered peer: it is alive at ``now``."""

    worker: int
    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    """The liveness clock: judge every worker's silence at ``now``."""

    now: float


@dataclass(frozen=True, slots=True)
class Watermark:
    """How far the event bus forwarded a shard, as one pair: ``seq`` is the last gateway
    sequence number forwarded *of* ``session_id``.

    ``session_id`` None with a ``seq``: the bus forwarded a session nobody may RESUME (its
    URL was refused); both None: nothing forwarded (a reshard's switch starts over).
    """

    shard: int
    session_id: str | None
    resume_url: str | None
    seq: int | None


@dataclass(frozen=True, slots=True)
class ShardFailed:
    """A shard reported a fatal close: its session is over, never to be resumed."""

    shard: int


@dataclass(frozen=True, slots=True)
class StopRequested:
    """A graceful stop with close ``code``: no worker is respawned from now on."""

    code: int


Input: TypeAlias = (WorkerRegistered | WorkerExited | Beat | Tick | Watermark | ShardFailed
                    | StopRequested | Stray)
