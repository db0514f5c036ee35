"""A graceful stop loses nothing a consumer can still read (issue 15, part 1).

Real processes against the sandbox: ``shardctl run`` gets SIGTERM while a consumer with
ZeroMQ's default 1,000-message receive queue (a plain pyzmq SUB, as any language's client)
is far behind; the supervisor starts again and RESUMEs.  The consumer stays connected across
the restart (ZeroMQ reconnects it) and must see every (shard, seq): exactly once when the
drain finished within its bound, at least once (replays) when it did not.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import orjson
import pytest
import zmq
from clusterkit import (
    TOKEN,
    blast,
    env_with_runtime,
    push_messages,
    resumes,
    short_dir,
    terminate,
)

from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import HEADER, Event
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHARDS = [0, 1, 2, 3]
TOPIC = b"MESSAGE_CREATE\0"


def sandbox_config() -> SandboxConfig:
    # Heartbeats far apart: a blast holds each socket's send lock while it is prepared.
    return SandboxConfig(shard_count=4, max_concurrency=4, identify_interval=0.2,
                         heartbeat_interval_ms=20_000, guilds_per_shard=2, session_ttl=120.0,
                         replay_buffer=20_000)


def run_args(sb: Sandbox, events: str, state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
            "--api-url", sb.api_url, "--processes", "2", "--identify-interval", "0.2",
            "--events-endpoint", events, "--state-file", str(state), *extra]


class PlainSub:
    """A pyzmq SUB socket with every option at ZeroMQ's default (RCVHWM 1,000), reading at
    most ``rate`` MESSAGE_CREATE a second while ``reading`` is set, in its own thread."""

    def __init__(self, endpoint: str, rate: float) -> None:
        self.endpoint = endpoint
        self.rate = rate
        self.seen: Counter[tuple[int, int]] = Counter()
        self.reading = threading.Event()
        self.reading.set()
        self._done = threading.Event()
        self._changed = anyio.Event()
        #: set when its connection to a supervisor closed (ZeroMQ then reconnects it)
        self.disconnected = anyio.Event()

    def close(self) -> None:
        self._done.set()

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
            sock.connect(self.endpoint)
            self._read(sock, monitor)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)
            ctx.term()

    def _read(self, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        budget_from, read = time.monotonic(), 0
        while not self._done.is_set():
            while monitor.poll(0):
                monitor.recv_multipart()
                anyio.from_thread.run_sync(self.disconnected.set)
            if not self.reading.wait(0.1) or not sock.poll(100):
                budget_from, read = time.monotonic(), 0
                continue
            got = []
            while len(got) < 100:
                try:
                    message = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                _, shard, _, _, seq, *_ = HEADER.unpack_from(message, len(TOPIC))
                got.append((shard, seq))
            read += len(got)
            anyio.from_thread.run_sync(self._note, got)
            # the reading pace, not a synchronisation: a consumer slower than the stream
            ahead = budget_from + read / self.rate - time.monotonic()
            if ahead > 0:
                self._done.wait(ahead)

    def _note(self, got: list[tuple[int, int]]) -> None:
        self.seen.update(got)
        self._changed.set()
        self._changed = anyio.Event()

    @property
    def count(self) -> int:
        return sum(self.seen.values())

    async def wait_for_all(self, expected: set[tuple[int, int]]) -> None:
        while not expected <= self.seen.keys():
            await self._changed.wait()


class FastSeen:
    """What a ``shardctl.Consumer`` (a large queue, reading at once) got: proof that the
    supervisor forwarded an event, and the ``replayed`` flags."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int, bool]] = []
        self._changed = anyio.Event()

    async def read(self, bus: Consumer) -> None:
        async for event in bus:
            if event.type == "MESSAGE_CREATE" and event.seq is not None:
                self.events.append((event.shard, event.seq, event.replayed))
                self._changed.set()
                self._changed = anyio.Event()

    async def wait_for_all(self, expected: set[tuple[int, int]]) -> None:
        while not expected <= {(shard, seq) for shard, seq, _ in self.events}:
            await self._changed.wait()


def flat(sent: dict[int, list[int]]) -> set[tuple[int, int]]:
    return {(shard, seq) for shard, seqs in sent.items() for seq in seqs}


