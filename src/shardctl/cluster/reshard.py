"""Reshard a running cluster: a new shard set beside the old one, then one switch of the bus.

Discord raises the recommended shard count as a bot grows (and forces it with close 4011).
Stopping and starting with ``--shards N`` leaves every guild without events until its shard
has IDENTIFYed again at the bucket pace.  A reshard instead:

1. asks ``GET /gateway/bot`` and refuses, with the figures, when ``remaining`` session
   starts cannot pay for every shard of the new set (nothing has started then);
2. starts the new set in new worker processes; their IDENTIFYs go through the limiter like
   any other (bucket ``shard_id % max_concurrency``, paced), while the old set keeps serving;
3. holds the new set's events (its batches, whole, in arrival order) until every new shard
   is READY, then waits until the bus has forwarded what the old set had received by then;
4. switches the event bus in one step (:meth:`EventForwarder.exclusive`): the old set's
   events stop being forwarded, a ``RESHARD`` event goes out per shard id of the new set,
   the held events follow with the OVERLAP flag, then the new set's events flow as usual
   (flagged OVERLAP too while received within :data:`OVERLAP_TAIL` of the switch);
5. closes the old sessions with 1000 (they are never resumed) and saves the new set's
   sessions under the new shard count.

Discord sends a guild's events to every session whose ``(shard_id, num_shards)`` owns it,
so from a new shard's READY until the switch both sets receive them: what the new set got
before the switch (and just after it) carries the OVERLAP flag, and the old set may have
delivered the same events already (README "Resharding").  Nothing falls between the two:
an event Discord sent before a new shard's READY reached the old set, which is forwarded up
to that moment before the switch; anything later is in the new set's held events.

Not supported: ``--shard-ids`` (one instance of several owns no whole new set) and remote
workers (the new set runs in local processes).  This module is the supervisor's friend: it
works on the supervisor's own records, which nothing else may touch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import anyio.abc
import anyio.to_thread

from shardctl import errors
from shardctl.cluster import sessions as session_file
from shardctl.cluster.discovery import GatewayInfo, fetch_gateway_bot
from shardctl.cluster.planner import plan
from shardctl.cluster.reshard_progress import ReshardProgress
from shardctl.cluster.workers import WorkerSlot, kill, spawn, worker_command
from shardctl.gateway.lifecycle import RESHARD
from shardctl.ipc import control_messages as wire
from shardctl.ipc.assignment import Assignment, ShardAssignment
from shardctl.ipc.events import (
    HAS_SEQ,
    HEADER,
    NEW_SESSION_TYPE,
    batch_records,
    lifecycle_payload,
    mark_overlap,
)
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.publishers import new_publish_key

if TYPE_CHECKING:
    from shardctl.cluster.supervisor import ShardStatus, Supervisor
    from shardctl.ipc.bus import EventForwarder

log = logging.getLogger(__name__)

#: The old set's sessions end: the new set holds the guilds now (protocol §7: 1000 ends a
#: session, Discord keeps nothing to RESUME).
RESHARD_CLOSE: Final = 1000
#: Events of the new set held before the switch, at most (~1.6 KB each for MESSAGE_CREATE);
#: more and the reshard is abandoned rather than dropping any.
MAX_HELD_EVENTS: Final = 250_000
#: On top of the bucket pace, how long the new set has to be READY.
READY_GRACE: Final = 60.0
#: How long the old set's in-flight events may take to be forwarded before the switch.
CATCH_UP_TIMEOUT: Final = 10.0
#: How long the old set's workers get to close their sessions before they are killed.
RETIRE_TIMEOUT: Final = 15.0
#: After the switch, the new set's events received up to this many seconds after it are
#: marked OVERLAP too: Discord sends an event to two sessions at about, not exactly, the
#: same moment, so the old set may have delivered, just before the switch, an event the
#: new set receives just after it.
OVERLAP_TAIL: Final = 2.0
#: ... and the marking stays on for this much longer (events queued in a worker).
OVERLAP_TAIL_LINGER: Final = 10.0
#: Seconds between ``GET /gateway/bot`` checks of the automatic mode (``--auto-reshard``).
CHECK_INTERVAL: Final = 300.0

Target = int | Literal["auto"]


class ReshardError(errors.ShardctlError):
    """A reshard was refused or abandoned; the old shard set keeps serving."""


class ReshardBudgetError(ReshardError, errors.SessionBudgetError):
    """The session-start budget cannot pay for the new shard set."""


@dataclass(frozen=True, slots=True)
class ReshardResult:
    """What a finished reshard did (also the ``shardctl reshard`` answer)."""

    old_shards: int
    new_shards: int
    #: unix seconds of the switch (also in every ``RESHARD`` event)
    switched_at: float
    #: events of the new set held until the switch, released with the OVERLAP flag (those
    #: it receives in the OVERLAP_TAIL after the switch are flagged too, not counted here)
    overlap_events: int
    #: events of the old set received after the switch, not forwarded (the new set's are)
    retired_events: int

    def to_body(self) -> dict[str, Any]:
        return asdict(self)


def target_count(requested: Target, info: GatewayInfo) -> int:
    """The new shard count: ``requested``, or Discord's recommendation for "auto"."""
    if requested == "auto":
        return info.shards
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ReshardError(f"a reshard needs a shard count of at least 1 or 'auto' "
                           f"(got {requested!r})")
    return requested


