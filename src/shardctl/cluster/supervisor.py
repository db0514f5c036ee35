"""The supervisor: one process that owns REST, the limiter, the bus and the workers.

``async with Supervisor(token=...) as sup: await sup.run()``.  Entering discovers the gateway
(``GET /gateway/bot``), plans shards over worker processes, refuses a start the session budget
cannot pay for, binds every ZeroMQ endpoint, and spawns the workers.  While running it keeps,
per shard, the session and the last sequence number it forwarded (DESIGN.md §7): a dead or
frozen worker is respawned with those sessions and its shards RESUME, so consumers see every
event exactly once.  A graceful stop closes every shard resumably, gives consumers and
``output`` up to ``drain_timeout`` to take what they can still read (cluster/stop_drain.py)
and writes the sessions, each at the seq actually sent, to the state file, so the next start
RESUMEs instead of spending identifies and replays what nobody got; while running, the
same record is checkpointed about once a second (cluster/checkpoint.py), so a start after a
crash RESUMEs too, once the crashed run's workers are gone (cluster/orphans.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc

from shardctl import errors
from shardctl.cluster import orphans, registration, remote, stop_drain
from shardctl.cluster import sessions as session_file
from shardctl.cluster.checkpoint import Checkpointer
from shardctl.cluster.command_requests import CommandRequests
from shardctl.cluster.commands import COMMAND_TIMEOUT, CommandReply, CommandRouter
from shardctl.cluster.config import RunConfig
from shardctl.cluster.counters import EventTotals
from shardctl.cluster.discovery import GatewayInfo, fetch_gateway_bot
from shardctl.cluster.fanout import BatchHook, EventFanout, Output
from shardctl.cluster.limiter_service import LimiterServer
from shardctl.cluster.peers import PeerBudget
from shardctl.cluster.planner import parse_shard_ids, plan
from shardctl.cluster.restarts import RestartPolicy
from shardctl.cluster.sessions import ResumeUrlCheck, SessionRecord, WorkerMark
from shardctl.cluster.status_report import limiter_section, redacted_status_body, status_body
from shardctl.cluster.workers import WorkerSlot, kill, spawn, worker_command
from shardctl.gateway.closecodes import SESSION_ENDING_CLIENT_CODES
from shardctl.gateway.sharding import shard_for
from shardctl.ipc import endpoints
from shardctl.ipc.assignment import Assignment, ShardAssignment
from shardctl.ipc.bus import EventForwarder
from shardctl.ipc.control import ControlMessage, ControlServer, Incoming, Reassembler
from shardctl.ipc.events import Event
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.security import Role, for_socket

log = logging.getLogger(__name__)

#: Close code for a graceful stop: not 1000/1001, so sessions stay resumable (protocol §7).
RESUMABLE_CLOSE: Final = 4009
#: How long workers get to close their shards and report before they are killed.
STOP_TIMEOUT: Final = 15.0
#: A worker that has not registered yet is still importing (seconds on a loaded host):
#: judge it by this, not by the liveness timeout, or a short timeout kills every respawn.
WORKER_STARTUP_GRACE: Final = 20.0
#: The first IDENTIFYs wait for every shard that must identify to ask for a slot, unless no
#: shard has asked for this long (a worker that died while starting) ...
START_GATE_QUIET: Final = 5.0
#: ... and never longer than this.
START_GATE_MAX: Final = 60.0


#: What the checkpoint keeps: the resumable sessions and the local workers holding them.
_Checkpoint = tuple[tuple[SessionRecord, ...], tuple[WorkerMark, ...]]


class CrashLoopError(errors.ShardctlError):
    """A worker died too often in too short a time; respawning it would burn identifies."""


@dataclass(slots=True)
class ShardStatus:
    id: int
    state: str = "pending"
    worker: int = 0
    pid: int | None = None
    session_id: str | None = None
    resume_gateway_url: str | None = None
    seq: int | None = None
    latency: float | None = None
    guilds: int = 0
    last_event: float | None = None
    error: str | None = None


class Supervisor:
    """Runs a shard cluster; see the module docstring.

    ``Supervisor(token=..., processes=4, ...)`` takes the fields of :class:`RunConfig` as
    keywords (or a ready ``config``).  ``output`` is called with every event (an
    :class:`~shardctl.ipc.events.Event`, in order per shard; may be async).
    """

    def __init__(self, config: RunConfig | None = None, /, *, output: Output | None = None,
                 runtime_dir: Path | None = None, beat_interval: float = 1.0,
                 liveness_timeout: float = 5.0,
                 restart_policy: Callable[[], RestartPolicy] = RestartPolicy,
                 **options: Any) -> None:
        if config is None:
            config = RunConfig(**options)
        elif options:
            config = replace(config, **options)
        self.config = config
        self._output = output
        self._runtime_dir = runtime_dir
        self._beat_interval = beat_interval
        self._liveness_timeout = liveness_timeout
        self._restart_policy = restart_policy
        self.info: GatewayInfo | None = None
        self.shard_count = 0
        self.slots: list[WorkerSlot] = []
        self._status: dict[int, ShardStatus] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._forwarder: EventForwarder | None = None
        self._control: ControlServer | None = None
        self.limiter: LimiterServer | None = None
        self._batch_hook: BatchHook | None = None
        self._fanout = EventFanout(self._install_batch_hook)
        self._commands = CommandRouter()
        #: Commands other processes ask for (cluster/command_requests.py).
        self._requests = CommandRequests(self)
        #: Long messages from registered workers, joined (ipc/control.py "Parts").
        self._parts = Reassembler()
        #: Requests from peers that are not workers: a bounded rate each (cluster/peers.py).
        self._budget = PeerBudget()
        #: Registrations refused (a wrong or used secret, a busy slot, a missing role).
        self.refused_registrations = 0
        self._stopping = False
        self._stopped = anyio.Event()
        self._failure: BaseException | None = None
        self._changed = anyio.Event()
        #: tasks waiting for the event bus to catch up: bus progress wakes them (only them,
        #: and only while there are some: the forwarder calls us after every batch)
        self._bus_waiters = 0
        #: Per-shard event counts by type, cumulative over worker restarts (metrics, rates).
        self.event_totals = EventTotals()
        self.endpoints: dict[str, str] = {}
        #: where a RESUME may go: Discord's gateway hosts, and ours once discovered
        self._resume_allowed = ResumeUrlCheck()
        #: this instance's shards (its part of a shared state file)
        self._shard_ids: list[int] = []
        self._checkpoint: Checkpointer[_Checkpoint] | None = None
        #: pid -> start time of our local workers (for the checkpoint's worker marks)
        self._started: dict[int, str | None] = {}
        #: each shard's session record as the previous checkpoint snapshot saw it
        self._seen: dict[int, SessionRecord] = {}

    def __repr__(self) -> str:
        return (f"<Supervisor shards={self.shard_count} workers={len(self.slots)} "
                f"api={self.config.api_url!r}>")

    # ------------------------------------------------------------------ start

    async def __aenter__(self) -> Supervisor:
        info = self.info = await fetch_gateway_bot(self.config.token,
                                                   api_url=self.config.api_url)
        self._resume_allowed = ResumeUrlCheck((info.url, self.config.api_url))
        self.shard_count = self.config.shards or info.shards
        ids = (parse_shard_ids(self.config.shard_ids, self.shard_count)
               if self.config.shard_ids else list(range(self.shard_count)))
        self._shard_ids = ids
        saved = self._load_sessions()
        resumable = {i: saved[i] for i in ids if i in saved}
        self._seen = dict(resumable)
        self._check_budget(info, len(ids) - len(resumable))
        local = self.config.processes
        self.slots = [WorkerSlot(i, shard_ids, policy=self._restart_policy(), remote=i >= local)
                      for i, shard_ids in enumerate(
                          plan(ids, local + self.config.remote_workers))]
        for slot in self.slots:
            for shard_id in slot.shard_ids:
                self._status[shard_id] = ShardStatus(shard_id, worker=slot.index)
        for record in resumable.values():
            status = self._status[record.shard_id]
            status.session_id, status.seq = record.session_id, record.seq
            status.resume_gateway_url = record.resume_gateway_url
        # A crashed run's workers may still hold these sessions: never two connections on one.
        await orphans.wait_gone(orphans.still_running(
            session_file.load_workers(self.state_file), ids))
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await self._start_services(tg, info, resumable, len(ids) - len(resumable))
            self._checkpoint = Checkpointer(self._checkpoint_snapshot, self._write_checkpoint,
                                            interval=self.config.checkpoint_interval)
            await tg.start(self._checkpoint.run)
            for slot in self.slots:
                if not slot.remote:  # remote slots are filled by workers that register
                    tg.start_soon(self._watch, slot)
            tg.start_soon(self._beat_loop)
        except BaseException:
            tg.cancel_scope.cancel()
            with contextlib.suppress(BaseException):
                await tg.__aexit__(None, None, None)
            self._close_sockets()
            raise
        log.info("supervisor: %d shards (%s of %d) over %d workers; events on %s",
                 len(ids), self.config.shard_ids or "all", self.shard_count, len(self.slots),
                 self.endpoints["events"])
        return self

    @property
    def state_file(self) -> Path:
        """``--state-file``, else a default of this bot and shard set (known once entered)."""
        return self.config.state_file or session_file.default_state_file(
            self.config.token, self.shard_count, self._shard_ids)

    def _load_sessions(self) -> dict[int, SessionRecord]:
        path = self.state_file
        if self.config.state_file is None and not path.exists():
            path = session_file.legacy_state_file()  # written by an older version
        return session_file.load(path, self.config.token, self.shard_count,
                                 resume_allowed=self._resume_allowed)

    def _check_budget(self, info: GatewayInfo, must_identify: int) -> None:
        limit = info.session_start_limit
        if limit.remaining >= must_identify:
            return
        message = (
            f"the session start budget cannot cover this start: {must_identify} shards must "
            f"IDENTIFY but only {limit.remaining} of {limit.total} session starts remain; the "
            f"budget resets in {limit.reset_after / 3600:.1f} h. Wait for the reset, resume "
            "from a state file, or pass --ignore-session-start-limit (Discord resets the token "
            "of a bot that goes over)")
        if not self.config.ignore_session_start_limit:
            raise errors.SessionBudgetError(message)
        log.warning("%s -- ignored as requested", message)

    async def _start_services(self, tg: anyio.abc.TaskGroup, info: GatewayInfo,
                              resumable: Mapping[int, SessionRecord], must_identify: int
                              ) -> None:
        run_dir = endpoints.runtime_dir(self._runtime_dir)
        limit = info.session_start_limit
        # CURVE on every endpoint when keys are configured; limiter and events-in sit next
        # to a tcp control endpoint so remote workers reach them (cluster/remote.py).
        curve, self._supervisor_curve = remote.supervisor_keys(
            self.config.curve_keys, shared_limiter=self.config.limiter is not None)
        control_ep = self.config.control_endpoint
        limiter_ep = self.config.limiter
        if limiter_ep is None:
            self.limiter = LimiterServer(
                remote.service_endpoint(control_ep, "limiter", run_dir),
                max_concurrency=limit.max_concurrency, interval=self.config.identify_interval,
                remaining=limit.remaining, total=limit.total, reset_after=limit.reset_after,
                curve=for_socket(curve, "limiter"), margin=self.config.identify_margin,
                insecure_loopback=self.config.insecure_loopback)
            limiter_ep = await tg.start(self.limiter.serve)
            if must_identify:
                # Closed now, before any worker exists to ask; opened by the task, or by the
                # clock at START_GATE_MAX.
                self.limiter.gate(anyio.current_time() + START_GATE_MAX)
                tg.start_soon(self._open_start_gate, self.limiter, must_identify)
        else:
            await tg.start(self._configure_remote_limiter, limiter_ep, info)
        forwarder = self._forwarder = EventForwarder(
            remote.service_endpoint(control_ep, "events-in", run_dir),
            self.config.events_endpoint or endpoints.ipc_endpoint("events.sock", run_dir),
            # A slow consumer must not stall the cluster: it loses events at its high-water
            # mark and sees the loss as bus_seq gaps (DESIGN.md §3).
            nodrop=False, on_batch=self._batch_hook, on_progress=self._on_bus_progress,
            curve=curve, resume_url_allowed=self._resume_allowed)
        forwarder.last_seq.update({r.shard_id: r.seq for r in resumable.values()})
        await tg.start(forwarder.run)
        self._control = ControlServer(
            control_ep or endpoints.ipc_endpoint("control.sock", run_dir), curve=curve,
            insecure_loopback=self.config.insecure_loopback)
        if curve is None and self._control.endpoint.startswith("tcp://"):
            log.warning("supervisor: control endpoint %s is open to every user of this host "
                        "(--insecure-loopback): they get a redacted status and take no worker "
                        "slot; use --keys or ipc:// to keep them out", self._control.endpoint)
        tg.start_soon(self._control_loop, self._control)
        self.endpoints = {"limiter": limiter_ep, "events": forwarder.outbound,
                          "events_in": forwarder.inbound, "control": self._control.endpoint}
        if self._output is not None:
            await tg.start(self._fanout.feed, self._output)

    @staticmethod
    async def _open_start_gate(limiter: LimiterServer, must_identify: int) -> None:
        """Start every bucket together: once all shards that must IDENTIFY have asked.

        Workers boot and connect at different moments (a Python start on a loaded host takes
        a second or so, a thousand connections several); a bucket whose shards ask late
        would start its queue late, and the whole start-up ends with the last bucket.
        """
        with anyio.move_on_after(START_GATE_MAX):
            await limiter.open_gate_when_asked(must_identify, quiet=START_GATE_QUIET)
        limiter.gate(None)

    async def _configure_remote_limiter(
            self, endpoint: str, info: GatewayInfo, *,
            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """A shared limiter learns this bot's fresh limits from our ``GET /gateway/bot``.

        Before any worker exists: a limiter that does not answer, or refuses us, ends the
        start within ``limiter_timeout`` with one line naming it.
        """
        limit = info.session_start_limit
        async with LimiterClient(endpoint, curve=self._supervisor_curve) as client:
            with client.answer_within(self.config.limiter_timeout):
                await client.configure(
                    max_concurrency=limit.max_concurrency, remaining=limit.remaining,
                    total=limit.total, reset_after=limit.reset_after)
            task_status.started()
            await anyio.sleep_forever()

    # ------------------------------------------------------------------ run and stop

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM, :meth:`stop`, or a fatal error (raised here)."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("supervisor: %s received; stopping",
                                 signal.Signals(signum).name)
                        await self.stop()
                        return

                tg.start_soon(on_signal)
                await self._stopped.wait()
                tg.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure

    async def stop(self, code: int = RESUMABLE_CLOSE) -> None:
        """Close every shard with ``code`` (resumable by default), drain, save sessions."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            with anyio.CancelScope(shield=True):
                await self._stop_workers(code)
                if self._checkpoint is not None:
                    await self._checkpoint.close()
                await self._drain_and_save(code)
        finally:
            self._stopped.set()

    async def _drain_and_save(self, code: int) -> None:
        """Consumers and ``output`` take what they still can, then the sessions are saved
        at what was sent (cluster/stop_drain.py).  First the bound a drain that runs out
        would save: a SIGKILL during the drain (a container's stop timeout) replays.  It
        covers ``output`` too: its queue (10,000 events) is shorter than that window."""
        forwarder = self._forwarder
        if forwarder is None:
            self._save_sessions(code)
            return
        self._save_sessions(code, forwarder.unsent_bound(), final=False)
        caps = await stop_drain.drain(forwarder, self._fanout, self.config.drain_timeout,
                                      forwarder.last_seq)
        self._save_sessions(code, caps)

    async def _stop_workers(self, code: int) -> None:
        control = self._control
        for slot in self.slots:
            if control is not None and slot.peer is not None and slot.alive:
                control.send(slot.peer, "stop", {"code": code})
        with anyio.move_on_after(STOP_TIMEOUT):
            for slot in self.slots:
                if slot.process is not None:
                    await slot.process.wait()
            # The workers flushed before exiting; wait until their last events are through.
            await self._wait_for(self._drained, raise_failure=False, bus=True)
        for slot in self.slots:
            if slot.alive and not slot.remote:
                log.warning("supervisor: worker %d did not stop in time; killing it", slot.index)
                kill(slot)

    def _drained(self) -> bool:
        return all(self._forwarded(s) for s in self._status.values() if s.session_id)

    def _all_ready(self) -> bool:
        return all(s.state == "ready" for s in self._status.values())

    def _all_forwarded(self) -> bool:
        return all(self._forwarded(s) for s in self._status.values())

    def _forwarded(self, status: ShardStatus) -> bool:
        """Whether the bus has forwarded everything the shard reported having received.

        The control channel can run ahead of the event bus: a READY reported there may still
        sit in the worker's ZeroMQ queue, and a worker dying then takes it along.
        """
        forwarder = self._forwarder
        if forwarder is None or status.seq is None:
            return True
        return forwarder.last_seq.get(status.id, 0) >= status.seq

    def _on_bus_progress(self) -> None:
        if self._bus_waiters:
            self._notify()

    def _save_sessions(self, code: int, caps: Mapping[int, int] | None = None, *,
                       final: bool = True) -> None:
        """``caps``: per shard, the highest seq that was sent (stop_drain.py)."""
        if code in SESSION_ENDING_CLIENT_CODES:
            records: dict[int, SessionRecord] = {}  # those codes end the sessions
        else:
            records = {r.shard_id: r for r in stop_drain.lowered(self._resumable_sessions(),
                                                                 caps or {})}
        try:
            session_file.save(self.state_file, self.config.token, self.shard_count, records,
                              shard_ids=self._shard_ids, workers=self._worker_marks())
            if final:
                log.info("supervisor: %d sessions saved to %s", len(records), self.state_file)
        except OSError as exc:
            log.error("supervisor: could not write the state file %s: %s", self.state_file, exc)

    def _checkpoint_snapshot(self) -> _Checkpoint:
        """Each shard's record as the *previous* snapshot saw it (one interval old).

        PUB/SUB has no receipts: what the events-out socket still queues for a consumer dies
        with a SIGKILLed supervisor.  A seq forwarded an interval ago has left that queue
        unless the consumer is that far behind, so a crash costs a replay (marked, README
        "Replays after a crash") rather than a gap.  A session new since then is saved
        from its start (seq 1): its whole stream is replayed, none of it is skipped.
        """
        now = {r.shard_id: r for r in self._resumable_sessions()}
        settled = []
        for shard_id, record in now.items():
            before = self._seen.get(shard_id)
            if before is not None and before.session_id == record.session_id:
                settled.append(before if before.seq <= record.seq else record)
            else:
                settled.append(replace(record, seq=min(record.seq, 1)))
        self._seen = now
        return tuple(settled), self._worker_marks()

    def _write_checkpoint(self, snapshot: _Checkpoint) -> None:
        """In a worker thread: reads nothing of ours but ``snapshot``."""
        records, workers = snapshot
        session_file.save(self.state_file, self.config.token, self.shard_count,
                          {r.shard_id: r for r in records}, shard_ids=self._shard_ids,
                          workers=workers)

    def _worker_marks(self) -> tuple[WorkerMark, ...]:
        """Our live local workers, for a start after a crash to wait for (Linux only)."""
        marks = []
        live = {slot.pid for slot in self.slots if slot.alive and not slot.remote}
        for pid in set(self._started) - live:
            del self._started[pid]
        for slot in self.slots:
            if slot.pid in live and slot.pid is not None:
                if slot.pid not in self._started:
                    self._started[slot.pid] = orphans.start_time(slot.pid)
                started = self._started[slot.pid]
                if started is not None:
                    marks.append(WorkerMark(slot.pid, started, tuple(slot.shard_ids)))
        return tuple(marks)

    def _resumable_sessions(self) -> list[SessionRecord]:
        return [r for r in map(self._session_of, sorted(self._status)) if r is not None]

    def _session_of(self, shard_id: int) -> SessionRecord | None:
        """Where a RESUME of this shard starts: its session and the last seq forwarded.

        Both come from the bus when it has seen the session's READY (the forwarder notes
        it), so they always belong together even if a worker died before reporting a new
        session on the control channel; a session resumed from the state file, with no
        READY since, comes from the shard's status.  A fatal close ended it: none.
        """
        status, forwarder = self._status[shard_id], self._forwarder
        seq = forwarder.last_seq.get(shard_id) if forwarder is not None else None
        if seq is None or status.error:
            return None
        session = forwarder.last_session.get(shard_id) if forwarder is not None else None
        if session is None and status.session_id and status.resume_gateway_url:
            session = (status.session_id, status.resume_gateway_url)
        if session is None:
            return None
        return SessionRecord(shard_id, session[0], session[1], seq)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        tg, self._tg = self._tg, None
        try:
            await self.stop()
        finally:
            await self._close(tg)

    async def _close(self, tg: anyio.abc.TaskGroup | None) -> None:
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            self._close_sockets()
            self._fanout.close()

    def _close_sockets(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None

    def _fail(self, error: BaseException) -> None:
        """A cluster-wide fatal error: remember it, stop everything, raise it from run()."""
        if self._failure is None:
            self._failure = error
            log.error("supervisor: %s", error)
        if self._tg is not None and not self._stopping:
            self._tg.start_soon(self.stop)

    # ------------------------------------------------------------------ workers

    async def _watch(self, slot: WorkerSlot) -> None:
        assert self._control is not None
        command = worker_command(self._control.endpoint, slot.index, self.config.curve_keys)
        while not self._stopping:
            await spawn(slot, command, now=anyio.current_time())
            assert slot.process is not None
            if self._checkpoint is not None and self._tg is not None:
                # name the new process at once: a crash within the interval must not leave
                # it unknown to the next start (cluster/orphans.py)
                self._tg.start_soon(self._checkpoint.flush)
            returncode = await slot.process.wait()
            self._mark_worker_gone(slot)
            if self._stopping:
                return
            delay = slot.policy.record(anyio.current_time())
            if delay is None:
                self._fail(CrashLoopError(
                    f"worker {slot.index} exited {slot.policy.max_restarts + 1} times within "
                    f"{slot.policy.window:g} s (last exit code {returncode}); stopping instead "
                    "of respawning it again"))
                return
            slot.restarts += 1
            log.warning("supervisor: worker %d (pid %s) exited with %s; respawning (restart %d)",
                        slot.index, slot.pid, returncode, slot.restarts)
            await anyio.sleep(delay)

    def _mark_worker_gone(self, slot: WorkerSlot) -> None:
        if slot.peer is not None:
            self._parts.forget(slot.peer)
        slot.peer = None
        for shard_id in slot.shard_ids:
            status = self._status[shard_id]
            if status.state != "failed":
                status.state = "worker lost"
        self._notify()

    async def _beat_loop(self) -> None:
        while True:
            await anyio.sleep(self._beat_interval)
            now = anyio.current_time()
            for slot in self.slots:
                if not slot.alive:
                    continue
                if now - slot.last_beat > self._liveness_timeout and slot.remote:
                    await self._remote_lost(slot, now - slot.last_beat)
                elif now - slot.last_beat > self._liveness_timeout and (
                        slot.peer is not None or now - slot.last_beat > WORKER_STARTUP_GRACE):
                    # Frozen (SIGSTOP, deadlock): SIGKILL it; _watch respawns it.
                    log.warning("supervisor: worker %d (pid %s) missed its liveness beats for "
                                "%.1f s; killing it", slot.index, slot.pid, now - slot.last_beat)
                    kill(slot)
                elif slot.peer is not None and self._control is not None:
                    self._control.send(slot.peer, "beat")

    async def _remote_lost(self, slot: WorkerSlot, silent: float) -> None:
        """A remote worker's host is gone: its shards RESUME on a live worker (remote.py)."""
        log.warning("supervisor: remote worker %d missed its liveness beats for %.1f s; "
                    "taking its shards away", slot.index, silent)
        self._mark_worker_gone(slot)
        if self._forwarder is not None:
            # It may still be alive and publishing: nothing of it is forwarded any more.
            self._forwarder.publishers.revoke(slot.index)
        adopter = remote.adopter_for(self.slots, slot)
        if adopter is None or adopter.peer is None or self._control is None:
            log.warning("supervisor: no live worker to adopt shards %s; they wait for the "
                        "next worker to register", slot.shard_ids)
            return
        moved = remote.move_shards(slot, adopter)
        for shard_id in moved:
            self._status[shard_id].worker = adopter.index
        log.info("supervisor: worker %d adopts shards %s of lost worker %d",
                 adopter.index, moved, slot.index)
        self._control.send(adopter.peer, "assign",
                           self._assignment(adopter, same_process=True).to_body())

    def _assignment(self, slot: WorkerSlot, *, same_process: bool = False) -> Assignment:
        """What ``slot``'s worker runs now, with a fresh publish key that events-in takes
        from now on (the old one stops working; ``same_process``: not before the worker
        has switched, since it is the same live publisher, see ipc/publishers.py)."""
        assert self.info is not None and self._forwarder is not None
        shards = []
        for shard_id in slot.shard_ids:
            record = self._session_of(shard_id)
            if record is not None:
                shards.append(ShardAssignment(shard_id, record.session_id,
                                              record.resume_gateway_url, record.seq))
            else:
                shards.append(ShardAssignment(shard_id))
        key = new_publish_key()
        self._forwarder.publishers.authorize(slot.index, key, slot.shard_ids,
                                             same_process=same_process)
        return Assignment(
            token=self.config.token, gateway_url=self.info.url, shard_count=self.shard_count,
            intents=int(self.config.intents), compression=self.config.compression,
            limiter=self.endpoints["limiter"], events=self.endpoints["events_in"],
            shards=tuple(shards), large_threshold=self.config.large_threshold,
            beat_interval=self._beat_interval,
            supervisor_timeout=max(10.0, self._liveness_timeout * 2),
            worker=slot.index, publish_key=key)

    # ------------------------------------------------------------------ control channel

    async def _control_loop(self, control: ControlServer) -> None:
        while True:
            incoming = await control.receive()
            try:
                self._handle(control, incoming)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("supervisor: dropped an invalid %s message: %s",
                            incoming.message.kind, exc)

    def _handle(self, control: ControlServer, incoming: Incoming) -> None:
        peer = incoming.peer
        slot = next((s for s in self.slots if s.peer == peer), None)
        if slot is None:
            self._from_peer(control, incoming)
            return
        try:
            message = self._parts.feed(peer, incoming.message)
        except errors.ProtocolError as exc:
            log.warning("supervisor: worker %d: %s", slot.index, exc)
            return
        if message is None:
            return  # a part of a longer message
        slot.last_beat = anyio.current_time()
        if message.kind == "state":
            self._on_state(slot, message.body)
        elif message.kind == "reply":
            self._commands.on_reply(message.body)
        elif message.kind == "status":
            self._answer_status(control, peer, incoming.role)

    def _from_peer(self, control: ControlServer, incoming: Incoming) -> None:
        """A message from a peer that holds no slot: a status query, a command request
        or a registration.

        Whatever would be answered costs the peer's request budget (cluster/peers.py); a
        registration is answered only when it proves itself, so a flood of bad ones costs
        nothing but their reading -- and never delays a real worker's registration.
        """
        peer, kind, role = incoming.peer, incoming.message.kind, incoming.role
        if kind == "register":
            self._register(control, peer, incoming.message, role)
            return
        if kind == "request":
            # Gateway commands: operators only, answered from a task (command_requests.py).
            if self._tg is not None and self._budget.allow(
                    peer, anyio.current_time(), anonymous=role is None):
                self._requests.handle(control, self._tg, incoming)
            return
        stale = kind in {"beat", "state"} and role == Role.WORKER and any(
            s.remote for s in self.slots)
        if (kind != "status" and not stale) or not self._budget.allow(
                peer, anyio.current_time(), anonymous=role is None):
            return  # a worker we already replaced, a stranger, or over its budget
        if kind == "status":
            self._answer_status(control, peer, role)
        else:
            # A remote worker we took for lost is back: its shards run elsewhere now.
            control.send(peer, "stop", {"code": RESUMABLE_CLOSE})

    def _answer_status(self, control: ControlServer, peer: bytes, role: Role | None) -> None:
        # In full to operators (a CURVE operator key, or this user on the private ipc
        # endpoint); states and counts only to anyone else (cluster/status_report.py).
        shards = self.status()
        control.send(peer, "status",
                     status_body(shards, self.slots, limiter=self._limiter_status())
                     if role == Role.OPERATOR else redacted_status_body(shards, self.slots))

    def _register(self, control: ControlServer, peer: bytes, message: ControlMessage,
                  role: Role | None) -> None:
        slot, why = registration.slot_for(self.slots, message.body, peer, role,
                                          curve=self.config.curve_keys is not None)
        if slot is None:
            self.refused_registrations += 1
            if self._budget.first(peer, "register"):
                log.warning("supervisor: refused a registration from peer %s: %s (further "
                            "refusals for this peer are counted, not logged)", peer.hex(), why)
            return
        if slot.remote:
            pid = message.body.get("pid")
            slot.pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        slot.peer, slot.last_beat = peer, anyio.current_time()
        control.send(peer, "assign", self._assignment(slot).to_body())

    def _on_state(self, slot: WorkerSlot, body: dict[str, Any]) -> None:
        for item in body["shards"]:
            shard_id = int(item["id"])
            status = self._status.get(shard_id)
            if status is None or shard_id not in slot.shard_ids:
                continue
            status.state = str(item["state"])
            status.pid = slot.pid
            status.seq = item.get("seq")
            status.latency = item.get("latency")
            status.guilds = int(item.get("guilds") or 0)
            status.last_event = item.get("last_event")
            self.event_totals.observe(shard_id, slot.pid, item.get("counts"))
            if item.get("session_id"):
                status.session_id = item["session_id"]
                url = item.get("resume_gateway_url")
                # Not a host the token may go to: keep the session out of any RESUME.
                status.resume_gateway_url = (
                    url if isinstance(url, str) and self._resume_allowed(url) else None)
            elif status.state == "ready":
                status.session_id = status.resume_gateway_url = None
            error = item.get("error")
            if isinstance(error, dict):
                status.error = str(error.get("message"))
                # A fatal close ended the session too (the shard forgot it): never save it.
                status.session_id = status.resume_gateway_url = None
                self._fail(_fatal_from_report(error))
        self._notify()

    # ------------------------------------------------------------------ events in-process

    def _install_batch_hook(self, hook: BatchHook | None) -> None:
        self._batch_hook = hook
        if self._forwarder is not None:
            self._forwarder.on_batch = hook

    @property
    def control_refusals(self) -> dict[str, int]:
        """Control messages refused so far, by reason (also ``/metrics``)."""
        return {"dropped_send": self._control.drops if self._control is not None else 0,
                "rate": self._budget.refused, "registration": self.refused_registrations,
                "command": self._requests.refused}

    @property
    def listener_drops(self) -> int:
        """Events in-process listeners lost because they fell too far behind."""
        return self._fanout.drops

    def events(self, *types: str) -> AsyncIterator[Event]:
        """``async for event in sup.events("MESSAGE_CREATE", ...)``: every type if none."""
        return self._fanout.events(*types)

    # ------------------------------------------------------------------ commands and status

    def _limiter_status(self) -> dict[str, Any] | None:
        """The built-in limiter's margin and op 9 count per bucket (None: a shared one)."""
        if self.limiter is None:
            return None
        try:
            scheduler = self.limiter.scheduler
        except RuntimeError:  # not serving yet
            return None
        return limiter_section(scheduler.margins(), scheduler.rejections(),
                               scheduler.rejections_total)

    def status(self) -> list[ShardStatus]:
        """Every shard's last reported state, latency, seq, worker pid and guild count."""
        return [replace(s) for s in sorted(self._status.values(), key=lambda s: s.id)]

    async def wait_until(self, predicate: Callable[[list[ShardStatus]], bool]) -> None:
        """Wait until ``predicate(status())`` holds (re-checked on every state report)."""
        await self._wait_for(lambda: predicate(self.status()))

    async def wait_subscribed(self, prefix: bytes = b"") -> None:
        """Return once a consumer holds this subscription (b"" = everything)."""
        assert self._forwarder is not None
        await self._forwarder.wait_subscribed(prefix)

    async def wait_ready(self) -> None:
        """Return once every shard is READY and its READY has gone out on the event bus."""
        while True:
            await self._wait_for(self._all_ready)
            # Woken per bus batch only here, where the bus is about to catch up (or a shard
            # dropped out of READY again), never while shards are still connecting.
            await self._wait_for(lambda: not self._all_ready() or self._all_forwarded(),
                                 bus=True)
            if self._all_ready():
                return

    async def _wait_for(self, predicate: Callable[[], bool], *,
                        raise_failure: bool = True, bus: bool = False) -> None:
        """Until ``predicate()`` holds: re-checked on every state report, and with ``bus``
        after every batch the event bus forwards too."""
        self._bus_waiters += bus
        try:
            while not predicate():
                if raise_failure and self._failure is not None:
                    raise self._failure
                await self._changed.wait()
        finally:
            self._bus_waiters -= bus

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def update_status(self, presence: Mapping[str, Any], shard_id: int | None = None
                            ) -> list[CommandReply]:
        """Op 3 on one shard, or on every shard (None)."""
        targets = [shard_id] if shard_id is not None else sorted(self._status)
        async with anyio.create_task_group() as tg:
            replies: list[CommandReply] = []

            async def one(target: int) -> None:
                replies.append(await self._command(target, "update_status",
                                                   {"presence": dict(presence)}))

            for target in targets:
                tg.start_soon(one, target)
        return sorted(replies, key=lambda r: r.shard)

    async def update_voice(self, guild_id: int | str, channel_id: int | str | None,
                           self_mute: bool = False, self_deaf: bool = False) -> CommandReply:
        channel = None if channel_id is None else str(channel_id)
        return await self._command(self.shard_of(guild_id), "update_voice", {
            "guild_id": str(guild_id), "channel_id": channel,
            "self_mute": self_mute, "self_deaf": self_deaf})

    async def request_guild_members(self, guild_id: int | str, **options: Any) -> CommandReply:
        return await self._command(self.shard_of(guild_id), "request_guild_members",
                                   {"guild_id": str(guild_id), **options})

    async def fetch_guild_members(self, guild_id: int | str, **options: Any) -> CommandReply:
        """All member chunks of one request, collected by its nonce in the owning worker."""
        return await self._command(self.shard_of(guild_id), "fetch_guild_members",
                                   {"guild_id": str(guild_id), **options},
                                   wait=COMMAND_TIMEOUT + float(options.get("timeout", 30.0)))

    def shard_of(self, guild_id: int | str) -> int:
        """The shard that owns a guild: ``(guild_id >> 22) % shard_count``."""
        return shard_for(guild_id, self.shard_count)

    async def _command(self, shard_id: int, name: str, args: dict[str, Any], *,
                       wait: float = COMMAND_TIMEOUT) -> CommandReply:
        status = self._status.get(shard_id)
        if status is None:
            return CommandReply(shard_id, False, f"shard {shard_id} is not run by this cluster")
        return await self._commands.send(self._control, self.slots[status.worker].peer,
                                         shard_id, name, args, wait=wait)


_FATAL_KINDS: Final[dict[str, type[errors.DiscordError]]] = {
    cls.__name__: cls for cls in (
        errors.AuthenticationError, errors.DisallowedIntentsError, errors.InvalidIntentsError,
        errors.ShardingError, errors.GatewayFatalError)
}


def _fatal_from_report(error: Mapping[str, Any]) -> errors.ShardctlError:
    cls = _FATAL_KINDS.get(str(error.get("kind")), errors.GatewayFatalError)
    code = error.get("code")
    return cls(str(error.get("message")), code=code if isinstance(code, int) else None)