async def start_run(args: list[str], env: dict[str, str], log: Path) -> anyio.abc.Process:
    """Logs to a file: an unread pipe fills up and blocks the process's logging."""
    with log.open("ab") as err:
        return await anyio.open_process(args, env=env, stdout=subprocess.DEVNULL, stderr=err)


async def test_a_consumer_20000_behind_at_sigterm_gets_every_event_exactly_once() -> None:
    with short_dir() as run_dir:
        events = f"ipc://{run_dir}/ev.sock"
        state, log = run_dir / "state.json", run_dir / "run.log"
        slow = PlainSub(events, rate=2500)
        async with Sandbox(sandbox_config()) as sb, Consumer(events, types=None) as bus, \
                anyio.create_task_group() as tg:
            fast = FastSeen()
            tg.start_soon(fast.read, bus)
            tg.start_soon(anyio.to_thread.run_sync, slow.run)
            args = run_args(sb, events, state)
            env = env_with_runtime(run_dir)
            first = await start_run(args, env, log)
            second: anyio.abc.Process | None = None
            try:
                with anyio.fail_after(60):
                    await sb.wait_for(lambda: len(sb.records("ready")) == 4, timeout=60)
                    expected = flat(await push_messages(sb, SHARDS, 1))
                    await slow.wait_for_all(expected)  # subscribed
                    expected |= await blast(sb, 7_500)
                    await fast.wait_for_all(expected)  # all of it forwarded
                behind = len(expected) - slow.count
                assert behind >= 20_000, f"the consumer is only {behind} behind"
                first.send_signal(signal.SIGTERM)
                # dispatched while the shards close: forwarded now, or replayed after RESUME
                expected |= flat(await push_messages(sb, SHARDS, 25))
                with anyio.fail_after(90):
                    assert await first.wait() == 0
                assert "events-out handed its consumers everything" in log.read_text()
                # It reads what the old supervisor handed over, then sees it gone: PUB/SUB
                # drops what a restarted supervisor sends before a subscriber is back, so a
                # restart quicker than that is a late join, not what this test is about.
                with anyio.fail_after(60):
                    await slow.disconnected.wait()
                second = await start_run(args, env, log)
                with anyio.fail_after(60):
                    await sb.wait_for(lambda: resumes(sb) == 4, timeout=60)
                    expected |= flat(await push_messages(sb, SHARDS, 25))
                with anyio.move_on_after(60):
                    await slow.wait_for_all(expected)
                missing = expected - slow.seen.keys()
                assert not missing, f"{len(missing)} of {len(expected)} events never arrived"
            finally:
                slow.close()
                await terminate(first)
                if second is not None:
                    await terminate(second)
                tg.cancel_scope.cancel()
        twice = {key: n for key, n in slow.seen.items() if n > 1}
        assert not twice, f"{len(twice)} events arrived more than once"
        assert set(slow.seen) == expected
        assert len(sb.records("identify")) == 4, "the restart identified instead of resuming"
        assert not sb.violations