def check_budget(info: GatewayInfo, new_shards: int) -> None:
    """Refuse, with the figures, a new set the session-start budget cannot pay for."""
    limit = info.session_start_limit
    if limit.remaining >= new_shards:
        return
    raise ReshardBudgetError(
        f"refused: resharding to {new_shards} shards needs {new_shards} session starts but "
        f"only {limit.remaining} of {limit.total} remain (the budget resets in "
        f"{limit.reset_after / 3600:.1f} h); nothing was started")


class HeldEvents:
    """The new set's batches until the switch: whole, in arrival order, bounded."""

    def __init__(self, max_events: int = MAX_HELD_EVENTS) -> None:
        self.batches: deque[bytes] = deque()
        self.events = 0
        self.max_events = max_events
        #: shards whose READY is held (the switch waits for every shard's)
        self.ready: set[int] = set()
        self.overflowed = False
        self.malformed = 0
        #: shard -> the highest gateway ``s`` of its held events (the abandon's flush mark)
        self.seqs: dict[int, int] = {}
        self.on_ready: Callable[[], None] | None = None
        #: call ``on_ready`` on every batch, not only on a READY (an abandon's flush waits)
        self.wake_each = False

    def add(self, batch: bytes) -> bytes | None:
        """The forwarder's sink for the new set's batches (on its hot path: never raises)."""
        if self.overflowed:
            return None
        try:
            records = batch_records(batch)
        except errors.ProtocolError as exc:
            self.malformed += 1
            log.error("reshard: dropped a malformed batch of the new set: %s", exc)
            return None
        self.events += len(records)
        if self.events > self.max_events:
            self.overflowed = True
            self.batches.clear()
        else:
            self.batches.append(batch)
        for _, shard, header in records:
            _, _, flags, _, seq, *_ = HEADER.unpack_from(batch, header)
            if flags & HAS_SEQ and seq > self.seqs.get(shard, 0):
                self.seqs[shard] = seq
        readies = {shard for t, shard, _ in records if t == NEW_SESSION_TYPE}
        if readies or self.overflowed or self.wake_each:
            self.ready |= readies
            if self.on_ready is not None:
                self.on_ready()
        return None


