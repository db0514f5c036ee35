"""Workers on other hosts: remote slots, where they connect, and who adopts a lost one's shards.

``shardctl run --remote-workers N`` (``RunConfig.remote_workers``) plans N more worker slots
than it spawns (``--processes``, which may then be 0).  The supervisor never starts a process
for a remote slot: a ``shardctl worker --supervisor tcp://HOST:PORT`` started on any host
registers with ``worker: null`` and takes the first free remote slot (preferring one with
shards to run).  Across hosts the control endpoint is ``tcp://`` on an address the workers can
reach, which needs CURVE keys (``--keys DIR``, :mod:`shardctl.ipc.security`): only peers whose
key has the ``worker`` role can register for a remote slot and receive its assignment (and
the token in it); see :mod:`shardctl.cluster.registration`.

Endpoints: a worker learns the limiter and the events-in endpoints from its assignment, so
they must be reachable from its host too.  When the control endpoint is ``tcp://HOST:PORT``,
the supervisor binds its limiter and events-in sockets on the same HOST with ports the kernel
chooses, and advertises what it bound.  HOST must therefore be a concrete address (not
``0.0.0.0`` or ``*``, which could not be advertised).

A remote worker whose liveness beats stop (its host is gone, or cut off) cannot be killed and
respawned like a local one.  Its shards move at once to the live worker running the fewest
shards: the supervisor sends that worker another ``assign`` listing the shards it now runs,
each with the session to RESUME and the last sequence number the supervisor *forwarded*
(``EventForwarder.last_seq``), so Discord replays whatever was in flight and nothing is
published twice or lost (DESIGN.md §7).  The survivor starts only the shards it does not run
yet.  With no live worker left, the shards stay on the lost slot, which the next registering
worker takes.  A lost worker that comes back is unknown to the supervisor: anything it sends
(but ``register``) is answered with ``stop``, so it closes its stale connections instead of
fighting the adopter for the sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from shardctl.cluster.workers import WorkerSlot
from shardctl.errors import ConfigurationError
from shardctl.ipc import endpoints
from shardctl.ipc.security import CurveClient, CurveServer, load_client, load_server

__all__ = ["adopter_for", "claim_slot", "move_shards", "service_endpoint",
           "supervisor_keys"]


def supervisor_keys(directory: Path | None, *, shared_limiter: bool = False
                    ) -> tuple[CurveServer | None, CurveClient | None]:
    """The supervisor's server keys, and with ``shared_limiter`` its own client keys (the
    ``supervisor`` role, which may configure a ``shardctl limiter``; never a worker's)."""
    if directory is None:
        return None, None
    server = load_server(directory)
    client = load_client(directory, "supervisor") if shared_limiter else None
    return server, client


def service_endpoint(control: str | None, name: str, run_dir: Path) -> str:
    """Where to bind the limiter or events-in socket: next to a tcp control endpoint, so
    workers that reach one reach all; else ``ipc://`` in the runtime directory."""
    if control is not None:
        parsed = endpoints.parse_endpoint(control)
        if parsed.transport == "tcp":
            host = parsed.host or endpoints.LOOPBACK_HOST
            if host in {"*", "0.0.0.0", "::"}:
                raise ConfigurationError(
                    f"control endpoint {control}: workers on other hosts must be told a "
                    "reachable address; bind a concrete one, e.g. tcp://10.0.0.5:7700")
            return endpoints.tcp_endpoint(None, host)
    return endpoints.ipc_endpoint(f"{name}.sock", run_dir)


def claim_slot(slots: Sequence[WorkerSlot], peer: bytes) -> WorkerSlot | None:
    """The remote slot a worker registering with ``worker: null`` takes (None: none free)."""
    for slot in slots:
        if slot.remote and slot.peer == peer:
            return slot  # the same connection registering again
    free = [s for s in slots if s.remote and s.peer is None]
    free.sort(key=lambda s: not s.shard_ids)  # slots with shards waiting first
    return free[0] if free else None


def adopter_for(slots: Sequence[WorkerSlot], lost: WorkerSlot) -> WorkerSlot | None:
    """The live, registered worker that takes a lost remote worker's shards."""
    live = [s for s in slots if s is not lost and s.peer is not None and s.alive]
    return min(live, key=lambda s: (len(s.shard_ids), s.index)) if live else None


def move_shards(lost: WorkerSlot, adopter: WorkerSlot) -> list[int]:
    """Give ``lost``'s shards to ``adopter``; the ids moved."""
    moved, lost.shard_ids = lost.shard_ids, []
    adopter.shard_ids = sorted(adopter.shard_ids + moved)
    return moved
