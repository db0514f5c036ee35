"""Drain and roll: hand a worker's shards to a fresh process, one worker or all (issue 16).

``Supervisor.drain_worker(n)`` (``shardctl drain --worker N``) replaces worker ``n``'s
process; ``Supervisor.restart_workers(rolling=True)`` (``shardctl restart-workers``) does
the same for every local worker, one at a time (``rolling=False``: all at once), e.g. to
load new code.  Each handover keeps the guarantee of a respawn (DESIGN.md §7) without the
crash:

1. ``stopping``: the old process is told ``stop`` with a resumable close code; it closes
   its shards (Discord keeps the sessions), flushes its events and reports its final seqs.
2. ``flushing``: once it has exited, the supervisor waits until the bus has forwarded
   every seq it reported.  Only then may a new process be spawned: its assignment names
   each session and the last seq *forwarded*, so nothing in flight is skipped, and the old
   process's sockets are closed, so no session ever has two connections.
3. ``starting`` / ``resuming``: the slot's watcher spawns the replacement (not counted as
   a restart, nor towards the crash-loop bound); it RESUMEs every shard, Discord replays
   what was missed, and the operation ends when every shard is READY again and forwarded.

No IDENTIFY is spent unless Discord refuses a RESUME (an invalidated session), and then it
goes through the limiter like any other.  If the old events cannot all be forwarded within
:data:`FLUSH_TIMEOUT`, the handover goes on: whatever was not forwarded is replayed by the
RESUME, never lost, since the assignment starts from what *was* forwarded.

One operation runs at a time.  Its progress (which workers are done, each one's phase, how
many shards RESUMEd or had to IDENTIFY) is :meth:`Rolling.progress`, shown by the live view
and ``shardctl status``; the last finished operation stays there until the next starts.
Workers on other hosts cannot be respawned from here: a drain of one is refused and a
restart of all skips them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import anyio

from shardctl.cluster.reshard_progress import reshard_text
from shardctl.cluster.workers import WorkerSlot, kill
from shardctl.errors import ShardctlError
from shardctl.gateway.lifecycle import SHARD_RESUMED

log = logging.getLogger(__name__)

#: How long an old worker gets to close its shards and exit before it is killed.
EXIT_TIMEOUT: Final = 15.0
#: How long the bus gets to forward the old worker's last events (then: replayed instead).
FLUSH_TIMEOUT: Final = 10.0
#: Default time a replacement gets to bring its shards READY (an IDENTIFY after a refused
#: RESUME waits for the limiter, so this is generous).
READY_TIMEOUT: Final = 120.0

READY: Final = "ready"


class OperationRefusedError(ShardctlError):
    """A drain or restart that cannot start: an unknown or busy worker, another operation."""


class OperationFailedError(ShardctlError):
    """A drain or restart that started but did not complete (its progress says how far)."""


@dataclass(slots=True)
class _Handover:
    """One worker's replacement in progress; the slot's watcher and the operation meet here."""

    old_pid: int | None
    generation: int
    shards: tuple[int, ...]
    phase: str = "stopping"
    exited: anyio.Event = field(default_factory=anyio.Event)
    released: anyio.Event = field(default_factory=anyio.Event)


@dataclass(slots=True)
class _Operation:
    kind: str
    rolling: bool
    workers: tuple[int, ...]
    started: float
    skipped: tuple[int, ...] = ()
    done: list[int] = field(default_factory=list)
    finished: float | None = None
    error: str | None = None
    resumed: int = 0
    identified: int = 0


@dataclass(frozen=True, slots=True)
class Hooks:
    """What an operation needs of the supervisor (kept small: the supervisor owns them)."""

    slots: Callable[[], Sequence[WorkerSlot]]
    #: Tell a worker to close its shards resumably and exit.
    stop_worker: Callable[[WorkerSlot], None]
    #: Wait until a predicate holds, re-checked on every state report and bus batch.
    wait: Callable[[Callable[[], bool]], Awaitable[None]]
    #: Wake :attr:`wait`'s waiters (a predicate changed outside a report).
    notify: Callable[[], None]
    #: Whether the bus has forwarded everything the shard reported receiving.
    forwarded: Callable[[int], bool]
    #: The shard's last reported state and the pid that reported it.
    shard_state: Callable[[int], tuple[str, int | None]]
    #: The shard's cumulative event counts by type (lifecycle events included).
    counts: Callable[[int], Mapping[str, int]]
    stopping: Callable[[], bool]
    clock: Callable[[], float] = anyio.current_time


class Rolling:
    """Drains and rolling restarts of one supervisor's workers (module docstring)."""

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks
        self._handovers: dict[int, _Handover] = {}
        self._operation: _Operation | None = None
        #: operations started so far (a reshard's progress is shown until the next one)
        self.generation = 0
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        """Until the progress changes (a phase, a worker done, the end)."""
        await self._changed.wait()

    def _touch(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        self._hooks.notify()

    # ------------------------------------------------------------------ the watcher's side

    async def planned_exit(self, slot: WorkerSlot) -> bool:
        """Called by the slot's watcher when its process exited: True if a handover asked
        for it (then it returns once the old events are forwarded, and the watcher
        respawns at once, counting no restart)."""
        handover = self._handovers.get(slot.index)
        if handover is None:
            return False
        handover.exited.set()
        self._hooks.notify()
        await handover.released.wait()
        return True

    # ------------------------------------------------------------------ checks

    @property
    def running(self) -> bool:
        return self._operation is not None and self._operation.finished is None

    def check_drain(self, index: object) -> WorkerSlot:
        """The slot ``index`` names, or :class:`OperationRefusedError` saying why not."""
        slots = self._hooks.slots()
        if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index < len(slots)):
            raise OperationRefusedError(
                f"no worker {str(index)[:16]}: this cluster runs workers 0-{len(slots) - 1}")
        if index in self._handovers:
            raise OperationRefusedError(f"worker {index} is already being drained")
        self._check_idle()
        if len(slots) == 1:
            raise OperationRefusedError(
                f"worker {index} is the only worker: a drain moves shards off one worker "
                "while the others serve; use restart-workers to replace it")
        slot = slots[index]
        if slot.remote:
            raise OperationRefusedError(
                f"worker {index} runs on another host and cannot be respawned from here: "
                "stop it there (its shards move to a live worker) and start a new one")
        self._check_live(slot)
        return slot

    def check_restart(self) -> list[WorkerSlot]:
        """The local slots a restart replaces, in order, or why it cannot start."""
        self._check_idle()
        local = [s for s in self._hooks.slots() if not s.remote]
        if not local:
            raise OperationRefusedError("no local workers to restart (remote workers are "
                                        "restarted on their own hosts)")
        for slot in local:
            self._check_live(slot)
        return local

    def _check_idle(self) -> None:
        if self._hooks.stopping():
            raise OperationRefusedError("the cluster is stopping")
        operation = self._operation
        if operation is not None and operation.finished is None:
            raise OperationRefusedError(
                f"a {_title(operation)} is in progress; wait until it is done "
                "(shardctl status shows its progress)")

    @staticmethod
    def _check_live(slot: WorkerSlot) -> None:
        if not slot.alive or slot.peer is None:
            raise OperationRefusedError(
                f"worker {slot.index} is not running now (starting or being respawned); "
                "try again once it is")

    # ------------------------------------------------------------------ operations

    async def drain(self, index: int, *, ready_timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Replace worker ``index``'s process (module docstring); its final progress."""
        slot = self.check_drain(index)
        return await self._run("drain", False, [slot], ready_timeout)

    async def restart(self, *, rolling: bool = True, ready_timeout: float = READY_TIMEOUT
                      ) -> dict[str, Any]:
        """Replace every local worker's process, one at a time or all at once."""
        return await self._run("restart-workers", rolling, self.check_restart(), ready_timeout)

    async def _run(self, kind: str, rolling: bool, slots: list[WorkerSlot], ready_timeout: float
                   ) -> dict[str, Any]:
        skipped = tuple(s.index for s in self._hooks.slots() if s.remote)
        operation = self._operation = _Operation(
            kind, rolling, tuple(s.index for s in slots), self._hooks.clock(),
            skipped=skipped if kind != "drain" else ())
        self.generation += 1
        log.info("supervisor: %s started (workers %s)", _title(operation),
                 ", ".join(map(str, operation.workers)))
        self._touch()
        try:
            if rolling or len(slots) == 1:
                for slot in slots:
                    await self._hand_over(slot, ready_timeout)
            else:
                await self._all_at_once(slots, ready_timeout)
        except BaseException as exc:
            operation.error = str(exc) or type(exc).__name__
            raise
        finally:
            operation.finished = self._hooks.clock()
            self._touch()
            log.info("supervisor: %s", operation_text(self.progress() or {}))
        return self.progress() or {}

    async def _all_at_once(self, slots: list[WorkerSlot], ready_timeout: float) -> None:
        failures: list[OperationFailedError] = []

        async def one(slot: WorkerSlot) -> None:
            try:
                await self._hand_over(slot, ready_timeout)
            except OperationFailedError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as tg:
            for slot in slots:
                tg.start_soon(one, slot)
        if failures:
            raise OperationFailedError("; ".join(str(f) for f in failures))

    async def _hand_over(self, slot: WorkerSlot, ready_timeout: float) -> None:
        hooks, operation = self._hooks, self._operation
        assert operation is not None
        # A worker that crashed meanwhile is being respawned: its turn waits for it.
        with anyio.move_on_after(ready_timeout) as scope:
            await self._wait(lambda: slot.alive and slot.peer is not None)
        if scope.cancelled_caught:
            raise OperationFailedError(f"worker {slot.index} did not come back within "
                                       f"{ready_timeout:g} s to be replaced")
        shards = tuple(slot.shard_ids)
        handover = self._handovers[slot.index] = _Handover(slot.pid, slot.generation, shards)
        before = {s: dict(hooks.counts(s)) for s in shards}
        try:
            hooks.stop_worker(slot)
            hooks.notify()
            await self._old_gone(slot, handover)
            self._phase(handover, "flushing")
            with anyio.move_on_after(FLUSH_TIMEOUT) as scope:
                await self._wait(lambda: all(hooks.forwarded(s) for s in shards))
            if scope.cancelled_caught:
                log.warning("supervisor: worker %d's last events were not all forwarded "
                            "within %.0f s; its replacement RESUMEs from what was (Discord "
                            "replays the rest)", slot.index, FLUSH_TIMEOUT)
            self._phase(handover, "starting")
            handover.released.set()
            with anyio.move_on_after(ready_timeout) as scope:
                await self._wait(lambda: self._replaced(slot, handover))
            if scope.cancelled_caught:
                late = [s for s in shards if hooks.shard_state(s)[0] != READY]
                raise OperationFailedError(
                    f"worker {slot.index}'s replacement did not bring shards "
                    f"{_ids(late or list(shards))} READY within {ready_timeout:g} s")
            for shard_id in shards:
                after = hooks.counts(shard_id)
                operation.resumed += _grew(before[shard_id], after, SHARD_RESUMED)
                operation.identified += _grew(before[shard_id], after, "READY")
            operation.done.append(slot.index)
        finally:
            handover.released.set()
            del self._handovers[slot.index]
            self._touch()

    async def _old_gone(self, slot: WorkerSlot, handover: _Handover) -> None:
        """Until the old process has exited (killed if it takes too long)."""
        with anyio.move_on_after(EXIT_TIMEOUT):
            await self._wait(handover.exited.is_set)
        if not handover.exited.is_set():
            log.warning("supervisor: worker %d did not stop within %.0f s; killing it (its "
                        "shards RESUME from the last forwarded seq)", slot.index, EXIT_TIMEOUT)
            kill(slot)
            await self._wait(handover.exited.is_set)

    def _replaced(self, slot: WorkerSlot, handover: _Handover) -> bool:
        """Whether a new process runs every shard READY, and its READY/RESUMED is out."""
        if slot.generation == handover.generation or slot.pid == handover.old_pid:
            return False
        if slot.peer is not None and handover.phase == "starting":
            self._phase(handover, "resuming")
        return all(self._hooks.shard_state(s) == (READY, slot.pid)
                   and self._hooks.forwarded(s) for s in handover.shards)

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        stopping = self._hooks.stopping
        await self._hooks.wait(lambda: predicate() or stopping())
        if stopping():
            raise OperationFailedError("the cluster is stopping")

    def _phase(self, handover: _Handover, phase: str) -> None:
        handover.phase = phase
        self._touch()

    # ------------------------------------------------------------------ progress

    def progress(self) -> dict[str, Any] | None:
        """The current (or last) operation, for ``status`` and the live view; None: none yet.

        ``state``: running, done or failed; ``phases``: worker -> phase of each handover
        in progress (stopping, flushing, starting, resuming)."""
        operation = self._operation
        if operation is None:
            return None
        end = operation.finished if operation.finished is not None else self._hooks.clock()
        return {
            "kind": operation.kind, "rolling": operation.rolling,
            "state": ("running" if operation.finished is None
                      else "failed" if operation.error else "done"),
            "workers": list(operation.workers), "done": list(operation.done),
            "skipped": list(operation.skipped),
            "phases": {str(i): h.phase for i, h in sorted(self._handovers.items())},
            "resumed": operation.resumed, "identified": operation.identified,
            "elapsed_s": round(max(0.0, end - operation.started), 1),
            "error": operation.error,
        }


def operation_text(progress: Mapping[str, Any]) -> str:
    """One line for people: what runs, how far it is, what it cost (statusview, liveview)."""
    if progress.get("kind") == "reshard":
        return reshard_text(progress)
    workers = progress.get("workers") or []
    done = progress.get("done") or []
    kind = progress.get("kind")
    if kind == "drain":
        title = f"drain of worker {workers[0] if workers else '?'}"
    else:
        title = f"{'rolling ' if progress.get('rolling') else ''}restart of workers"
    text = f"{title}: {len(done)}/{len(workers)} workers replaced"
    phases = progress.get("phases") or {}
    if phases:
        text += "; " + ", ".join(f"worker {i} {p}" for i, p in phases.items())
    text += (f"; {progress.get('resumed', 0)} shards RESUMEd, "
             f"{progress.get('identified', 0)} IDENTIFYed; {progress.get('elapsed_s', 0)} s")
    state = progress.get("state")
    if state == "done":
        text += "; done"
    elif state == "failed":
        text += f"; FAILED: {progress.get('error')}"
    if progress.get("skipped"):
        text += f" (remote workers {_ids(progress['skipped'])} skipped)"
    return text


def _title(operation: _Operation) -> str:
    if operation.kind == "drain":
        return f"drain of worker {operation.workers[0]}"
    return f"{'rolling ' if operation.rolling else ''}restart of workers"


def _grew(before: Mapping[str, int], after: Mapping[str, int], name: str) -> int:
    return 1 if after.get(name, 0) > before.get(name, 0) else 0


def _ids(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids))
