"""The supervisor core's decisions, driven without processes or sockets (issue 14)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shardctl.cluster.core import (
    Action,
    Adopt,
    Assign,
    Beat,
    CrashLoopError,
    Fail,
    Kill,
    Lost,
    NoAdopter,
    Refuse,
    SaveSessions,
    Send,
    SessionBook,
    ShardFailed,
    Spawn,
    StopPeer,
    StopRequested,
    Stray,
    SupervisorCore,
    Tick,
    Watermark,
    WorkerExited,
    WorkerRegistered,
    settle,
)
from shardctl.cluster.restarts import RestartPolicy
from shardctl.cluster.sessions import SessionRecord
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc.assignment import ShardAssignment
from shardctl.ipc.security import Role

TIMEOUT = 5.0
GRACE = 20.0


@dataclass(eq=False)
class FakeProcess:
    """What the core reads of a process: whether it still runs."""

    returncode: int | None = None


def local(index: int, shards: list[int], **policy: Any) -> WorkerSlot:
    slot = WorkerSlot(index, shards, policy=RestartPolicy(**policy))
    slot.process = FakeProcess()  # type: ignore[assignment]
    return slot


def remote(index: int, shards: list[int]) -> WorkerSlot:
    return WorkerSlot(index, shards, remote=True)


def joins(core: SupervisorCore, index: int, peer: bytes, now: float,
          pid: int | None = None) -> list[Action]:
    """Slot ``index``'s worker registers as a real one would: a local one with the secret
    it was spawned with, a remote one with a worker key (it takes the first free slot)."""
    slot = next(s for s in core._workers() if s.index == index)
    if slot.remote:
        body: dict[str, Any] = {"worker": None, "pid": pid}
        return core.handle(WorkerRegistered(peer, body, Role.WORKER, now))
    slot.secret = slot.secret or "ab" * 32
    return core.handle(WorkerRegistered(peer, {"worker": index, "secret": slot.secret},
                                        None, now))


def core_of(*slots: WorkerSlot, records: tuple[SessionRecord, ...] = ()) -> SupervisorCore:
    listed = list(slots)
    return SupervisorCore(lambda: listed, lambda: sorted(i for s in listed for i in s.shard_ids),
                          liveness_timeout=TIMEOUT, startup_grace=GRACE,
                          sessions=SessionBook(records))


# ---------------------------------------------------------------- respawn and crash loop

def test_an_exited_worker_is_respawned_after_its_policy_delay() -> None:
    slot = local(0, [0], base_delay=0.5, max_restarts=5)
    core = core_of(slot)
    assert core.handle(WorkerExited(0, 10.0, returncode=1)) == [
        Spawn(0, 0.5, restart=1, returncode=1)]
    assert core.handle(WorkerExited(0, 11.0, returncode=1)) == [
        Spawn(0, 1.0, restart=2, returncode=1)]
    assert slot.restarts == 2


def test_one_exit_too_many_in_the_window_fails_the_cluster_as_a_crash_loop() -> None:
    core = core_of(local(0, [0], max_restarts=1, window=60.0))
    assert isinstance(core.handle(WorkerExited(0, 1.0, returncode=3))[0], Spawn)
    [fail] = core.handle(WorkerExited(0, 2.0, returncode=3))
    assert isinstance(fail, Fail) and isinstance(fail.error, CrashLoopError)
    assert str(fail.error).startswith("worker 0 exited 2 times within 60 s (last exit code 3)")


def test_a_planned_exit_respawns_at_once_without_counting_a_restart() -> None:
    slot = local(0, [0], max_restarts=0)
    core = core_of(slot)
    assert core.handle(WorkerExited(0, 1.0, planned=True)) == [Spawn(0)]
    assert slot.restarts == 0


def test_no_worker_is_respawned_once_stopping_or_retired() -> None:
    retired = local(1, [])
    retired.retired = True
    core = core_of(local(0, [0]), retired)
    assert core.handle(WorkerExited(1, 1.0)) == []
    core.handle(StopRequested(4009))
    assert core.handle(WorkerExited(0, 1.0)) == []


# ---------------------------------------------------------------- liveness

def test_a_registered_worker_that_beats_in_time_is_sent_a_beat() -> None:
    slot = local(0, [0])
    core = core_of(slot)
    joins(core, 0, b"p", 0.0)
    core.handle(Beat(0, 4.0))
    assert core.handle(Tick(8.0)) == [Send(0, "beat")]


def test_a_silent_registered_worker_is_killed() -> None:
    core = core_of(local(0, [0]))
    joins(core, 0, b"p", 0.0)
    assert core.handle(Tick(TIMEOUT + 0.5)) == [Kill(0, TIMEOUT + 0.5)]


def test_a_worker_still_starting_gets_the_startup_grace_not_the_liveness_timeout() -> None:
    core = core_of(local(0, [0]))  # spawned at 0.0, never registered
    assert core.handle(Tick(GRACE - 1)) == []
    assert core.handle(Tick(GRACE + 1)) == [Kill(0, GRACE + 1)]


def test_a_dead_worker_is_not_judged() -> None:
    slot = local(0, [0])
    core = core_of(slot)
    slot.process = FakeProcess(returncode=-9)  # type: ignore[assignment]
    assert core.handle(Tick(GRACE * 2)) == []


# ---------------------------------------------------------------- remote adoption

def test_a_lost_remote_workers_shards_resume_on_the_live_worker_with_fewest_shards() -> None:
    lost, busy, light = remote(0, [0, 1]), local(1, [2, 3, 4]), local(2, [5])
    core = core_of(lost, busy, light)
    for slot in (lost, busy, light):
        joins(core, slot.index, bytes([slot.index]), 0.0)
    core.handle(Watermark(0, "s0", "wss://r/", 40))
    core.handle(Beat(1, 4.0))
    core.handle(Beat(2, 4.0))
    actions = core.handle(Tick(6.0))
    assert actions[:3] == [
        Lost(0, b"\x00", 6.0), Adopt(2, 0, (0, 1)),
        Assign(2, (ShardAssignment(0, "s0", "wss://r/", 40), ShardAssignment(1),
                   ShardAssignment(5)), same_process=True)]
    assert lost.shard_ids == [] and light.shard_ids == [0, 1, 5] and lost.peer is None


def test_a_lost_remote_worker_without_a_live_adopter_keeps_its_shards_waiting() -> None:
    lost = remote(0, [0, 1])
    core = core_of(lost)
    joins(core, 0, b"r", 0.0)
    assert core.handle(Tick(6.0)) == [Lost(0, b"r", 6.0), NoAdopter(0, (0, 1))]
    assert lost.shard_ids == [0, 1]


def test_lost_shards_never_go_to_a_worker_as_silent_as_the_lost_one() -> None:
    first, second = remote(0, [0]), remote(1, [1])
    core = core_of(first, second)
    joins(core, 0, b"a", 0.0)
    joins(core, 1, b"b", 0.0)
    assert core.handle(Tick(6.0)) == [Lost(0, b"a", 6.0), NoAdopter(0, (0,)),
                                      Lost(1, b"b", 6.0), NoAdopter(1, (1,))]


def test_a_registration_without_proof_is_refused_and_takes_nothing() -> None:
    slot = local(0, [0])
    slot.secret = "ab" * 32
    core = core_of(slot, remote(1, [1]))
    assert core.handle(WorkerRegistered(b"x", {"worker": 0, "secret": "00" * 32}, None,
                                        1.0)) == [
        Refuse(b"x", "wrong or already used secret for slot 0")]
    assert core.handle(WorkerRegistered(b"x", {"worker": None, "pid": 1}, None, 1.0)) == [
        Refuse(b"x", "a remote worker needs a CURVE key with the worker role")]
    assert slot.peer is None


def test_a_used_secret_never_takes_the_slot_twice() -> None:
    core = core_of(local(0, [0]))
    joins(core, 0, b"real", 0.0)
    [refused] = core.handle(WorkerRegistered(b"copy", {"worker": 0, "secret": "ab" * 32},
                                             None, 1.0))
    assert isinstance(refused, Refuse) and core._workers()[0].peer == b"real"


def test_a_worker_taken_for_lost_that_is_back_is_told_to_stop() -> None:
    core = core_of(local(0, [0]), remote(1, [1]))
    assert core.handle(Stray(b"old", "beat", Role.WORKER)) == [StopPeer(b"old")]
    assert core.handle(Stray(b"old", "state", Role.WORKER)) == [StopPeer(b"old")]


def test_a_stranger_without_a_worker_key_is_not_answered() -> None:
    core = core_of(local(0, [0]), remote(1, [1]))
    assert core.handle(Stray(b"x", "beat", None)) == []
    assert core.handle(Stray(b"x", "beat", Role.OPERATOR)) == []
    assert core.handle(Stray(b"x", "reply", Role.WORKER)) == []
    assert core_of(local(0, [0])).handle(Stray(b"x", "beat", Role.WORKER)) == []


def test_a_remote_worker_registering_reports_its_pid() -> None:
    slot = remote(0, [0])
    core = core_of(slot)
    assert joins(core, 0, b"r", 1.0, pid=77) == [
        Assign(0, (ShardAssignment(0),))]
    assert slot.pid == 77 and slot.peer == b"r"


# ---------------------------------------------------------------- session selection

def test_a_registered_worker_resumes_each_shard_from_the_bus_watermark() -> None:
    core = core_of(local(0, [0, 1, 2]), records=(SessionRecord(2, "file", "wss://f/", 9),))
    core.handle(Watermark(0, "s0", "wss://r/", 12))
    assert joins(core, 0, b"p", 0.0) == [Assign(0, (
        ShardAssignment(0, "s0", "wss://r/", 12), ShardAssignment(1),
        ShardAssignment(2, "file", "wss://f/", 9)))]


def test_a_new_session_never_takes_the_old_sessions_seq() -> None:
    book = SessionBook()
    book.observe(Watermark(0, "old", "wss://r/", 500))
    book.observe(Watermark(0, "new", "wss://n/", 1))
    assert book.record(0) == SessionRecord(0, "new", "wss://n/", 1)


def test_a_stale_watermark_of_the_same_session_never_moves_the_seq_back() -> None:
    book = SessionBook()
    book.observe(Watermark(0, "s", "wss://r/", 50))
    book.observe(Watermark(0, "s", "wss://r/", 40))
    assert book.record(0) == SessionRecord(0, "s", "wss://r/", 50)


def test_a_session_with_a_refused_resume_url_is_never_resumed() -> None:
    book = SessionBook([SessionRecord(0, "s", "wss://r/", 50)])
    book.observe(Watermark(0, None, None, 1))
    assert book.record(0) is None


def test_a_fatally_closed_session_is_not_resumed_but_the_next_one_is() -> None:
    book = SessionBook()
    book.observe(Watermark(0, "s", "wss://r/", 50))
    book.end(0)
    book.observe(Watermark(0, "s", "wss://r/", 50))
    assert book.record(0) is None
    book.observe(Watermark(0, "t", "wss://r/", 1))
    assert book.record(0) == SessionRecord(0, "t", "wss://r/", 1)


def test_a_reshard_switch_forgets_what_the_bus_forwarded() -> None:
    book = SessionBook()
    book.observe(Watermark(0, "s", "wss://r/", 50))
    book.observe(Watermark(0, None, None, None))
    assert book.record(0) is None and book.watermark(0) is None


def test_a_new_sessions_ready_is_not_forwarded_while_the_bus_holds_the_old_session() -> None:
    # The old session's seq 500 is not "past" the new session's READY at seq 1: readiness
    # and the stop drain wait for the new READY itself (issue 14, "two truths").
    book = SessionBook()
    book.observe(Watermark(0, "old", "wss://r/", 500))
    assert not book.forwarded(0, "new", 1)
    book.observe(Watermark(0, "new", "wss://r/", 1))
    assert book.forwarded(0, "new", 1)
    assert not book.forwarded(0, "new", 2)


@dataclass
class Report:
    id: int
    state: str
    session_id: str | None = None
    seq: int | None = None


def test_readiness_waits_for_every_ready_to_be_on_the_bus_of_its_own_session() -> None:
    core = core_of(local(0, [0, 1]))
    shards = [Report(0, "ready", "a", 1), Report(1, "ready", "b", 1)]
    assert core.all_ready(shards) and not core.all_forwarded(shards)
    core.handle(Watermark(0, "a", "wss://r/", 1))
    core.handle(Watermark(1, "old", "wss://r/", 90))
    assert not core.all_forwarded(shards)
    core.handle(Watermark(1, "b", "wss://r/", 1))
    assert core.all_forwarded(shards)
    assert not core.all_ready([*shards, Report(2, "resuming")])


def test_a_stop_drains_only_the_shards_that_hold_a_session() -> None:
    core = core_of(local(0, [0, 1]))
    core.handle(Watermark(0, "a", "wss://r/", 7))
    assert core.drained([Report(0, "ready", "a", 7), Report(1, "worker lost", None, 3)])
    assert not core.drained([Report(0, "ready", "a", 8)])


def test_a_shard_that_reported_no_seq_is_forwarded() -> None:
    assert SessionBook().forwarded(0, None, None)


def test_a_checkpoint_saves_each_session_one_snapshot_old() -> None:
    before = {0: SessionRecord(0, "s", "wss://r/", 10), 1: SessionRecord(1, "old", "wss://r/", 90)}
    now = [SessionRecord(0, "s", "wss://r/", 25), SessionRecord(1, "new", "wss://n/", 4),
           SessionRecord(2, "t", "wss://r/", 7)]
    assert settle(now, before) == (SessionRecord(0, "s", "wss://r/", 10),
                                   SessionRecord(1, "new", "wss://n/", 1),
                                   SessionRecord(2, "t", "wss://r/", 1))


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 50)), min_size=1, max_size=12))
def test_a_checkpoint_never_saves_a_seq_of_another_session_nor_ahead_of_the_bus(
        marks: list[tuple[str, int]]) -> None:
    seen: dict[int, SessionRecord] = {}
    for session, seq in marks:
        now = [SessionRecord(0, session, "wss://r/", seq)]
        [saved] = settle(now, seen)
        assert saved.session_id == session and saved.seq <= seq
        earlier = seen.get(0)
        if earlier is not None and earlier.session_id == session:
            assert saved.seq == min(earlier.seq, seq)
        seen = {0: now[0]}


def test_a_stop_with_a_session_ending_code_saves_nothing() -> None:
    core = core_of(local(0, [0]))
    core.handle(Watermark(0, "s", "wss://r/", 5))
    assert core.save(1000) == SaveSessions(())
    assert core.save(4009) == SaveSessions((SessionRecord(0, "s", "wss://r/", 5),))


def test_a_stop_tells_each_registered_live_worker_once() -> None:
    core = core_of(local(0, [0]), local(1, [1]), remote(2, [2]))
    joins(core, 0, b"a", 0.0)
    joins(core, 2, b"c", 0.0)
    assert core.handle(StopRequested(4009)) == [Send(0, "stop", 4009), Send(2, "stop", 4009)]
    assert core.handle(StopRequested(4009)) == []


# ---------------------------------------------------------------- any order of inputs

SHARDS = range(6)


class ClusterModel(RuleBasedStateMachine):
    """Drives the core with any order of registrations, exits, watermarks, beats and ticks,
    executing its actions the way the pump does, and checks the issue's three promises."""

    @initialize()
    def start(self) -> None:
        self.slots = [local(0, [0, 1], max_restarts=3, window=30.0), local(1, [2, 3]),
                      remote(2, [4]), remote(3, [5])]
        self.core = core_of(*self.slots)
        self.now = 0.0
        #: the shards each live process or registered remote peer was last told to run
        self.running: dict[object, set[int]] = {}
        #: shard -> session -> the seqs the bus forwarded of it (None: URL refused)
        self.forwarded: dict[int, dict[str | None, list[int]]] = {i: {} for i in SHARDS}
        #: shard -> the newest (session, seq) the bus forwarded
        self.latest: dict[int, tuple[str | None, int] | None] = dict.fromkeys(SHARDS)
        self.ended: set[int] = set()
        self.sessions = 0
        self.stopped = False
        self.spawns = 0
        for slot in self.slots:
            if not slot.remote:
                self.spawn(slot)

    # -------------------------------------------------------------- the pump

    def run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                slot = self.slot(action.worker)
                assert not slot.alive, "a second process for a slot that still runs"
                self.spawn(slot)
            elif isinstance(action, Kill):
                self.exit(self.slot(action.worker), -9)
            elif isinstance(action, Lost):
                self.running.pop(("remote", action.worker, action.peer), None)
            elif isinstance(action, Assign):
                self.check_resumes(action.shards)
                slot = self.slot(action.worker)
                assert slot.alive
                self.running[self.handle_of(slot)] = {s.id for s in action.shards}

    def spawn(self, slot: WorkerSlot) -> None:
        self.spawns += 1
        slot.process = FakeProcess()  # type: ignore[assignment]
        slot.secret, slot.peer, slot.last_beat = f"{self.spawns:064x}", None, self.now
        self.running[slot.process] = set()

    def handle_of(self, slot: WorkerSlot) -> object:
        return ("remote", slot.index, slot.peer) if slot.remote else slot.process

    def exit(self, slot: WorkerSlot, code: int, *, planned: bool = False) -> None:
        self.running.pop(slot.process, None)
        slot.process = FakeProcess(returncode=code)  # type: ignore[assignment]
        self.run(self.core.handle(WorkerExited(slot.index, self.now, code, planned)))

    def slot(self, index: int) -> WorkerSlot:
        return next(s for s in self.slots if s.index == index)

    def check_resumes(self, shards: tuple[ShardAssignment, ...]) -> None:
        for shard in shards:
            if shard.session_id is None:
                continue
            latest = self.latest[shard.id]
            assert shard.seq in self.forwarded[shard.id].get(shard.session_id, []), \
                "a resume with a seq from another session"
            assert latest is not None and latest == (shard.session_id, shard.seq), \
                "a resume from an older point than the bus forwarded"

    # -------------------------------------------------------------- inputs

    @rule(index=st.sampled_from([0, 1]))
    def local_registers(self, index: int) -> None:
        slot = self.slot(index)
        if slot.alive and slot.secret is not None:  # its process, with its spawn secret
            self.run(self.core.handle(WorkerRegistered(
                b"l%d" % self.spawns, {"worker": index, "secret": slot.secret}, None,
                self.now)))

    @rule(pid=st.integers(1, 4))
    def remote_registers(self, pid: int) -> None:
        self.run(self.core.handle(WorkerRegistered(
            b"r%d" % pid, {"worker": None, "pid": pid}, Role.WORKER, self.now)))

    @rule(index=st.sampled_from([0, 1, 2, 3]), secret=st.sampled_from(["", "ab" * 32]),
          role=st.sampled_from([None, Role.OPERATOR]))
    def a_stranger_registers(self, index: int, secret: str, role: Role | None) -> None:
        # whatever it claims, it proves nothing: no secret of ours, no worker key
        actions = self.core.handle(WorkerRegistered(
            b"stranger", {"worker": index if index < 2 else None, "secret": secret}, role,
            self.now))
        assert [type(a) for a in actions] == [Refuse]

    @rule(index=st.sampled_from([0, 1]), code=st.integers(-9, 3))
    def local_exits(self, index: int, code: int) -> None:
        slot = self.slot(index)
        if slot.alive:
            self.exit(slot, code)

    @rule(index=st.sampled_from([0, 1]))
    def a_drain_replaces_a_worker(self, index: int) -> None:
        slot = self.slot(index)
        if slot.alive:
            self.exit(slot, 0, planned=True)

    @rule(index=st.sampled_from([0, 1, 2, 3]))
    def beats(self, index: int) -> None:
        self.run(self.core.handle(Beat(index, self.now)))

    @rule(dt=st.floats(0.0, 30.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.run(self.core.handle(Tick(self.now)))

    @rule(shard=st.sampled_from(SHARDS), new=st.booleans(), refused=st.booleans(),
          step=st.integers(0, 5))
    def bus_forwards(self, shard: int, new: bool, refused: bool, step: int) -> None:
        latest = self.latest[shard]
        if new or latest is None:
            self.sessions += 1
            session = None if refused else f"s{self.sessions}"
            seq = 1 + step
            self.ended.discard(shard)
        else:
            session, seq = latest[0], latest[1] + step
        self.forwarded[shard].setdefault(session, []).append(seq)
        self.latest[shard] = (session, seq)
        self.run(self.core.handle(Watermark(shard, session, session and "wss://r/", seq)))

    @rule(shard=st.sampled_from(SHARDS), back=st.integers(1, 5))
    def a_stale_watermark_arrives(self, shard: int, back: int) -> None:
        latest = self.latest[shard]
        if latest is not None and latest[0] is not None:
            self.run(self.core.handle(Watermark(shard, latest[0], "wss://r/",
                                                max(1, latest[1] - back))))

    @rule(shard=st.sampled_from(SHARDS))
    def shard_fails(self, shard: int) -> None:
        self.ended.add(shard)
        self.run(self.core.handle(ShardFailed(shard)))

    @rule()
    def stop(self) -> None:
        self.stopped = True
        self.run(self.core.handle(StopRequested(4009)))
        saved = {r.shard_id: r for r in self.core.save(4009).records}
        for shard in SHARDS:
            latest = self.latest[shard]
            if latest is None or latest[0] is None or shard in self.ended:
                assert shard not in saved
            else:
                record = saved[shard]
                assert (record.session_id, record.seq) == latest, \
                    "a saved session older than one forwarded"

    # -------------------------------------------------------------- promises

    @invariant()
    def never_two_live_workers_for_one_shard(self) -> None:
        if not hasattr(self, "core"):
            return
        for shard in SHARDS:
            holders = [h for h, shards in self.running.items() if shard in shards]
            assert len(holders) <= 1, f"shard {shard} runs in {holders}"

    @invariant()
    def every_shard_is_planned_on_exactly_one_slot(self) -> None:
        if not hasattr(self, "core"):
            return
        owners = sorted(i for s in self.slots for i in s.shard_ids)
        assert owners == list(SHARDS)


TestClusterModel = ClusterModel.TestCase
TestClusterModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])


def test_a_killed_frozen_worker_comes_back_through_its_exit() -> None:
    index = 0
    slot = local(index, [index])
    core = core_of(slot)
    joins(core, index, b"p", 0.0)
    [kill] = core.handle(Tick(TIMEOUT + 1))
    assert kill == Kill(index, TIMEOUT + 1)
    assert core.handle(WorkerExited(index, TIMEOUT + 1, returncode=-9)) == [
        Spawn(index, 0.0, restart=1, returncode=-9)]
    assert slot.peer is None
