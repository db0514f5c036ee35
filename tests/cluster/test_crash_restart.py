"""A supervisor killed with SIGKILL, and two instances sharing a host: sessions survive.

Real processes against the sandbox: `shardctl run` is killed mid-stream and started again;
every shard must RESUME (no IDENTIFY), the old workers must be gone before the new ones
connect (no session "resumed elsewhere"), every dispatch must reach the consumer, and what
reaches it twice must be flagged ``replayed``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.abc
import orjson
import pytest
from clusterkit import (
    TOKEN,
    accepted_identifies,
    env_with_runtime,
    push_messages,
    resumes,
    short_dir,
    terminate,
)

from shardctl.cluster.orphans import start_time
from shardctl.cluster.sessions import WorkerMark, save
from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.consumer import Consumer
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def sandbox_config(shards: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.2,
                         heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)


def run_args(sb: Sandbox, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
            "--api-url", sb.api_url, "--processes", "2", "--identify-interval", "0.2", *extra]


async def start_run(args: list[str], env: dict[str, str]) -> anyio.abc.Process:
    """Output to nowhere: an unread pipe fills up and blocks the process's logging."""
    return await anyio.open_process(args, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)


class Seen:
    """MESSAGE_CREATE (shard, seq) as a Consumer hands them out, with the replay flag."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, bool]] = []
        self._changed = anyio.Event()

    async def read(self, bus: Consumer) -> None:
        async for event in bus:
            if event.type == "MESSAGE_CREATE" and event.seq is not None:
                self.events.append((event.shard, event.seq, event.replayed))
                self._changed.set()
                self._changed = anyio.Event()

    async def wait_for_count(self, count: int) -> None:
        while len(self.events) < count:
            await self._changed.wait()

    async def wait_for_all(self, sent: set[tuple[int, int]]) -> None:
        while not sent <= {(shard, seq) for shard, seq, _ in self.events}:
            await self._changed.wait()


async def stream(sb: Sandbox, sent: set[tuple[int, int]], stop: anyio.Event) -> None:
    """MESSAGE_CREATE to every shard, a few hundred a second, until ``stop``."""
    while not stop.is_set():
        sent |= flat(await push_messages(sb, [0, 1, 2, 3], 5))
        await anyio.sleep(0.02)  # the pace of the stream, not a synchronisation


def sessions_up(sb: Sandbox) -> int:
    """Shards that came up so far, identified (READY) or resumed (RESUMED)."""
    return len(sb.records("ready")) + resumes(sb)


def flat(sent: dict[int, list[int]]) -> set[tuple[int, int]]:
    return {(shard, seq) for shard, seqs in sent.items() for seq in seqs}


async def checkpointed(path: Path, sessions: int) -> None:
    """Another process writes the file: nothing to await but the file itself."""
    while True:
        try:
            body = orjson.loads(await anyio.Path(path).read_bytes())
            if len(body["sessions"]) >= sessions:
                return
        except (OSError, orjson.JSONDecodeError, KeyError):
            pass
        await anyio.sleep(0.05)


async def test_a_sigkilled_supervisor_restarts_resuming_every_shard_losing_nothing() -> None:
    with short_dir() as run_dir:
        events = f"ipc://{run_dir}/ev.sock"
        state = run_dir / "state.json"
        async with Sandbox(sandbox_config(4)) as sb, Consumer(events) as bus, \
                anyio.create_task_group() as tg:
            seen = Seen()
            tg.start_soon(seen.read, bus)
            args = run_args(sb, "--events-endpoint", events, "--state-file", str(state))
            env = env_with_runtime(run_dir)
            first = await start_run(args, env)
            second: anyio.abc.Process | None = None
            try:
                with anyio.fail_after(30):
                    await sb.wait_for(lambda: len(sb.records("ready")) == 4, timeout=30)
                    sent = flat(await push_messages(sb, [0, 1, 2, 3], 20))
                    await seen.wait_for_all(sent)
                    await checkpointed(state, 4)
                # mid-stream: a stream flows across the kill and the restart
                stop_stream = anyio.Event()
                tg.start_soon(stream, sb, sent, stop_stream)
                with anyio.fail_after(30):
                    await seen.wait_for_count(len(seen.events) + 40)
                killed_at = anyio.current_time()
                first.send_signal(signal.SIGKILL)
                await first.wait()
                with anyio.fail_after(30):  # the orphaned workers close their sessions
                    await sb.wait_for(lambda: len(sb.records("client_close")) >= 4, timeout=30)
                close_lag = max(r.at for r in sb.records("client_close")) - killed_at
                second = await start_run(args, env)
                with anyio.fail_after(40):
                    await sb.wait_for(lambda: sessions_up(sb) == 8, timeout=40)
                    await seen.wait_for_count(len(seen.events) + 40)
                    stop_stream.set()
                    await seen.wait_for_all(sent)
            finally:
                await terminate(first)
                if second is not None:
                    await terminate(second)
                tg.cancel_scope.cancel()
        assert accepted_identifies(sb) == 4, "the restart identified instead of resuming"
        assert resumes(sb) == 4
        # PR_SET_PDEATHSIG, not the control channel's 10 s of silence
        assert close_lag < 5.0, f"the workers held their sessions {close_lag:.1f} s"
        moved = [r for r in sb.records("server_close")
                 if "resumed elsewhere" in str(r.details.get("reason"))]
        assert not moved, "a new worker resumed a session an old worker still held"
        assert not sb.violations
        closes = [r.details.get("code") for r in sb.records("client_close")]
        assert closes and not {1000, 1001} & set(closes), "a session was ended, not left"
        first_seen: set[tuple[int, int]] = set()
        for shard, seq, replayed in seen.events:
            assert replayed == ((shard, seq) in first_seen), (shard, seq, replayed)
            first_seen.add((shard, seq))


@pytest.mark.parametrize("stop_order", [(0, 1), (1, 0)])
async def test_two_instances_with_disjoint_shard_ids_both_resume_everything(
        stop_order: tuple[int, int]) -> None:
    with short_dir() as run_dir:
        states = run_dir / "xdg"
        async with Sandbox(sandbox_config(8)) as sb:
            def start(i: int, ids: str) -> tuple[list[str], dict[str, str]]:
                env = {**env_with_runtime(run_dir / f"r{i}"), "XDG_STATE_HOME": str(states)}
                return run_args(sb, "--shard-ids", ids), env

            specs = [start(0, "0-3"), start(1, "4-7")]
            procs: list[anyio.abc.Process] = []
            try:
                for n, (args, env) in enumerate(specs, 1):
                    procs.append(await start_run(args, env))
                    with anyio.fail_after(30):
                        await sb.wait_for(lambda n=n: len(sb.records("ready")) == 4 * n,
                                          timeout=30)
                for i in stop_order:
                    procs[i].send_signal(signal.SIGTERM)
                    with anyio.fail_after(30):
                        assert await procs[i].wait() == 0
                for args, env in specs:
                    procs.append(await start_run(args, env))
                with anyio.fail_after(30):
                    await sb.wait_for(lambda: sessions_up(sb) == 16, timeout=30)
            finally:
                for process in procs:
                    await terminate(process)
        assert accepted_identifies(sb) == 8, "one instance's sessions were lost"
        files = sorted(p.name for p in (states / "shardctl").glob("state-*.json"))
        assert len(files) == 2, files
        assert not sb.violations


class LogLine(logging.Handler):
    """Sets ``seen`` when a record containing ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_a_start_waits_until_the_crashed_runs_workers_are_gone() -> None:
    # Off Linux, or a worker stuck in a long close: the parent-death signal did not end it.
    # A process that looks like a worker and holds shard 1 until its stdin closes.
    fake = await anyio.open_process(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "shardctl.worker"],
        stdin=subprocess.PIPE)
    waiting = LogLine("waiting for 1 workers of a previous run")
    logger = logging.getLogger("shardctl.cluster.orphans")
    logger.addHandler(waiting)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        with short_dir() as run_dir:
            state = run_dir / "state.json"
            started = start_time(fake.pid)
            assert started is not None
            save(state, TOKEN, 2, {}, shard_ids=[0, 1],
                 workers=[WorkerMark(fake.pid, started, (1,))])
            async with Sandbox(sandbox_config(2)) as sb, anyio.create_task_group() as tg:
                sup = Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                                 identify_interval=0.2, runtime_dir=run_dir, state_file=state)

                async def run() -> None:
                    async with sup:
                        await sb.wait_for(lambda: len(sb.records("ready")) == 2, timeout=30)

                tg.start_soon(run)
                with anyio.fail_after(20):
                    await waiting.seen.wait()
                assert not sb.records("connect"), "a worker connected while the old one lived"
                assert fake.stdin is not None
                await fake.stdin.aclose()  # the old worker leaves
                with anyio.fail_after(30):
                    await sb.wait_for(lambda: len(sb.records("ready")) == 2, timeout=30)
    finally:
        logger.removeHandler(waiting)
        logger.setLevel(level)
        if fake.returncode is None:
            fake.kill()
        await fake.wait()
