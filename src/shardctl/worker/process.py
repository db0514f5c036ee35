"""The worker process: runs the shards the supervisor assigns, in one anyio event loop.

Three channels connect it to the supervisor (DESIGN.md §3): control (register, assignment,
liveness beats both ways, state reports, commands), the limiter (one client shared by every
shard here), and the event bus (every dispatch and lifecycle event, batched).  A worker keeps
nothing durable: if it dies, the supervisor respawns it with the sessions of its shards and
they RESUME from the last sequence number the supervisor forwarded.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import anyio
import anyio.abc

from shardctl.errors import GatewayFatalError, ProtocolError
from shardctl.gateway.lifecycle import BUS_TYPE
from shardctl.gateway.machine import Emit
from shardctl.gateway.sharding import shard_for
from shardctl.ipc.assignment import Assignment
from shardctl.ipc.bus import EventPublisher
from shardctl.ipc.control import ControlClient, ControlMessage, MessageTooLargeError
from shardctl.ipc.control_messages import (
    Assign,
    Beat,
    Rebase,
    Register,
    Reply,
    ReportNow,
    ShardReport,
    State,
    Stop,
    parse,
)
from shardctl.ipc.events import lifecycle_payload, session_tag
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.security import CurveClient
from shardctl.ipc.watermarks import Stamper
from shardctl.worker.parent import parent_gone
from shardctl.worker.shard import CommandResult, Shard
from shardctl.worker.stopping import close_in_groups

log = logging.getLogger(__name__)

#: How long a fresh worker waits for its assignment before giving up.
ASSIGN_TIMEOUT: Final = 30.0
#: On a stop, how long shards get to close and events to drain.
STOP_TIMEOUT: Final = 10.0
#: Shards closing at once on a stop (worker/stopping.py says why not all): a group this
#: size keeps a loop pass to a few milliseconds and closes 2,500 shards in under a second
#: on loopback.
STOP_GROUP: Final = 32
#: Close code for a stop: not 1000/1001, so every session stays resumable (protocol §7).
RESUMABLE_CLOSE: Final = 4009

#: The shortest gap between two state reports.  Every lifecycle event asks for one, and a
#: report holds every shard of the worker: 2,500 shards starting made ~480 reports of up to
#: 2,500 shards, which kept the supervisor at full CPU until the last READY (29 s for one
#: worker of 2,500 shards; 14.5 s with this gap, in ~90 reports).
REPORT_GAP: Final = 0.1

EXIT_OK: Final = 0
EXIT_SUPERVISOR_LOST: Final = 3
EXIT_BAD_ASSIGNMENT: Final = 4


class _ShardInfo:
    """What the worker tracks per shard beyond the Shard itself: guilds, failures, and
    cumulative event counts by bus type (reported with each state report; the supervisor
    turns them into rates and metrics)."""

    __slots__ = ("counts", "error", "guilds", "last_event_ns", "session", "session_id")

    def __init__(self) -> None:
        self.guilds: set[str] = set()
        self.error: dict[str, Any] | None = None
        self.last_event_ns: int | None = None
        self.counts: dict[str, int] = {}
        #: the shard's session id when last seen, and its bus session tag
        self.session_id: str | None = None
        self.session = 0


class Worker:
    def __init__(self, control_endpoint: str, index: int | None, *,
                 clock: Callable[[], float] = time.monotonic,
                 curve: CurveClient | None = None, secret: str | None = None,
                 parent: int | None = None, own_process: bool = False) -> None:
        # ``curve``: client keys for a supervisor that runs CURVE; every channel uses them.
        # ``secret``: the per-spawn secret of a worker the supervisor spawned (its stdin).
        # ``own_process``: the process ends with this worker, so its stop may change what is
        # process-wide (the garbage collector, see _stop_shards).
        self._curve = curve
        self._secret = secret
        self._limiter: LimiterClient | None = None
        self._control = ControlClient(control_endpoint, curve=curve)
        self._index = index
        self._clock = clock
        self._shards: dict[int, Shard] = {}
        self._info: dict[int, _ShardInfo] = {}
        self._publisher: EventPublisher | None = None
        self._report_now = anyio.Event()
        self._last_heard = clock()
        self._exit_code = EXIT_OK
        self._own_process = own_process
        #: set when the stop begins: the periodic state reports end (a final one follows)
        self._stopping = False
        #: the supervisor that spawned us (None: a remote worker); its death means SIGTERM
        self._parent = parent

    async def run(self) -> int:
        try:
            await self._control.send(self._registration())
            try:
                assignment = await self._await_assignment()
            except (TimeoutError, ProtocolError) as exc:
                log.error("worker %s: no usable assignment: %s", self._index, exc)
                return EXIT_BAD_ASSIGNMENT
            await self._serve(assignment)
            return self._exit_code
        finally:
            self._control.close()

    def _registration(self) -> Register:
        if self._index is None:  # a remote worker: its CURVE key is its proof
            return Register(None, pid=os.getpid())
        return Register(self._index, self._secret)

    async def _await_assignment(self) -> Assignment:
        with anyio.fail_after(ASSIGN_TIMEOUT):
            while True:
                message = await self._control.receive()
                if message.kind == "assign":
                    typed = parse(message.kind, message.body, sender="supervisor")
                    assert isinstance(typed, Assign)
                    return typed.assignment

    async def _serve(self, assignment: Assignment) -> None:
        publisher = self._publisher = EventPublisher(
            assignment.events, curve=self._curve, worker=assignment.worker,
            publish_key=assignment.publish_key, max_delay=assignment.publish_window,
            stamper=None if assignment.epoch is None else Stamper(
                assignment.epoch, dict(assignment.counters), _sessions(assignment)))
        async with anyio.create_task_group() as tg:
            await tg.start(publisher.run)
            async with LimiterClient(assignment.limiter, curve=self._curve) as limiter, \
                    anyio.create_task_group() as shards_tg:
                self._limiter = limiter
                self._start_shards(assignment, shards_tg)
                tg.start_soon(self._beat, assignment)
                tg.start_soon(self._report_loop, assignment.beat_interval)
                code = await self._until_stopped(shards_tg, assignment)
                await self._stop_shards(code, shards_tg)
            if self._exit_code == EXIT_SUPERVISOR_LOST:
                # Nobody reads the bus or the report: the sessions are closed, leave now (the
                # next supervisor waits for us; what was not forwarded is replayed).
                tg.cancel_scope.cancel()
                return
            # Every shard has closed: publish what is left, report the final seqs, leave.
            with anyio.move_on_after(STOP_TIMEOUT):
                await publisher.flush()
            # A DEALER with no peer (the supervisor gone) blocks on send: bound the goodbye.
            with anyio.move_on_after(STOP_TIMEOUT):
                await self._report()
            tg.cancel_scope.cancel()

    def _start_shards(self, assignment: Assignment, shards_tg: anyio.abc.TaskGroup) -> None:
        """Start every shard of ``assignment`` not running here yet (RESUMEs where it can)."""
        for spec in assignment.shards:
            if spec.id in self._shards:
                continue
            shard = Shard(
                id=spec.id, token=assignment.token,
                total_shard_count=assignment.shard_count,
                gateway=assignment.gateway_url, output=None,
                intents=assignment.intents,
                transport_compression=assignment.compression or False,
                large_threshold=assignment.large_threshold,
                presence=assignment.presence, session_limiter=self._limiter,
                raw_output=self._on_event)
            if spec.session_id and spec.resume_gateway_url:
                shard.restore_session(spec.session_id, spec.resume_gateway_url, spec.seq)
            self._shards[spec.id] = shard
            self._info[spec.id] = _ShardInfo()
            shards_tg.start_soon(self._run_shard, shard)

    async def _run_shard(self, shard: Shard) -> None:
        try:
            await shard.connect()
        except GatewayFatalError as exc:
            # Fatal closes (4004, 4010-4014) stop this shard and tell the supervisor, which
            # stops the cluster with the same error: never a reconnect loop.
            self._info[shard.id].error = {"kind": type(exc).__name__, "message": str(exc),
                                          "code": exc.code}
            self._report_now.set()

    def _on_event(self, shard: Shard, emit: Emit) -> Awaitable[None] | None:
        publisher = self._publisher
        assert publisher is not None
        frame = emit.frame
        info = self._info[shard.id]
        # One clock read per event: the bus header's receive time is also the "last event".
        info.last_event_ns = now_ns = time.time_ns()
        counts = info.counts
        if frame is not None:
            counts[emit.name] = counts.get(emit.name, 0) + 1
            if shard.session_id is not info.session_id:  # a READY (or a restored session)
                info.session_id = shard.session_id
                info.session = session_tag(info.session_id)
            publisher.publish(shard.id, emit.name, frame.s, frame.raw, received_at_ns=now_ns,
                              session=info.session)
            if emit.name in _GUILD_EVENTS:
                _track_guilds(info.guilds, emit.name, emit.data)
            return publisher.pressure()
        name = BUS_TYPE.get(emit.name, emit.name)
        counts[name] = counts.get(name, 0) + 1
        publisher.publish(shard.id, name, None, lifecycle_payload(emit.data),
                          received_at_ns=now_ns)
        self._report_now.set()
        return None

    async def _until_stopped(self, shards_tg: anyio.abc.TaskGroup, assignment: Assignment
                             ) -> int:
        """The close code to stop with: the supervisor's word, or ours on SIGTERM."""
        code = RESUMABLE_CLOSE
        async with anyio.create_task_group() as tg:
            async def on_sigterm() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        if parent_gone(self._parent):
                            log.warning("worker %s: the supervisor died; closing shards "
                                        "resumably", self._index)
                            self._exit_code = EXIT_SUPERVISOR_LOST
                        else:
                            log.info("worker %s: SIGTERM; closing shards resumably",
                                     self._index)
                        tg.cancel_scope.cancel()
                        return

            async def control() -> None:
                nonlocal code
                code = await self._control_loop(shards_tg, assignment)
                tg.cancel_scope.cancel()

            tg.start_soon(on_sigterm)
            tg.start_soon(control)
        return code

    async def _control_loop(self, shards_tg: anyio.abc.TaskGroup, assignment: Assignment
                            ) -> int:
        """Serve the supervisor until it says stop (its close code) or goes silent."""
        while True:
            with anyio.move_on_after(assignment.supervisor_timeout) as scope:
                message = await self._control.receive()
            if scope.cancelled_caught:
                log.error("worker %s: nothing from the supervisor for %.0f s; stopping",
                          self._index, assignment.supervisor_timeout)
                self._exit_code = EXIT_SUPERVISOR_LOST
                return RESUMABLE_CLOSE
            self._last_heard = self._clock()
            if message.kind == "command":
                # its body is validated where it runs: a bad one is answered, not dropped
                shards_tg.start_soon(self._command, message)
                continue
            try:
                typed = parse(message.kind, message.body, sender="supervisor")
            except ProtocolError as exc:
                log.error("worker %s: ignored a malformed message: %s", self._index, exc)
                continue
            if isinstance(typed, ReportNow):
                self._report_now.set()
                continue
            if isinstance(typed, Rebase):
                if self._publisher is not None:
                    self._publisher.rebase(typed.generation, dict(typed.deltas))
                continue
            if isinstance(typed, Stop):
                return RESUMABLE_CLOSE if typed.code is None else typed.code
            if isinstance(typed, Assign):
                # More shards: a lost remote worker's, to RESUME here (cluster/remote.py).
                more = typed.assignment
                # Its key before its shards: their first events must carry it.
                if self._publisher is not None:
                    self._publisher.set_credential(more.worker, more.publish_key)
                    if self._publisher.stamper is not None:
                        self._publisher.stamper.adopt(dict(more.counters), _sessions(more))
                self._start_shards(more, shards_tg)

    async def _stop_shards(self, code: int, shards_tg: anyio.abc.TaskGroup) -> None:
        """Close every shard with ``code``, :data:`STOP_GROUP` at a time, so beats keep
        going out: the supervisor kills a worker whose beats stop, mid-stop too.  Whatever
        is still open after :data:`STOP_TIMEOUT` is cancelled (its socket closes with 4000,
        resumable as well)."""
        self._stopping = True
        self._report_now.set()  # the report loop ends; _serve reports once all are closed
        if self._own_process:
            # A full collection walks every shard's objects (0.3-0.4 s at 2,500 shards, in
            # one piece) for garbage the exit frees anyway: only what the stop allocates
            # is scanned from here on.
            gc.freeze()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(STOP_TIMEOUT) as deadline:
                await close_in_groups(self._shards.values(), "worker stopping", code,
                                      group=STOP_GROUP)
            if deadline.cancelled_caught:
                log.warning("worker %s: shards still open after %.0f s; cancelling them",
                            self._index, STOP_TIMEOUT)
                shards_tg.cancel_scope.cancel()

    async def _beat(self, assignment: Assignment) -> None:
        while True:
            await self._control.send(Beat())
            await anyio.sleep(assignment.beat_interval)

    async def _report_loop(self, interval: float) -> None:
        # During a stop every closing shard asks for a report, each one of every shard: they
        # would follow each other to the end, on both sides of the channel, for nothing.
        while not self._stopping:
            with anyio.move_on_after(interval):
                await self._report_now.wait()
            if self._stopping:
                return
            self._report_now = anyio.Event()
            await self._report()
            await anyio.sleep(REPORT_GAP)  # who asks meanwhile is in the next report

    async def _report(self) -> None:
        await self._control.send(State(tuple(
            self._shard_state(shard) for shard in self._shards.values()), os.getpid()))

    def _shard_state(self, shard: Shard) -> ShardReport:
        info = self._info[shard.id]
        return ShardReport(
            shard.id, "failed" if info.error else shard.state, shard.session_id,
            shard.resume_gateway_url, shard.seq, shard.latency, len(info.guilds),
            None if info.last_event_ns is None else info.last_event_ns / 1e9, info.error,
            info.counts)

    async def _command(self, message: ControlMessage) -> None:
        body = message.body
        result = await self._execute(body)
        reply = Reply(body.get("id"), result.ok, result.error, result.retry_after,
                      result.value)
        try:
            await self._control.send(reply)
        except MessageTooLargeError as exc:
            await self._control.send("reply", {"id": body.get("id"), "ok": False,
                                               "error": f"the reply is too large: {exc}"})

    async def _execute(self, body: dict[str, Any]) -> CommandResult:
        name, args = body.get("name"), body.get("args")
        shard_id = body.get("shard")
        if not isinstance(args, dict):
            return CommandResult(False, "command arguments must be an object")
        if shard_id is None and "guild_id" in args:
            shard_id = shard_for(args["guild_id"], next(iter(self._shards.values()))
                                 .total_shard_count)
        shard = self._shards.get(shard_id) if isinstance(shard_id, int) else None
        if shard is None:
            return CommandResult(False, f"shard {shard_id} does not run in this worker")
        method = _COMMANDS.get(name) if isinstance(name, str) else None
        if method is None:
            return CommandResult(False, f"unknown command {name!r}")
        try:
            result: CommandResult = await method(shard, **args)
        except TypeError as exc:
            return CommandResult(False, f"bad arguments for {name}: {exc}")
        return result


