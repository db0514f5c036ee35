"""The sandbox as several processes behind one address, for clusters of thousands of shards.

One Python process cannot hold 10,000 gateway sockets and still answer every heartbeat on
time, and Discord is a fleet anyway.  Each member is a whole :class:`Sandbox` (REST and
gateway) bound with ``SO_REUSEPORT`` on one shared port, so the kernel spreads new
connections over the members.  Sessions live in the member that created them, so a member
also listens on a port of its own (same host: a client sends its token only to the
gateway's host) and names it in ``resume_gateway_url``: a RESUME reaches the process holding
its session, as Discord's resume URL names the server that holds it.

Bot-wide rules stay bot-wide: each member reports every accepted IDENTIFY (shard and arrival
time, one monotonic clock for the machine) and :class:`Fleet` checks the buckets' pace and the
session budget over all members (:meth:`Fleet.pace_violations`); every per-session rule is
checked by the member holding the session, as in one sandbox.

``python -m shardctl.sandbox.fleet --index K --port P --config JSON`` runs one member; it
prints ``{"port", "pid"}`` once listening, then a :class:`MemberReport` line every
``--report-every`` seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from shardctl.sandbox.config import SandboxConfig
from shardctl.sandbox.record import Record

#: Sockets kinds a member counts (record kinds, see :mod:`shardctl.sandbox.record`).
COUNTED: Final = ("identify", "resume", "resumed", "ready", "client_close", "server_close",
                  "drop", "heartbeat", "violation")
HOST: Final = "127.0.0.1"


@dataclass(slots=True)
class MemberReport:
    """What one member saw so far (cumulative counts, latest heartbeat figures)."""

    index: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: Beats later than the sandbox's tolerance allows (interval x (1 + tolerance)).
    late_heartbeats: int = 0
    #: The longest gap between two beats of one socket, in heartbeat intervals.
    max_gap: float = 0.0
    #: Live sessions that got their READY.
    sessions: int = 0
    #: IDENTIFYs accepted since the previous report: ``[shard_id, arrival]``.
    identifies: list[list[float]] = field(default_factory=list)


class Tally:
    """A :attr:`Recorder.sink` counting records as they come, not by scanning the log."""

    def __init__(self, index: int, config: SandboxConfig) -> None:
        self.report = MemberReport(index, dict.fromkeys(COUNTED, 0))
        self._interval = config.heartbeat_interval
        self._late = config.heartbeat_interval * (1.0 + config.heartbeat_tolerance)

    def __call__(self, rec: Record) -> None:
        kind = rec.kind
        if kind not in self.report.counts:
            return
        self.report.counts[kind] += 1
        if kind == "heartbeat" and not rec.get("first", False):
            gap = float(rec.get("gap", 0.0))
            self.report.late_heartbeats += gap > self._late
            self.report.max_gap = max(self.report.max_gap, gap / self._interval)
        elif kind == "identify" and rec.shard_id is not None:
            self.report.identifies.append([rec.shard_id, rec.at])

    def take(self, sessions: int) -> dict[str, Any]:
        """The report as JSON, and start the next batch of IDENTIFYs."""
        self.report.sessions = sessions
        out = dataclasses.asdict(self.report)
        self.report.identifies = []
        return out


@contextmanager
def _port_claim(port: int) -> Iterator[int]:
    """``port``, or a free one held (``SO_REUSEPORT``) until the sandbox has bound it too."""
    if port:
        yield port
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((HOST, 0))
        yield int(sock.getsockname()[1])


async def serve_member(config: SandboxConfig, index: int, port: int,
                       report_every: float) -> None:
    """Run member ``index`` on ``port`` (0: pick one; the first member does) until cancelled."""
    from shardctl.sandbox.server import Sandbox

    tally = Tally(index, config)
    # The first member takes a free port the others can share (an ephemeral port is chosen
    # by the kernel without SO_REUSEPORT semantics otherwise: hold one that has it).
    with _port_claim(port) as claimed:
        async with Sandbox(config, host=HOST, port=claimed, reuse_port=True,
                           resume_port=0) as sb:
            sb.recorder.sink = tally
            sb.order_checked_elsewhere = True
            print(json.dumps({"port": sb.port, "resume_port": sb.resume_port,
                          "pid": os.getpid()}), flush=True)
            while True:
                await anyio.sleep(report_every)
                live = sum(1 for s in sb.sessions.live(sb.now()) if s.started)
                print(json.dumps(tally.take(live)), flush=True)


# -- the coordinator --------------------------------------------------------------------------

class Member:
    """One member process as the coordinator sees it: its latest report."""

    def __init__(self, index: int, process: anyio.abc.Process) -> None:
        self.index = index
        #: where this member's sessions RESUME (its ``resume_gateway_url``)
        self.resume_url = ""
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)
        self.latest = MemberReport(index)
        self.identifies: list[tuple[int, float]] = []
        self.updated = anyio.Event()

    async def line(self) -> dict[str, Any]:
        raw = await self._out.receive_until(b"\n", 1 << 26)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def follow(self) -> None:
        while True:
            try:
                got = await self.line()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                return
            self.identifies += [(int(s), float(at)) for s, at in got.pop("identifies")]
            self.latest = MemberReport(**got)
            self.updated.set()
            self.updated = anyio.Event()


class Fleet:
    """Members started by :func:`fleet`: one address, bot-wide checks over all of them."""

    def __init__(self, config: SandboxConfig, port: int, members: list[Member]) -> None:
        self.config = config
        self.port = port
        self.members = members

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    @property
    def pids(self) -> list[int]:
        return [m.process.pid for m in self.members]

    async def fresh(self) -> None:
        """Wait until every member reported once more (counts as of now)."""
        for member in self.members:
            await member.updated.wait()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for member in self.members:
            for kind, n in member.latest.counts.items():
                out[kind] = out.get(kind, 0) + n
        out["late_heartbeats"] = sum(m.latest.late_heartbeats for m in self.members)
        out["sessions"] = sum(m.latest.sessions for m in self.members)
        return out

    @property
    def max_gap(self) -> float:
        return max((m.latest.max_gap for m in self.members), default=0.0)

    def pace_violations(self) -> list[str]:
        """Bot-wide rules no single member can see (:func:`pace_violations`)."""
        return pace_violations(self.config, self.identifies)

    @property
    def identifies(self) -> list[tuple[int, float]]:
        return [x for m in self.members for x in m.identifies]


def pace_violations(config: SandboxConfig, identifies: list[tuple[int, float]]) -> list[str]:
    """Two IDENTIFYs of one bucket closer than ``identify_interval`` (each on its own member,
    so neither member saw both), and more IDENTIFYs than the session budget."""
    stamps = sorted((shard % config.max_concurrency, at) for shard, at in identifies)
    problems = [f"bucket {b}: IDENTIFYs {later - at:.3f} s apart"
                for (b, at), (b2, later) in itertools.pairwise(stamps)
                if b == b2 and later - at < config.identify_interval]
    if len(stamps) > config.session_start_total:
        problems.append(f"{len(stamps)} IDENTIFYs > session_start_limit.total "
                        f"{config.session_start_total}")
    return problems


def order_warnings(config: SandboxConfig, identifies: list[tuple[int, float]]) -> int:
    """Shards whose first IDENTIFY came before some shard of an earlier round (§9, only ever
    logged), over all members: the check one sandbox does as IDENTIFYs arrive."""
    mc = config.max_concurrency
    first: dict[int, float] = {}
    for shard, at in sorted(identifies, key=lambda x: x[1]):
        first.setdefault(shard, at)
    latest = -math.inf  # the latest first IDENTIFY among shards of earlier rounds
    out = 0
    ordered = sorted(first)
    i = 0
    for shard in ordered:
        start = shard - shard % mc
        while ordered[i] < start:
            latest = max(latest, first[ordered[i]])
            i += 1
        out += latest > first[shard]
    return out


def config_json(config: SandboxConfig) -> str:
    """A config for a member's command line (scheduled faults are not carried over)."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in ("faults", "resume_host")}
    return json.dumps(fields)