class Reshard:
    """One reshard of ``sup`` to ``new_shards``; see the module docstring."""

    def __init__(self, sup: Supervisor, new_shards: int, *,
                 max_held_events: int = MAX_HELD_EVENTS,
                 progress: ReshardProgress | None = None) -> None:
        self.sup = sup
        self.new_shards = new_shards
        self.progress = progress or ReshardProgress(
            sup.shard_count, new_shards, anyio.current_time(), sup._rolling.generation)
        self.progress.new_shards = new_shards
        self.held = HeldEvents(max_held_events)
        self.held.on_ready = sup._notify
        self.slots: list[WorkerSlot] = []
        self.status: dict[int, ShardStatus] = {}
        self.failure: ReshardError | None = None
        self.switched = False
        self.retired_events = 0

    # -- what the supervisor hands over --------------------------------------------------------

    def assignment(self, slot: WorkerSlot) -> Assignment:
        """A new-set worker's assignment: its shards, all to IDENTIFY under the new count."""
        sup = self.sup
        assert sup.info is not None and sup._forwarder is not None
        key = new_publish_key()
        sup._forwarder.publishers.authorize(slot.index, key, slot.shard_ids)
        sup._forwarder.new_publisher(slot.index)
        return Assignment(
            token=sup.config.token, gateway_url=sup.info.url, shard_count=self.new_shards,
            intents=int(sup.config.intents), compression=sup.config.compression,
            limiter=sup.endpoints["limiter"], events=sup.endpoints["events_in"],
            shards=tuple(ShardAssignment(i) for i in slot.shard_ids),
            large_threshold=sup.config.large_threshold, beat_interval=sup._beat_interval,
            supervisor_timeout=max(10.0, sup._liveness_timeout * 2), worker=slot.index,
            publish_key=key, publish_window=sup.config.publish_window_ms / 1000,
            # It numbers its own events; the old set's, on the same keys, go on until the
            # switch, so its numbering is out of step after it and the forwarder rebases it.
            epoch=sup._forwarder.epoch,
            counters=sup._forwarder.counters_of(set(slot.shard_ids)))

    def on_state(self, slot: WorkerSlot, state: wire.State) -> None:
        """A new-set worker's state report: its shards' progress, or why it failed."""
        for item in state.shards:
            shard_id = item.id
            status = self.status.get(shard_id)
            if status is None or shard_id not in slot.shard_ids:
                continue
            status.observe(item, slot.pid, self.sup._resume_allowed)
            error = item.error
            if error is not None and self.failure is None:
                self.failure = ReshardError(
                    f"shard {shard_id} of the new set failed: {error.get('message')}; "
                    "reshard abandoned, the old set keeps serving")
        self.progress.ready = sum(s.state == "ready" for s in self.status.values())
        self.sup._notify()

    # -- the operation -------------------------------------------------------------------------

    async def run(self) -> ReshardResult:
        sup = self.sup
        old_slots = [s for s in sup.slots if not s.retired and not s.staged]
        old_count = sup.shard_count
        refused: ReshardError | None = None
        try:
            async with anyio.create_task_group() as tg:
                try:
                    self._phase("starting")
                    await self._start(tg, len(old_slots))
                    await self._until_ready()
                    self._phase("catching_up")
                    await self._catch_up(old_slots)
                    switched_at, released = await self._switch(old_slots, old_count)
                    self.progress.switched_at = switched_at
                    self.progress.overlap_events = released
                    self._phase("retiring")
                except ReshardError as exc:  # raised as itself, not in an ExceptionGroup
                    refused = exc
                except Exception as exc:  # a spawn that failed, say: never the old set's end
                    log.exception("reshard: failed")
                    refused = ReshardError(f"reshard abandoned: {exc}")
                tg.cancel_scope.cancel()
            if refused is not None:
                raise refused
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abandon()
            raise
        await self._retire(old_slots)
        self.progress.retired_events = self.retired_events
        log.info("reshard: %d -> %d shards done; %d overlap events released, %d of the old "
                 "set's dropped after the switch", old_count, self.new_shards, released,
                 self.retired_events)
        return ReshardResult(old_count, self.new_shards, switched_at, released,
                             self.retired_events)

    def _phase(self, phase: str) -> None:
        self.progress.phase = phase
        self.sup._notify()

    async def _start(self, tg: anyio.abc.TaskGroup, processes: int) -> None:
        sup = self.sup
        from shardctl.cluster.supervisor import ShardStatus

        assert sup._forwarder is not None and sup._control is not None
        first = max((s.index for s in sup.slots), default=-1) + 1
        for offset, shard_ids in enumerate(plan(list(range(self.new_shards)),
                                                max(1, processes))):
            slot = WorkerSlot(first + offset, shard_ids, policy=sup._restart_policy(),
                              staged=True)
            self.slots.append(slot)
            for shard_id in shard_ids:
                self.status[shard_id] = ShardStatus(shard_id, worker=slot.index)
        sup.slots.extend(self.slots)
        for slot in self.slots:
            sup._forwarder.divert(slot.index, self.held.add)
        log.info("reshard: starting %d shards in %d new workers beside the %d running",
                 self.new_shards, len(self.slots), sup.shard_count)
        for slot in self.slots:
            await spawn(slot, worker_command(sup._control.endpoint, slot.index,
                                             sup.config.curve_keys), now=anyio.current_time())
            tg.start_soon(self._watch_exit, slot)

    async def _watch_exit(self, slot: WorkerSlot) -> None:
        assert slot.process is not None
        code = await slot.process.wait()
        if not self.switched and self.failure is None:
            self.failure = ReshardError(
                f"worker {slot.index} of the new set exited with {code} before the switch; "
                "reshard abandoned, the old set keeps serving")
            self.sup._notify()

    def _ready(self) -> bool:
        return (all(s.state == "ready" for s in self.status.values())
                and self.held.ready >= set(self.status))

    async def _until_ready(self) -> None:
        sup = self.sup
        assert sup.info is not None
        limit = sup.info.session_start_limit
        rounds = -(-self.new_shards // limit.max_concurrency)
        timeout = rounds * (sup.config.identify_interval + 1.0) + READY_GRACE
        with anyio.move_on_after(timeout) as scope:
            await sup._wait_for(lambda: self._ready() or self._failed(), raise_failure=False)
        self._raise_failure()
        if scope.cancelled_caught:
            raise ReshardError(f"the new set was not READY within {timeout:.0f} s "
                               f"({sum(s.state == 'ready' for s in self.status.values())} of "
                               f"{self.new_shards}); reshard abandoned")

    def _failed(self) -> bool:
        return (self.failure is not None or self.held.overflowed
                or self.sup._failure is not None or self.sup._stopping)

    def _raise_failure(self) -> None:
        if (self.sup._failure is not None or self.sup._stopping) and self.failure is None:
            self.failure = ReshardError("reshard abandoned: the cluster is stopping")
        if self.held.overflowed and self.failure is None:
            self.failure = ReshardError(
                f"the new set received more than {self.held.max_events} events before all "
                "of it was READY; reshard abandoned rather than drop any")
        if self.failure is not None:
            raise self.failure

    async def _catch_up(self, old_slots: list[WorkerSlot]) -> None:
        """Until the bus has forwarded what the old set had received when the new one was
        READY: a fresh state report from each old worker, then its seqs through the bus."""
        sup = self.sup
        marks = {slot.index: slot.reports for slot in old_slots}
        for slot in old_slots:  # at once, not at the next beat: the new set's events wait
            if sup._control is not None and slot.peer is not None and slot.alive:
                sup._control.send(slot.peer, wire.ReportNow())
        with anyio.move_on_after(CATCH_UP_TIMEOUT) as scope:
            await sup._wait_for(lambda: self._failed() or all(
                slot.reports > marks[slot.index] or not slot.alive for slot in old_slots),
                raise_failure=False)
            await sup._wait_for(lambda: self._failed() or all(
                sup._forwarded(s) for s in sup._status.values()), raise_failure=False, bus=True)
        self._raise_failure()
        if scope.cancelled_caught:
            log.warning("reshard: the old set's events were not all forwarded within %.0f s; "
                        "switching anyway (the new set's overlap covers what it received)",
                        CATCH_UP_TIMEOUT)

    async def _switch(self, old_slots: list[WorkerSlot], old_count: int
                      ) -> tuple[float, int]:
        sup = self.sup
        forwarder = sup._forwarder
        assert forwarder is not None and sup._checkpoint is not None
        old_state_file = sup.state_file
        old_ids = list(sup._shard_ids)
        old_sessions = {r.shard_id: r for r in sup._resumable_sessions()}
        switched_at = time.time()
        released = 0

        def drop_retired(batch: bytes) -> bytes | None:
            with contextlib.suppress(errors.ProtocolError):
                self.retired_events += len(batch_records(batch))
            return None

        tail_ns = int((switched_at + OVERLAP_TAIL) * 1e9)

        def mark_tail(batch: bytes) -> bytes | None:
            try:
                return mark_overlap(batch, tail_ns)
            except errors.ProtocolError:
                return batch  # the forwarder drops it as malformed, and says so

        async def step() -> None:
            nonlocal released
            for slot in old_slots:
                forwarder.divert(slot.index, drop_retired)
            for shard_id in {*old_ids, *self.status}:
                forwarder.last_seq.pop(shard_id, None)
                forwarder.last_session.pop(shard_id, None)
                forwarder.session_tags.pop(shard_id, None)
            held = sorted(self.status)
            counts = {shard: 0 for shard in held}
            for batch in self.held.batches:
                for _, shard, _ in batch_records(batch):
                    counts[shard] = counts.get(shard, 0) + 1
            for shard_id in held:
                old = old_sessions.get(shard_id)
                await forwarder.publish(RESHARD, shard_id, lifecycle_payload({
                    "old_shards": old_count, "new_shards": self.new_shards,
                    "shard_id": shard_id, "switched_at": switched_at,
                    "old_session_id": old.session_id if old else None,
                    "old_last_seq": old.seq if old else None,
                    "overlap_events": counts[shard_id]}))
            for slot in self.slots:
                forwarder.divert(slot.index, mark_tail)
            while self.held.batches:
                batch = self.held.batches.popleft()
                released += len(batch_records(batch))
                await forwarder.forward(mark_overlap(batch))
            self._adopt(old_slots)

        async with sup._checkpoint.paused():
            await forwarder.exclusive(step)
            if old_state_file != sup.state_file:
                # The old sessions end with 1000: nothing there may be resumed any more.
                await anyio.to_thread.run_sync(lambda: session_file.save(
                    old_state_file, sup.config.token, old_count, {}, shard_ids=old_ids))
        await sup._checkpoint.flush()
        if sup._tg is not None:
            sup._tg.start_soon(self._end_tail, forwarder)
        log.info("reshard: the event bus switched from %d to %d shards", old_count,
                 self.new_shards)
        return switched_at, released

    async def _end_tail(self, forwarder: EventForwarder) -> None:
        await anyio.sleep(OVERLAP_TAIL + OVERLAP_TAIL_LINGER)

        async def step() -> None:
            for slot in self.slots:
                if not slot.retired:  # else a later reshard's switch diverted it for good
                    forwarder.divert(slot.index, None)

        await forwarder.exclusive(step)

    def _adopt(self, old_slots: list[WorkerSlot]) -> None:
        """The new set becomes the cluster's: its shards, count, statuses and workers."""
        sup = self.sup
        self.switched = True
        sup.shard_count = self.new_shards
        sup._shard_ids = list(range(self.new_shards))
        sup._status = dict(self.status)
        sup._seen = {}
        for slot in old_slots:
            slot.retired = True
            slot.shard_ids = []
        for slot in self.slots:
            slot.staged = False
            if sup._tg is not None:
                sup._tg.start_soon(sup._watch, slot)
        sup._notify()

    async def _retire(self, old_slots: list[WorkerSlot]) -> None:
        """Close the old sessions for good (1000) and wait for their workers to leave."""
        sup = self.sup
        for slot in old_slots:
            if sup._control is not None and slot.peer is not None and slot.alive:
                sup._control.send(slot.peer, wire.Stop(RESHARD_CLOSE))
        with anyio.move_on_after(RETIRE_TIMEOUT):
            for slot in old_slots:
                if slot.process is not None:
                    await slot.process.wait()
        for slot in old_slots:
            if slot.alive:
                log.warning("reshard: old worker %d did not stop in time; killing it",
                            slot.index)
                kill(slot)
        if sup._forwarder is not None:
            for slot in old_slots:
                sup._forwarder.divert(slot.index, None)
                sup._forwarder.publishers.revoke(slot.index)
        # gone from status, metrics and the live view; their _watch tasks have ended
        sup.slots[:] = [slot for slot in sup.slots if not slot.retired]

    async def _abandon(self) -> None:
        """The new set goes away (its sessions end: 1000); the old set never stopped.

        What the new set received is forwarded, marked OVERLAP: Discord may have sent its
        guilds' events to it alone from its READY on (the sandbox's ``newest`` routing),
        and then no other copy exists."""
        sup = self.sup
        if self.switched:
            return
        for slot in self.slots:
            slot.retired = True
            if sup._control is not None and slot.peer is not None and slot.alive:
                sup._control.send(slot.peer, wire.Stop(RESHARD_CLOSE))
        with anyio.move_on_after(RETIRE_TIMEOUT):
            for slot in self.slots:
                if slot.process is not None:
                    await slot.process.wait()
        with anyio.move_on_after(CATCH_UP_TIMEOUT) as scope:
            await self._release_abandoned()
        if scope.cancelled_caught:
            log.warning("reshard: the abandoned new set's events were not all forwarded "
                        "within %.0f s", CATCH_UP_TIMEOUT)
        for slot in self.slots:
            kill(slot)
            slot.shard_ids = []
            slot.staged = False
            if sup._forwarder is not None:
                sup._forwarder.divert(slot.index, None)
                sup._forwarder.publishers.revoke(slot.index)
        self.held.batches.clear()
        sup.slots[:] = [slot for slot in sup.slots if not slot.retired]

    async def _release_abandoned(self) -> None:
        """Forward the abandoned new set's held events (OVERLAP) once its last reported seqs
        are in; ``last_seq`` and ``last_session`` stay the old set's (its own sessions')."""
        sup = self.sup
        forwarder = sup._forwarder
        if forwarder is None or sup._checkpoint is None or self.held.overflowed:
            return
        self.held.wake_each = True
        await sup._wait_for(lambda: all(
            (status.seq or 0) <= self.held.seqs.get(shard_id, 0)
            for shard_id, status in self.status.items()), raise_failure=False)
        if not self.held.batches:
            return
        released = 0

        async def step() -> None:
            nonlocal released
            seqs, sessions = dict(forwarder.last_seq), dict(forwarder.last_session)
            tags = dict(forwarder.session_tags)
            for slot in self.slots:
                forwarder.divert(slot.index, None)
            forwarder.last_seq.clear()  # the new set's numbering is its own
            try:
                while self.held.batches:
                    batch = self.held.batches.popleft()
                    released += len(batch_records(batch))
                    await forwarder.forward(mark_overlap(batch))
            finally:
                forwarder.last_seq.clear()
                forwarder.last_seq.update(seqs)
                forwarder.last_session.clear()
                forwarder.last_session.update(sessions)
                forwarder.session_tags.clear()
                forwarder.session_tags.update(tags)

        async with sup._checkpoint.paused():
            await forwarder.exclusive(step)
        log.warning("reshard: forwarded the %d events the abandoned new set had received "
                    "(marked OVERLAP)", released)


async def reshard(sup: Supervisor, requested: Target = "auto") -> ReshardResult:
    """:meth:`Supervisor.reshard`: refuse what cannot work, then run one :class:`Reshard`."""
    if sup._reshard is not None or (sup._reshard_progress is not None
                                    and sup._reshard_progress.finished is None):
        raise ReshardError("refused: a reshard is already under way")
    if sup._stopping or sup._tg is None:
        raise ReshardError("refused: the supervisor is not running")
    if sup._rolling.running:
        raise ReshardError("refused: a drain or worker restart is in progress; reshard once "
                           "it is done (shardctl status shows its progress)")
    if sup.config.shard_ids:
        raise ReshardError("refused: this instance runs --shard-ids "
                           f"{sup.config.shard_ids}; reshard by restarting every instance "
                           "with its new --shards and --shard-ids")
    if sup.config.remote_workers:
        raise ReshardError("refused: a cluster with --remote-workers cannot reshard (the new "
                           "set runs in local processes)")
    progress = sup._reshard_progress = ReshardProgress(
        sup.shard_count, requested if type(requested) is int else None, anyio.current_time(),
        sup._rolling.generation)
    sup._notify()
    try:
        info = await fetch_gateway_bot(sup.config.token, api_url=sup.config.api_url)
        new_shards = target_count(requested, info)
        progress.new_shards = new_shards
        if new_shards == sup.shard_count:
            raise ReshardError(f"refused: the cluster already runs {new_shards} shards")
        check_budget(info, new_shards)
        if sup._rolling.running:  # started while we asked Discord
            raise ReshardError("refused: a drain or worker restart started; reshard once it "
                               "is done")
        await _configure_limiter(sup, info)
        sup.info = info
        operation = sup._reshard = Reshard(sup, new_shards, progress=progress)
        try:
            return await operation.run()
        finally:
            sup._reshard = None
    except BaseException as exc:
        progress.error = str(exc) or type(exc).__name__
        raise
    finally:
        progress.finished = anyio.current_time()
        sup._notify()


async def _configure_limiter(sup: Supervisor, info: GatewayInfo) -> None:
    """The limiter paces the new set by Discord's fresh figures: the built-in one is
    updated; a shared one (``--limiter``) gets a ``configure``, as at the start, and a
    limiter that does not take it refuses the reshard before anything has started."""
    limit = info.session_start_limit
    if sup.limiter is not None:
        sup.limiter.update(max_concurrency=limit.max_concurrency, remaining=limit.remaining,
                           total=limit.total, reset_after=limit.reset_after)
        return
    endpoint = sup.config.limiter
    if endpoint is None:
        return
    try:
        async with LimiterClient(endpoint, curve=sup._supervisor_curve) as client:
            with client.answer_within(sup.config.limiter_timeout):
                await client.configure(
                    max_concurrency=limit.max_concurrency, remaining=limit.remaining,
                    total=limit.total, reset_after=limit.reset_after)
    except errors.ShardctlError as exc:
        raise ReshardError(f"refused: the shared limiter did not take the new limits: "
                           f"{exc}; nothing was started") from None


def latest_operation(sup: Supervisor) -> dict[str, Any] | None:
    """The status body's ``operation``: a running reshard, or the last one unless a drain
    or restart started after it; else the drain/restart's progress (cluster/rolling.py)."""
    progress = sup._reshard_progress
    if progress is not None and (progress.finished is None
                                 or progress.rolling_generation == sup._rolling.generation):
        return progress.to_body()
    return sup._rolling.progress()


async def follow_recommendation(sup: Supervisor, interval: float = CHECK_INTERVAL) -> None:
    """``--auto-reshard``: reshard to Discord's count whenever it recommends more shards."""
    while True:
        await anyio.sleep(interval)
        if sup._reshard is not None or sup._stopping:
            continue
        try:
            info = await fetch_gateway_bot(sup.config.token, api_url=sup.config.api_url)
        except errors.ShardctlError as exc:
            log.warning("reshard: could not check the recommended shard count: %s", exc)
            continue
        if info.shards > sup.shard_count:
            log.info("reshard: Discord recommends %d shards, %d run; resharding",
                     info.shards, sup.shard_count)
            try:
                await reshard(sup, info.shards)
            except ReshardError as exc:
                log.warning("reshard: %s", exc)


def on_sharding_required(sup: Supervisor, error: Mapping[str, Any]) -> bool:
    """A shard was closed with 4011: with ``--auto-reshard``, reshard to Discord's count
    instead of stopping (True).  A reshard that fails then stops the cluster with the 4011."""
    if not sup.config.auto_reshard or error.get("code") != 4011 or sup._tg is None:
        return False
    if sup._reshard is not None:
        return True
    from shardctl.cluster.supervisor import _fatal_from_report

    async def run() -> None:
        try:
            await reshard(sup, "auto")
        except ReshardError as exc:
            log.error("reshard: after close 4011: %s", exc)
            sup._fail(_fatal_from_report(error))

    log.warning("reshard: a shard was closed with 4011 (sharding required); resharding to "
                "Discord's recommended count")
    sup._tg.start_soon(run)
    return True