_COMMANDS: Final[dict[str, Callable[..., Any]]] = {
    "update_status": Shard.update_status,
    "update_voice": Shard.update_voice,
    "request_guild_members": Shard.request_guild_members,
    "fetch_guild_members": Shard.fetch_guild_members,
}


def _sessions(assignment: Assignment) -> list[tuple[int, int, int]]:
    """(shard, session tag, seq) of each session the assignment RESUMEs: the seq up to
    which a replay was forwarded already (the stamper drops it)."""
    return [(s.id, session_tag(s.session_id), s.seq) for s in assignment.shards
            if s.session_id is not None and s.seq is not None]


_GUILD_EVENTS: Final = frozenset({"READY", "GUILD_CREATE", "GUILD_DELETE"})


def _track_guilds(guilds: set[str], name: str, d: Any) -> None:
    """READY lists the shard's guilds; a GUILD_DELETE without ``unavailable`` removes one
    (an outage keeps it, protocol §13); GUILD_CREATE adds joins."""
    if not isinstance(d, dict):
        return
    if name == "READY":
        guilds.clear()
        guilds.update(str(g.get("id")) for g in d.get("guilds") or () if isinstance(g, dict))
    elif name == "GUILD_CREATE":
        guilds.add(str(d.get("id")))
    elif not d.get("unavailable"):
        guilds.discard(str(d.get("id")))


async def run_worker(control_endpoint: str, index: int | None,
                     curve: CurveClient | None = None, secret: str | None = None,
                     parent: int | None = None) -> int:
    """Entry point of ``python -m shardctl.worker`` and ``shardctl worker``: the exit code.

    ``index`` None: a worker from another host, which takes a free remote slot.  Else
    ``secret`` is the per-spawn secret the supervisor gave this process.
    """
    return await Worker(control_endpoint, index, curve=curve, secret=secret,
                        parent=parent, own_process=True).run()