async def _start(config: SandboxConfig, index: int, port: int, report_every: float
                 ) -> tuple[Member, int]:
    process = await anyio.open_process(
        [sys.executable, "-m", "shardctl.sandbox.fleet", "--index", str(index),
         "--port", str(port), "--config", config_json(config),
         "--report-every", str(report_every)],
        stdin=subprocess.DEVNULL, stderr=None)
    member = Member(index, process)
    try:
        with anyio.fail_after(30.0):
            hello = await member.line()
    except BaseException:
        await _stop(member)
        raise
    member.resume_url = f"ws://{HOST}:{hello['resume_port']}{config.resume_path}"
    return member, int(hello["port"])


async def _stop(member: Member) -> None:
    process = member.process
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(10.0):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@asynccontextmanager
async def fleet(config: SandboxConfig, processes: int, *,
                report_every: float = 1.0) -> AsyncIterator[Fleet]:
    """Start ``processes`` members on one port; SIGTERM (then SIGKILL) them on the way out."""
    if processes < 1:
        raise ValueError("a fleet has at least one process")
    members: list[Member] = []
    try:
        first, port = await _start(config, 0, 0, report_every)
        members.append(first)
        for index in range(1, processes):
            members.append((await _start(config, index, port, report_every))[0])
        async with anyio.create_task_group() as tg:
            for member in members:
                tg.start_soon(member.follow)
            yield Fleet(config, port, members)
            tg.cancel_scope.cancel()
    finally:
        for member in members:
            await _stop(member)


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shardctl.sandbox.fleet",
                                description="run one member of a sandbox fleet")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config", required=True, help="SandboxConfig fields as a JSON object")
    p.add_argument("--report-every", type=float, default=1.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    config = SandboxConfig(**json.loads(args.config))
    if not (math.isfinite(args.report_every) and args.report_every > 0):
        raise SystemExit("--report-every must be a positive number of seconds")

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_member, config, args.index, args.port, args.report_every)
                async for _ in signals:
                    break
                tg.cancel_scope.cancel()

    anyio.run(run, backend="asyncio")


if __name__ == "__main__":
    main()
