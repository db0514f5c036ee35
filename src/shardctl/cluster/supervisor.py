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

What to do about workers and sessions is decided in :mod:`shardctl.cluster.core` (respawn,
crash loops, liveness, adoption, registration, which session a worker resumes, readiness):
this class observes processes, sockets and the bus, feeds the core, and executes its
actions (``_execute``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields, replace
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc

from shardctl import errors
from shardctl.cluster import orphans, remote, stop_drain
from shardctl.cluster import reshard as resharding
from shardctl.cluster import sessions as session_file
from shardctl.cluster.checkpoint import Checkpointer
from shardctl.cluster.command_requests import CommandRequests
from shardctl.cluster.commands import COMMAND_TIMEOUT, CommandReply, CommandRouter
from shardctl.cluster.config import RunConfig
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
from shardctl.cluster.counters import EventTotals
from shardctl.cluster.discovery import GatewayInfo, fetch_gateway_bot
from shardctl.cluster.fanout import BatchHook, EventFanout, Output
from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.cluster.peers import PeerBudget
from shardctl.cluster.planner import parse_shard_ids, plan
from shardctl.cluster.restarts import RestartPolicy
from shardctl.cluster.rolling import READY_TIMEOUT, Hooks, OperationRefusedError, Rolling
from shardctl.cluster.rolling_requests import OperationRequests
from shardctl.cluster.sessions import ResumeUrlCheck, SessionRecord, WorkerMark
from shardctl.cluster.status_answers import StatusAnswers
from shardctl.cluster.status_report import StatusSnapshot, limiter_section
from shardctl.cluster.workers import WorkerSlot, kill, spawn, worker_command
from shardctl.gateway.sharding import shard_for
from shardctl.ipc import control_messages as wire
from shardctl.ipc import endpoints
from shardctl.ipc.assignment import Assignment, ShardAssignment
from shardctl.ipc.bus import EventForwarder
from shardctl.ipc.control import ControlMessage, ControlServer, Incoming, Reassembler
from shardctl.ipc.events import Event
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.security import Role, for_socket

if TYPE_CHECKING:
    from shardctl.cluster.reshard_progress import ReshardProgress
    from shardctl.stream.publisher import StreamPublisher

__all__ = ["RESUMABLE_CLOSE", "STOP_TIMEOUT", "CrashLoopError", "ShardStatus", "Supervisor"]

log = logging.getLogger(__name__)

#: Close code for a graceful stop: not 1000/1001, so sessions stay resumable (protocol §7).
RESUMABLE_CLOSE: Final = 4009
#: How long workers get to close their shards and report before they are killed.
STOP_TIMEOUT: Final = 15.0
#: The first IDENTIFYs wait for every shard that must identify to ask for a slot, unless no
#: shard has asked for this long (a worker that died while starting) ...
START_GATE_QUIET: Final = 5.0
#: ... and never longer than this.
START_GATE_MAX: Final = 60.0


#: What the checkpoint keeps: the resumable sessions and the local workers holding them.
_Checkpoint = tuple[tuple[SessionRecord, ...], tuple[WorkerMark, ...]]


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

    def observe(self, item: wire.ShardReport, pid: int | None,
                resume_allowed: Callable[[str], bool]) -> None:
        """Take a worker's report of this shard.  A resume URL that is not a host the token
        may go to is kept out of any RESUME.  States and URLs take a handful of values over
        thousands of shards: interned, each is one string, not one per shard (~140 bytes)."""
        self.state, self.pid, self.seq = sys.intern(item.state), pid, item.seq
        self.latency, self.guilds, self.last_event = item.latency, item.guilds, item.last_event
        if item.session_id:
            url = item.resume_gateway_url
            self.session_id = item.session_id
            self.resume_gateway_url = (sys.intern(url) if url is not None and resume_allowed(url)
                                       else None)


#: Every field of a ShardStatus, in order, read in one C call (Supervisor.status_rows).
_STATUS_FIELDS: Final = attrgetter(*(f.name for f in fields(ShardStatus)))


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
        #: the services' task group; None once stopping (no new requests or operations)
        self._tg: anyio.abc.TaskGroup | None = None
        #: the same task group until it is closed: status is answered during a stop too
        self._answers_tg: anyio.abc.TaskGroup | None = None
        self._forwarder: EventForwarder | None = None
        #: with --stream: every forwarded event goes here, and its acks are "forwarded"
        self._stream: StreamPublisher | None = None
        self._control: ControlServer | None = None
        self.limiter: SessionLimiterService | None = None
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
        #: drains and rolling restarts (cluster/rolling.py), and requests for them
        self._rolling = Rolling(Hooks(
            slots=lambda: self.slots, stop_worker=self._stop_worker,
            wait=lambda p: self._wait_for(p, raise_failure=False, bus=True),
            notify=self._notify, forwarded=lambda s: self._forwarded(self._status[s]),
            shard_state=lambda s: (self._status[s].state, self._status[s].pid),
            counts=self.event_totals.totals, stopping=lambda: self._stopping))
        self._operations = OperationRequests(self)
        #: ``status`` replies, built off the loop
        self._status_answers = StatusAnswers(self._status_snapshot)
        #: the reshard under way (cluster/reshard.py), if any
        self._reshard: resharding.Reshard | None = None
        #: the running or last reshard's progress (status, live view)
        self._reshard_progress: ReshardProgress | None = None
        #: every decision about workers and sessions (cluster/core/): this class is its pump
        self._core = SupervisorCore(lambda: self.slots, lambda: list(self._status),
                                    liveness_timeout=liveness_timeout,
                                    curve=config.curve_keys is not None)

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
        self._core.sessions = SessionBook(resumable.values())
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
        self._tg = self._answers_tg = tg
        try:
            await self._start_services(tg, info, resumable, len(ids) - len(resumable))
            self._checkpoint = Checkpointer(self._checkpoint_snapshot, self._write_checkpoint,
                                            interval=self.config.checkpoint_interval)
            await tg.start(self._checkpoint.run)
            for slot in self.slots:
                if not slot.remote:  # remote slots are filled by workers that register
                    tg.start_soon(self._watch, slot)
            tg.start_soon(self._beat_loop)
            if self.config.auto_reshard:
                tg.start_soon(resharding.follow_recommendation, self,
                              self.config.reshard_check_interval)
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
            self.limiter = SessionLimiterService(
                remote.service_endpoint(control_ep, "limiter", run_dir),
                self.config.limits(limit), curve=for_socket(curve, "limiter"),
                insecure_loopback=self.config.insecure_loopback)
            limiter_ep = await tg.start(self.limiter.serve)
            if must_identify:
                # Closed now, before any worker exists to ask; opened by the task, or by the
                # clock at START_GATE_MAX.
                self.limiter.gate(anyio.current_time() + START_GATE_MAX)
                tg.start_soon(self._open_start_gate, self.limiter, must_identify)
        else:
            await tg.start(self._configure_remote_limiter, limiter_ep, info)
        events_ep = self.config.events_endpoint or endpoints.ipc_endpoint("events.sock", run_dir)
        forwarder = self._forwarder = EventForwarder(
            remote.service_endpoint(control_ep, "events-in", run_dir), events_ep,
            batch_outbound=(self.config.events_batch_endpoint
                            or endpoints.batch_companion(events_ep)),
            batch_window=self.config.events_batch_window_ms / 1000,
            # A slow consumer must not stall the cluster: it loses events at its high-water
            # mark and sees the loss as bus_seq gaps (DESIGN.md §3).
            nodrop=False, on_batch=self._batch_hook, on_progress=self._on_bus_progress,
            curve=curve, resume_url_allowed=self._resume_allowed)
        forwarder.on_misaligned = self._rebase_worker
        forwarder.last_seq.update({r.shard_id: r.seq for r in resumable.values()})
        # the pair the bus resumes from, as one record, even before the session's READY
        forwarder.last_session.update(
            {r.shard_id: (r.session_id, r.resume_gateway_url) for r in resumable.values()})
        if self.config.stream is not None:
            await tg.start(self._start_stream, forwarder, resumable)
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
                          "events_batch": forwarder.batch_outbound or "",
                          "events_in": forwarder.inbound, "control": self._control.endpoint}
        if self._output is not None:
            await tg.start(self._fanout.feed, self._output)

    async def _start_stream(self, forwarder: EventForwarder,
                            resumable: Mapping[int, SessionRecord], *,
                            task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                            ) -> None:
        """The durable stream (shardctl.stream): fed by the forwarder, its acknowledgements
        are what _session_of saves and RESUMEs from (DESIGN.md §7)."""
        from shardctl.stream.publisher import StreamPublisher

        assert self.config.stream is not None
        stream = self._stream = StreamPublisher(
            self.config.stream, on_progress=self._on_bus_progress,
            resume_url_allowed=self._resume_allowed,
            commands=self._requests.answer if self.config.stream.commands else None)
        stream.seed((r.shard_id, r.session_id, r.resume_gateway_url, r.seq)
                    for r in resumable.values())
        forwarder.sink = stream
        await stream.run(task_status=task_status)

    @staticmethod
    async def _open_start_gate(limiter: SessionLimiterService, must_identify: int) -> None:
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
        self._execute(self._core.handle(StopRequested(code)))
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
        if self._forwarder is None:
            return True
        self._observe_all()
        return self._core.drained(self._status.values())

    def _all_ready(self) -> bool:
        return self._core.all_ready(self._status.values())

    def _all_forwarded(self) -> bool:
        if self._forwarder is None:
            return True
        self._observe_all()
        return self._core.all_forwarded(self._status.values())

    def _forwarded(self, status: ShardStatus) -> bool:
        """Whether the bus has forwarded everything the shard reported, of the session it
        reported (the core decides, cluster/core/book.py)."""
        if self._forwarder is None:
            return True
        self._observe_bus(status.id)
        return self._core.forwarded(status)

    def _observe_all(self) -> None:
        for shard_id in self._status:
            self._observe_bus(shard_id)

    def _observe_bus(self, shard_id: int) -> None:
        """Feed the core the bus's watermark of ``shard_id``: (session, last seq) as one.

        With ``--stream``, forwarded means stored: the watermark is what the stream
        acknowledged (stream/publisher.py ``durable``), never what merely left the bus.
        """
        forwarder = self._forwarder
        if forwarder is None:
            return
        session: str | None
        url: str | None
        seq: int | None
        if self._stream is not None:
            session, url, seq = self._stream.durable(shard_id) or (None, None, None)
        else:
            session, url = forwarder.last_session.get(shard_id) or (None, None)
            seq = forwarder.last_seq.get(shard_id)
        known = self._core.sessions.watermark(shard_id)
        if known is not None and known.seq == seq and known.session_id == session \
                and known.resume_url == url:
            return  # nothing new: the waits re-check every shard after every bus batch
        self._core.handle(Watermark(shard_id, session, url, seq))

    def _on_bus_progress(self) -> None:
        if self._bus_waiters:
            self._notify()

    def _save_sessions(self, code: int, caps: Mapping[int, int] | None = None, *,
                       final: bool = True) -> None:
        """``caps``: per shard, the highest seq that was sent (stop_drain.py)."""
        self._observe_all()
        records = {r.shard_id: r for r in stop_drain.lowered(self._core.save(code).records,
                                                             caps or {})}
        try:
            session_file.save(self.state_file, self.config.token, self.shard_count, records,
                              shard_ids=self._shard_ids, workers=self._worker_marks())
            if final:
                log.info("supervisor: %d sessions saved to %s", len(records), self.state_file)
        except OSError as exc:
            log.error("supervisor: could not write the state file %s: %s", self.state_file, exc)

    def _checkpoint_snapshot(self) -> _Checkpoint:
        """Each shard's record as the *previous* snapshot saw it (cluster/core/book.py
        ``settle``: a crash costs a replay, marked, README "Replays after a crash", rather
        than a gap).  With ``--stream`` the stream's acknowledgements are receipts: exact."""
        now = self._resumable_sessions()
        settled = tuple(now) if self._stream is not None else settle(now, self._seen)
        self._seen = {r.shard_id: r for r in now}
        return settled, self._worker_marks()

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
        """Every shard's record as the core selects it from the bus's watermarks."""
        self._observe_all()
        return self._core.resumable()

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
            self._answers_tg = None
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
        while not self._stopping and not slot.retired:
            if not slot.alive:  # a reshard's new workers arrive running
                await spawn(slot, command, now=anyio.current_time())
            assert slot.process is not None
            if self._checkpoint is not None and self._tg is not None:
                # name the new process at once: a crash within the interval must not leave
                # it unknown to the next start (cluster/orphans.py)
                self._tg.start_soon(self._checkpoint.flush)
            returncode = await slot.process.wait()
            self._mark_worker_gone(slot, slot.peer)
            if self._stopping or slot.retired:
                return
            planned = await self._rolling.planned_exit(slot)  # a drain or roll: not counted
            respawn = self._execute(self._core.handle(
                WorkerExited(slot.index, anyio.current_time(), returncode, planned)))
            if respawn is None:
                return
            if respawn.restart:
                log.warning("supervisor: worker %d (pid %s) exited with %s; respawning "
                            "(restart %d)", slot.index, slot.pid, returncode, respawn.restart)
                await anyio.sleep(respawn.delay)

    def _mark_worker_gone(self, slot: WorkerSlot, peer: bytes | None) -> None:
        if peer is not None:
            self._parts.forget(peer)
        slot.peer = None
        for shard_id in slot.shard_ids:
            status = self._status[shard_id]
            if status.state != "failed":
                status.state = "worker lost"
        self._notify()

    async def _beat_loop(self) -> None:
        while True:
            await anyio.sleep(self._beat_interval)
            self._execute(self._core.handle(Tick(anyio.current_time())))

    def _execute(self, actions: list[Action]) -> Spawn | None:
        """Carry out the core's decisions, in order; the respawn among them, if any (its
        slot's ``_watch`` task performs it)."""
        respawn = None
        for action in actions:
            if isinstance(action, Spawn):
                respawn = action
            elif isinstance(action, Fail):
                self._fail(action.error)
            elif isinstance(action, SaveSessions):
                continue  # written by _save_sessions, off this path
            elif isinstance(action, StopPeer):
                if self._control is not None and self._budget.allow(
                        action.peer, anyio.current_time(), anonymous=False):
                    self._control.send(action.peer, wire.Stop(RESUMABLE_CLOSE))
            elif isinstance(action, Refuse):
                self.refused_registrations += 1
                if self._budget.first(action.peer, "register"):
                    log.warning("supervisor: refused a registration from peer %s: %s (further "
                                "refusals for this peer are counted, not logged)",
                                action.peer.hex(), action.why)
            else:
                self._execute_one(action)
        return respawn

    def _rebase_worker(self, worker: int, generation: int, deltas: dict[bytes, int]) -> None:
        """The forwarder found ``worker``'s event numbering out of step with the bus: tell it
        by how much (ipc/watermarks.py).  Lost on the way, it only costs speed: the
        forwarder keeps renumbering that worker's batches."""
        slot = next((s for s in self.slots if s.index == worker), None)
        if self._control is not None and slot is not None and slot.peer is not None:
            self._control.send(slot.peer, wire.Rebase(generation, tuple(deltas.items())))

    def _execute_one(self, action: Kill | Send | Lost | NoAdopter | Adopt | Assign) -> None:
        slot = next(s for s in self.slots if s.index == action.worker)
        if isinstance(action, Kill):
            # Frozen (SIGSTOP, deadlock): SIGKILL it; _watch respawns it.
            log.warning("supervisor: worker %d (pid %s) missed its liveness beats for "
                        "%.1f s; killing it", slot.index, slot.pid, action.silent)
            kill(slot)
        elif isinstance(action, Send):
            if self._control is not None and slot.peer is not None:
                self._control.send(slot.peer, wire.Beat() if action.kind == "beat"
                                   else wire.Stop(action.code))
        elif isinstance(action, Lost):
            log.warning("supervisor: remote worker %d missed its liveness beats for %.1f s; "
                        "taking its shards away", slot.index, action.silent)
            self._mark_worker_gone(slot, action.peer)
            if self._forwarder is not None:
                # It may still be alive and publishing: nothing of it is forwarded any more.
                self._forwarder.publishers.revoke(slot.index)
        elif isinstance(action, NoAdopter):
            log.warning("supervisor: no live worker to adopt shards %s; they wait for the "
                        "next worker to register", list(action.shards))
        elif isinstance(action, Adopt):
            for shard_id in action.shards:
                self._status[shard_id].worker = slot.index
            log.info("supervisor: worker %d adopts shards %s of lost worker %d",
                     slot.index, list(action.shards), action.lost)
        elif isinstance(action, Assign) and self._control is not None and slot.peer:
            self._control.send(slot.peer, wire.Assign(self._assignment(
                slot, same_process=action.same_process, shards=action.shards)))

    def _assignment(self, slot: WorkerSlot, *, same_process: bool = False,
                    shards: tuple[ShardAssignment, ...] | None = None) -> Assignment:
        """What ``slot``'s worker runs now (``shards``: as the core planned them), with a
        fresh publish key that events-in takes from now on (the old one stops working;
        ``same_process``: not before the worker has switched, since it is the same live
        publisher, see ipc/publishers.py)."""
        assert self.info is not None and self._forwarder is not None
        if slot.staged and self._reshard is not None:
            return self._reshard.assignment(slot)
        if shards is None:
            for shard_id in slot.shard_ids:
                self._observe_bus(shard_id)
            shards = self._core.resume_plan(slot)
        key = new_publish_key()
        self._forwarder.publishers.authorize(slot.index, key, slot.shard_ids,
                                             same_process=same_process)
        if not same_process:
            self._forwarder.new_publisher(slot.index)
        return Assignment(
            token=self.config.token, gateway_url=self.info.url, shard_count=self.shard_count,
            intents=int(self.config.intents), compression=self.config.compression,
            limiter=self.endpoints["limiter"], events=self.endpoints["events_in"],
            shards=shards, large_threshold=self.config.large_threshold,
            beat_interval=self._beat_interval,
            supervisor_timeout=max(10.0, self._liveness_timeout * 2),
            worker=slot.index, publish_key=key,
            publish_window=self.config.publish_window_ms / 1000,
            # the worker numbers its own events from where the bus stands (ipc/watermarks.py)
            epoch=self._forwarder.epoch,
            counters=self._forwarder.counters_of({s.id for s in shards}))

    # ------------------------------------------------------------------ control channel

    async def _control_loop(self, control: ControlServer) -> None:
        while True:
            incoming = await control.receive()
            try:
                self._handle(control, incoming)
            except (KeyError, TypeError, ValueError, errors.ProtocolError) as exc:
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
        self._core.handle(Beat(slot.index, anyio.current_time()))
        if message.kind == "state":
            state = wire.parse(message.kind, message.body, sender="peer")
            assert isinstance(state, wire.State)
            slot.reports += 1
            if slot.staged and self._reshard is not None:
                self._reshard.on_state(slot, state)
            else:
                self._on_state(slot, state)
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
            self._register(peer, incoming.message, role)
            return
        if kind == "request":
            # Gateway commands: operators only, answered from a task (command_requests.py).
            if self._tg is not None and self._budget.allow(
                    peer, anyio.current_time(), anonymous=role is None):
                self._requests.handle(control, self._tg, incoming)
            return
        if kind == "operation":
            # Drains and restarts: operators only (cluster/rolling_requests.py).
            if self._tg is not None and self._budget.allow(
                    peer, anyio.current_time(), anonymous=role is None):
                self._operations.handle(control, self._tg, incoming)
            return
        if kind != "status":
            # a worker we already replaced (told to stop), or a stranger (ignored)
            self._execute(self._core.handle(Stray(peer, kind, role)))
        elif self._budget.allow(peer, anyio.current_time(), anonymous=role is None):
            self._answer_status(control, peer, role)

    def _answer_status(self, control: ControlServer, peer: bytes, role: Role | None) -> None:
        # In full to operators (a CURVE operator key, or this user on the private ipc
        # endpoint); states and counts only to anyone else (cluster/status_report.py).
        # Built in a thread from a copy (cluster/status_answers.py): not on this loop.
        # A stop answers too (an operator watching its drain asks): the control loop runs
        # in the task group, so it is there whenever a request is read.
        assert self._answers_tg is not None
        self._status_answers.answer(self._answers_tg, control, peer,
                                    full=role == Role.OPERATOR)

    def _status_snapshot(self, full: bool) -> StatusSnapshot:
        workers = [replace(slot, shard_ids=list(slot.shard_ids)) for slot in self.slots]
        if not full:
            return StatusSnapshot(self.status_rows(), workers, time.time(), redacted=True)
        return StatusSnapshot(self.status_rows(), workers, time.time(),
                              limiter=self._limiter_status(), operation=self.operation)

    def _register(self, peer: bytes, message: ControlMessage, role: Role | None) -> None:
        for slot in self.slots:  # the slot it may take resumes from the bus's latest
            if slot.peer is None:
                for shard_id in slot.shard_ids:
                    self._observe_bus(shard_id)
        self._execute(self._core.handle(
            WorkerRegistered(peer, message.body, role, anyio.current_time())))

    def _on_state(self, slot: WorkerSlot, state: wire.State) -> None:
        owned = set(slot.shard_ids)  # a list: a report of 2,500 shards searched it 2,500 times
        for item in state.shards:
            shard_id = item.id
            status = self._status.get(shard_id)
            if status is None or shard_id not in owned:
                continue
            status.observe(item, slot.pid, self._resume_allowed)
            self.event_totals.observe(shard_id, slot.pid, item.counts)
            if not item.session_id and status.state == "ready":
                status.session_id = status.resume_gateway_url = None
            error = item.error
            if error is not None:
                status.error = str(error.get("message"))
                # A fatal close ended the session too (the shard forgot it): never save it.
                status.session_id = status.resume_gateway_url = None
                self._core.handle(ShardFailed(shard_id))
                if not resharding.on_sharding_required(self, error):
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
                "rate": self._budget.refused + self._status_answers.dropped,
                "registration": self.refused_registrations,
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

    async def drain_worker(self, index: int, *, ready_timeout: float = READY_TIMEOUT
                           ) -> dict[str, Any]:
        """Hand worker ``index``'s shards to a fresh process: RESUME, no IDENTIFY, nothing
        lost (cluster/rolling.py).  Its final progress; raises
        :class:`~shardctl.cluster.rolling.OperationRefusedError` if it cannot start and
        :class:`~shardctl.cluster.rolling.OperationFailedError` if it did not complete."""
        self._refuse_during_reshard()
        return await self._rolling.drain(index, ready_timeout=ready_timeout)

    async def restart_workers(self, *, rolling: bool = True,
                              ready_timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Replace every local worker's process the same way, one at a time (``rolling``)
        or all at once, e.g. to load new code."""
        self._refuse_during_reshard()
        return await self._rolling.restart(rolling=rolling, ready_timeout=ready_timeout)

    @property
    def operation(self) -> dict[str, Any] | None:
        """The running or last drain/restart's or reshard's progress (None: none yet)."""
        return resharding.latest_operation(self)

    async def wait_operation_changed(self) -> None:
        await self._rolling.wait_changed()

    def check_operation(self, name: str, args: Mapping[str, Any]) -> None:
        """Raise OperationRefusedError if ``name`` could not start now (no side effects)."""
        self._refuse_during_reshard()
        if name == "drain":
            self._rolling.check_drain(args.get("worker"))
        else:
            self._rolling.check_restart()

    def _refuse_during_reshard(self) -> None:
        # A reshard moves every slot; a handover in the middle of it would race its switch.
        if self._reshard is not None:
            raise OperationRefusedError("a reshard is in progress; drain or restart workers "
                                        "once it is done")

    def _stop_worker(self, slot: WorkerSlot) -> None:
        if self._control is not None and slot.peer is not None:
            self._control.send(slot.peer, wire.Stop(RESUMABLE_CLOSE))

    def status(self) -> list[ShardStatus]:
        """Every shard's last reported state, latency, seq, worker pid and guild count."""
        return [replace(s) for s in sorted(self._status.values(), key=lambda s: s.id)]

    def status_rows(self, *names: str) -> list[tuple[Any, ...]]:
        """:meth:`status` as plain tuples, in shard order: ``(id, *names)`` fields, or every
        field in order when no name is given (``ShardStatus(*row)`` rebuilds one).

        A copy at a sixth of :meth:`status`'s cost or less (10,000 shards: 1-3 ms), taken
        on the loop so that ``/metrics`` and ``status`` answers are built from it in a
        thread.  Rows of plain values leave the garbage collector nothing to track (it
        untracks such tuples), where 10,000 live records would hasten a full collection,
        which stops every thread.
        """
        getter = attrgetter("id", *names) if names else _STATUS_FIELDS
        return sorted(map(getter, self._status.values()))

    async def wait_until(self, predicate: Callable[[list[ShardStatus]], bool]) -> None:
        """Wait until ``predicate(status())`` holds (re-checked on every state report)."""
        await self._wait_for(lambda: predicate(self.status()))

    async def wait_subscribed(self, prefix: bytes = b"", *, batched: bool = False) -> None:
        """Return once a consumer holds this subscription (b"" = everything; ``batched``:
        a consumer on events-batch)."""
        assert self._forwarder is not None
        await self._forwarder.wait_subscribed(prefix, batched=batched)

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

    async def reshard(self, shards: resharding.Target = "auto") -> resharding.ReshardResult:
        """Move the cluster to ``shards`` shards ("auto": Discord's recommendation) without
        a gap: a new set starts beside the old one, the bus switches once every new shard
        is READY, the old sessions close (cluster/reshard.py, README "Resharding").

        Raises :class:`~shardctl.cluster.reshard.ReshardError` when refused or abandoned
        (the old set keeps serving then).
        """
        return await resharding.reshard(self, shards)

    def shard_of(self, guild_id: int | str) -> int:
        """The shard that owns a guild: ``(guild_id >> 22) % shard_count``."""
        return shard_for(guild_id, self.shard_count)

    async def _command(self, shard_id: int, name: str, args: dict[str, Any], *,
                       wait: float = COMMAND_TIMEOUT) -> CommandReply:
        status = self._status.get(shard_id)
        if status is None:
            return CommandReply(shard_id, False, f"shard {shard_id} is not run by this cluster")
        slot = next(s for s in self.slots if s.index == status.worker)
        return await self._commands.send(self._control, slot.peer,
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
