"""Which worker slot a ``register`` message may take, if any (issue 12).

A slot's assignment carries the bot token, so taking a slot is the one thing on the control
channel that must be proven, never claimed:

- a slot the supervisor spawned a process for is taken with that process's per-spawn
  secret (:meth:`WorkerSlot.take`, read by the worker on its stdin), once; a pid is no
  proof (anyone may read pids), nor is being on the private ipc:// endpoint;
- a remote slot (``worker: null``) is taken by a peer whose CURVE key has the ``worker``
  role, and only while it is free (or by the peer that already holds it).

A slot already taken is never handed to another peer: a stranger cannot displace a live
worker.  With CURVE on, every registration needs the ``worker`` role, whatever it proves
besides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shardctl.cluster import remote
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc.security import Role


def slot_for(slots: Sequence[WorkerSlot], body: Mapping[str, Any], peer: bytes,
             role: Role | None, *, curve: bool) -> tuple[WorkerSlot | None, str]:
    """The slot ``peer`` takes with this registration, or None and why not."""
    if curve and role != Role.WORKER:
        return None, f"a peer with the {role or 'no'} role cannot register as a worker"
    index = body.get("worker")
    if index is None:
        if role != Role.WORKER:
            return None, "a remote worker needs a CURVE key with the worker role"
        slot = remote.claim_slot(slots, peer)
        return slot, "" if slot is not None else "no remote slot is free"
    # by index, not position: a reshard adds slots and removes the ones it retired
    slot = None if isinstance(index, bool) or not isinstance(index, int) else next(
        (s for s in slots if s.index == index), None)
    if slot is None:
        return None, f"no worker slot {str(index)[:16]}"
    if slot.remote:
        return None, f"slot {index} is for a remote worker (register with worker: null)"
    if not slot.take(body.get("secret")):
        return None, f"wrong or already used secret for slot {index}"
    return slot, ""
