"""The supervisor core: what the cluster decides, as data (issue 14).

Rules of this file (after ``gateway/machine.py``):

1. Every decision about workers and sessions lives here: whether and when a dead worker is
   respawned (crash-loop budget, cluster/restarts.py), when a silent worker is killed or a
   silent remote one declared lost and who adopts its shards (cluster/remote.py), which
   session and seq a worker resumes (:class:`~shardctl.cluster.core.book.SessionBook`),
   which sessions a stop saves, and whether a shard's report has reached the bus.
2. No I/O and no clock: :meth:`SupervisorCore.handle` takes an
   :data:`~shardctl.cluster.core.inputs.Input` (``now`` inside) and returns
   :data:`~shardctl.cluster.core.actions.Action` values; ``cluster/supervisor.py`` is the
   pump that observes processes and sockets, feeds them in, and executes what comes out.
3. The worker table is the supervisor's :class:`~shardctl.cluster.workers.WorkerSlot`
   list, read as data: the core writes the fields it decides (``peer``, ``last_beat``,
   ``restarts``, ``shard_ids`` on adoption) and never touches a process; whether a local
   process still runs (``alive``) is observed by the pump.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

from shardctl.cluster import registration, remote
from shardctl.cluster.core.actions import (
    Action,
    Adopt,
    Assign,
    CrashLoopError,
    Fail,
    Kill,
    Lost,
    NoAdopter,
    Refuse,
    SaveSessions,
    Send,
    Spawn,
    StopPeer,
)
from shardctl.cluster.core.book import SessionBook
from shardctl.cluster.core.inputs import (
    Beat,
    Input,
    ShardFailed,
    StopRequested,
    Stray,
    Tick,
    Watermark,
    WorkerExited,
    WorkerRegistered,
)
from shardctl.cluster.sessions import SessionRecord
from shardctl.cluster.workers import WorkerSlot
from shardctl.gateway.closecodes import SESSION_ENDING_CLIENT_CODES
from shardctl.ipc.assignment import ShardAssignment
from shardctl.ipc.security import Role

__all__ = ["WORKER_STARTUP_GRACE", "SupervisorCore"]

#: A worker that has not registered yet is still importing (seconds on a loaded host):
#: judge it by this, not by the liveness timeout, or a short timeout kills every respawn.
WORKER_STARTUP_GRACE: Final = 20.0


class ShardView(Protocol):
    """What a shard's latest state report said (the supervisor's ``ShardStatus``)."""

    @property
    def id(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def seq(self) -> int | None: ...


class SupervisorCore:
    """Inputs in, actions out; see the module docstring.

    ``workers`` returns the current slot list (a reshard extends it).  ``shards`` returns
    this instance's shard ids (a reshard replaces them), the ones a stop saves.
    """

    def __init__(self, workers: Callable[[], Sequence[WorkerSlot]],
                 shards: Callable[[], Sequence[int]], *, liveness_timeout: float,
                 startup_grace: float = WORKER_STARTUP_GRACE, curve: bool = False,
                 sessions: SessionBook | None = None) -> None:
        self._workers = workers
        self._shards = shards
        #: CURVE is on: every registration needs the worker role
        self.curve = curve
        self.liveness_timeout = liveness_timeout
        self.startup_grace = startup_grace
        self.sessions = sessions if sessions is not None else SessionBook()
        #: a stop began: no worker is respawned any more
        self.stopping = False

    def handle(self, event: Input) -> list[Action]:
        """What to do about ``event``, in order (the pump executes them as listed)."""
        if isinstance(event, Watermark):
            self.sessions.observe(event)
            return []
        if isinstance(event, ShardFailed):
            self.sessions.end(event.shard)
            return []
        if isinstance(event, Beat):
            slot = self._slot(event.worker)
            if slot is not None and slot.peer is not None:
                slot.last_beat = event.now
            return []
        if isinstance(event, Tick):
            return self._tick(event.now)
        if isinstance(event, WorkerRegistered):
            return self._registered(event)
        if isinstance(event, WorkerExited):
            return self._exited(event)
        if isinstance(event, Stray):
            return self._stray(event)
        return self._stop(event)

    # ------------------------------------------------------------------ decisions

    def _registered(self, event: WorkerRegistered) -> list[Action]:
        """A slot for a peer that proves its claim (its spawn secret, or a worker key for a
        free remote slot), never one another live peer holds."""
        slot, why = registration.slot_for(self._workers(), event.body, event.peer,
                                          event.role, curve=self.curve)
        if slot is None:
            return [Refuse(event.peer, why)]
        if slot.remote:
            pid = event.body.get("pid")
            slot.pid = pid if type(pid) is int else None
        slot.peer, slot.last_beat = event.peer, event.now
        return [Assign(slot.index, self.resume_plan(slot))]

    def _exited(self, event: WorkerExited) -> list[Action]:
        slot = self._slot(event.worker)
        if slot is None:
            return []
        slot.peer = None
        if self.stopping or slot.retired:
            return []
        if event.planned:
            return [Spawn(slot.index, returncode=event.returncode)]
        delay = slot.policy.record(event.now)
        if delay is None:
            return [Fail(CrashLoopError(
                f"worker {slot.index} exited {slot.policy.max_restarts + 1} times within "
                f"{slot.policy.window:g} s (last exit code {event.returncode}); stopping "
                "instead of respawning it again"))]
        slot.restarts += 1
        return [Spawn(slot.index, delay, restart=slot.restarts, returncode=event.returncode)]

    def _tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for slot in list(self._workers()):
            if not slot.alive:
                continue
            silent = now - slot.last_beat
            if silent > self.liveness_timeout and slot.remote:
                actions += self._lost(slot, silent, now)
            elif silent > self.liveness_timeout and (
                    slot.peer is not None or silent > self.startup_grace):
                actions.append(Kill(slot.index, silent))  # frozen: its exit respawns it
            elif slot.peer is not None:
                actions.append(Send(slot.index, "beat"))
        return actions

    def _lost(self, slot: WorkerSlot, silent: float, now: float) -> list[Action]:
        """A remote worker's host is gone: its shards RESUME on a live worker (remote.py).

        Never on one as silent as the lost one: it would be lost in the same tick, after
        being sent an assignment it may never read.
        """
        actions: list[Action] = [Lost(slot.index, slot.peer, silent)]
        slot.peer = None
        heard = [s for s in self._workers() if now - s.last_beat <= self.liveness_timeout]
        adopter = remote.adopter_for(heard, slot)
        if adopter is None or adopter.peer is None:
            actions.append(NoAdopter(slot.index, tuple(slot.shard_ids)))
            return actions
        moved = remote.move_shards(slot, adopter)
        actions.append(Adopt(adopter.index, slot.index, tuple(moved)))
        actions.append(Assign(adopter.index, self.resume_plan(adopter), same_process=True))
        return actions

    def _stray(self, event: Stray) -> list[Action]:
        """A worker (by its key) beating or reporting without a slot was taken for lost and
        replaced: it must let go of sessions that now run elsewhere."""
        if event.kind in {"beat", "state"} and event.role == Role.WORKER and any(
                s.remote for s in self._workers()):
            return [StopPeer(event.peer)]
        return []

    def _stop(self, event: StopRequested) -> list[Action]:
        first = not self.stopping
        self.stopping = True
        if not first:
            return []
        return [Send(s.index, "stop", event.code) for s in self._workers()
                if s.peer is not None and s.alive]

    # ------------------------------------------------------------------ questions

    def resume_plan(self, slot: WorkerSlot) -> tuple[ShardAssignment, ...]:
        """``slot``'s shards, each with the session and seq it RESUMEs (or none: IDENTIFY).

        A reshard's staged set runs new shards under old ids: they all IDENTIFY.
        """
        if slot.staged:
            return tuple(ShardAssignment(i) for i in slot.shard_ids)
        plan = []
        for shard_id in slot.shard_ids:
            record = self.sessions.record(shard_id)
            plan.append(ShardAssignment(shard_id) if record is None else ShardAssignment(
                shard_id, record.session_id, record.resume_gateway_url, record.seq))
        return tuple(plan)

    def resumable(self) -> list[SessionRecord]:
        """Every shard's session record, in shard order (those that have one)."""
        return self.sessions.records(sorted(self._shards()))

    def save(self, code: int) -> SaveSessions:
        """What a stop with ``code`` writes: nothing if the code ended the sessions."""
        if code in SESSION_ENDING_CLIENT_CODES:
            return SaveSessions(())
        return SaveSessions(tuple(self.resumable()))

    def forwarded(self, shard: ShardView) -> bool:
        """Whether the bus forwarded all the shard reported having received, of the session
        it reported: a READY on the control channel may still sit in the worker's queue."""
        return self.sessions.forwarded(shard.id, shard.session_id, shard.seq)

    def all_ready(self, shards: Iterable[ShardView]) -> bool:
        return all(s.state == "ready" for s in shards)

    def all_forwarded(self, shards: Iterable[ShardView]) -> bool:
        """Every shard's report is on the bus (``wait_ready``'s second half)."""
        return all(map(self.forwarded, shards))

    def drained(self, shards: Iterable[ShardView]) -> bool:
        """What a stop waits for before saving: every session's last events forwarded."""
        return all(self.forwarded(s) for s in shards if s.session_id)

    def _slot(self, index: int) -> WorkerSlot | None:
        return next((s for s in self._workers() if s.index == index), None)