def log_time(log: Path, text: str) -> datetime:
    """When the first log line containing ``text`` was written (text log format)."""
    line = next(line for line in log.read_text().splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


async def test_a_drain_that_runs_out_ends_the_stop_and_the_restart_replays_the_rest() -> None:
    bound = 1.0
    with short_dir() as run_dir:
        events = f"ipc://{run_dir}/ev.sock"
        state, log = run_dir / "state.json", run_dir / "run.log"
        stuck = PlainSub(events, rate=100_000)
        async with Sandbox(sandbox_config()) as sb, Consumer(events, types=None) as bus, \
                anyio.create_task_group() as tg:
            fast = FastSeen()
            tg.start_soon(fast.read, bus)
            tg.start_soon(anyio.to_thread.run_sync, stuck.run)
            args = run_args(sb, events, state, "--drain-timeout", str(bound))
            env = env_with_runtime(run_dir)
            first = await start_run(args, env, log)
            second: anyio.abc.Process | None = None
            try:
                with anyio.fail_after(60):
                    await sb.wait_for(lambda: len(sb.records("ready")) == 4, timeout=60)
                    expected = flat(await push_messages(sb, SHARDS, 1))
                    await stuck.wait_for_all(expected)  # subscribed ...
                    stuck.reading.clear()  # ... and from now on it reads nothing
                    expected |= await blast(sb, 5_000)
                    await fast.wait_for_all(expected)
                first.send_signal(signal.SIGTERM)
                with anyio.fail_after(60):
                    assert await first.wait() == 0
                drain = (log_time(log, "sessions saved")
                         - log_time(log, "consumers get up to")).total_seconds()
                assert drain < bound + 2.0, f"the drain took {drain:.1f} s"
                assert f"--drain-timeout {bound:g} s ran out" in log.read_text()
                # Reading again before the restart: a SUB whose queue is full does not read
                # its socket, so it notices the old supervisor is gone (and reconnects) only
                # once it reads -- and PUB/SUB drops what is sent before it subscribes.
                stuck.reading.set()
                with anyio.fail_after(30):
                    await stuck.disconnected.wait()
                second = await start_run(args, env, log)
                with anyio.fail_after(60):
                    await sb.wait_for(lambda: resumes(sb) == 4, timeout=60)
                with anyio.move_on_after(60):
                    await stuck.wait_for_all(expected)
                missing = expected - stuck.seen.keys()
                assert not missing, f"{len(missing)} of {len(expected)} events never arrived"
                with anyio.fail_after(60):
                    await fast.wait_for_all(expected)
            finally:
                stuck.close()
                await terminate(first)
                if second is not None:
                    await terminate(second)
                tg.cancel_scope.cancel()
        assert set(stuck.seen) == expected  # at least once: nothing lost ...
        assert max(stuck.seen.values()) > 1  # ... by replaying what may have been lost
        firsts: set[tuple[int, int]] = set()
        for shard, seq, replayed in fast.events:
            assert replayed == ((shard, seq) in firsts), (shard, seq, replayed)
            firsts.add((shard, seq))
        assert len(sb.records("identify")) == 4, "the restart identified instead of resuming"
        assert not sb.violations


async def test_output_gets_what_it_received_and_the_next_start_replays_the_rest() -> None:
    got: Counter[tuple[int, int]] = Counter()
    last: dict[int, int] = {}  # shard → seq of the last event of any type output got
    more = anyio.Event()

    def output(event: Event) -> None:
        nonlocal more
        if event.seq is not None:
            last[event.shard] = event.seq
        if event.type == "MESSAGE_CREATE" and event.seq is not None:
            got[(event.shard, event.seq)] += 1
            more.set()
            more = anyio.Event()

    async def slow_output(event: Event) -> None:
        await anyio.sleep(0.001)  # the pace of a callback slower than the stream
        output(event)  # delivered once it returns: a call cut off by the stop is not

    with short_dir() as run_dir:
        state = run_dir / "state.json"

        def supervisor(sb: Sandbox, out: Callable[[Event], Any]) -> Supervisor:
            return Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                              identify_interval=0.2, runtime_dir=run_dir, state_file=state,
                              output=out, drain_timeout=0.5)

        async with Sandbox(sandbox_config()) as sb:
            async with supervisor(sb, slow_output) as sup, anyio.create_task_group() as tg:
                with anyio.fail_after(60):
                    await sup.wait_ready()
                forwarded: set[tuple[int, int]] = set()
                changed = anyio.Event()

                async def listen(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    nonlocal changed
                    stream = sup.events("MESSAGE_CREATE")
                    task_status.started()
                    async for event in stream:
                        forwarded.add((event.shard, event.seq or 0))
                        changed.set()
                        changed = anyio.Event()

                await tg.start(listen)
                await anyio.wait_all_tasks_blocked()
                expected = await blast(sb, 2_000)  # within output's 10,000-event queue
                with anyio.fail_after(30):
                    while not expected <= forwarded:
                        await changed.wait()
                tg.cancel_scope.cancel()
            # the stop gave output 0.5 s: far too little for 8,000 events at ~1,000/s
            assert 0 < len(got) < len(expected)
            saved = {r["shard_id"]: r["seq"] for r in orjson.loads(state.read_bytes())["sessions"]}
            assert saved == last, "the saved seq is not the last one output got"
            async with supervisor(sb, output) as sup:
                with anyio.fail_after(60):
                    await sb.wait_for(lambda: resumes(sb) == 4, timeout=60)
                    while not expected <= got.keys():
                        await more.wait()
        assert set(got) == expected
        assert max(got.values()) == 1, "output got an event twice"
        assert not sb.violations
