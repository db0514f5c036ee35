"""What every figure needs: result rows, child processes speaking JSON lines, /proc readers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox
from shardctl.sandbox.fleet import Fleet

TOKEN = "sandbox-token"
#: What a message bot asks for: MESSAGE_CREATE with content (~1.5 KB) and typing (the probe).
INTENTS = int(Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.MESSAGE_CONTENT
              | Intents.GUILD_MESSAGE_TYPING)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parent.parent
#: which endpoint the consumer process reads: "batch" (events-batch, the default) or "events"
BUS_MODE = os.environ.get("BENCH_BUS", "batch")
#: figure 6's events-batch window (ms): steady load is where coalescing pays
BATCH_WINDOW_MS = float(os.environ.get("BENCH_BATCH_WINDOW_MS", "0"))
#: figure 6's coalesced run: the workers' window (ms, ``--publish-window-ms``)
PUBLISH_WINDOW_MS = float(os.environ.get("BENCH_PUBLISH_WINDOW_MS", "2"))


@dataclass(slots=True)
class Figure:
    """One row of the table and one object of results.json.

    ``ratio`` is value / reference; ``target`` says what passes, in words and as
    ``limit`` with ``better`` ("lower" or "higher") applied to ``compare`` ("ratio" or
    "value").  Informational rows have no limit and pass.
    """

    name: str
    value: float | int | None
    unit: str
    reference: float | int | None = None
    target: str = ""
    limit: float | None = None
    compare: str = "ratio"
    better: str = "lower"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference:
            return None
        return float(self.value) / float(self.reference)

    @property
    def passed(self) -> bool | None:
        if self.limit is None:
            return None
        got = self.ratio if self.compare == "ratio" else self.value
        if got is None:
            return False
        return float(got) <= self.limit if self.better == "lower" else float(got) >= self.limit

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        out["pass"] = self.passed
        return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- /proc ------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` as the kernel accounts it (children not included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def total_rss(pids: list[int]) -> int:
    return sum(rss_bytes(pid) for pid in pids)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# -- child processes --------------------------------------------------------------------------

class Child:
    """A Python child process that reports on stdout, one JSON object per line."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._out = BufferedByteReceiveStream(process.stdout)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def line(self, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109
        with anyio.fail_after(timeout):
            raw = await self._out.receive_until(b"\n", 1 << 24)
        message: dict[str, Any] = json.loads(raw)
        return message

    async def expect(self, key: str, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next line that has ``key`` (other lines are progress and are skipped)."""
        with anyio.fail_after(timeout):
            while True:
                message = await self.line(timeout)
                if key in message:
                    return message

    async def stop(self, grace: float = 15.0) -> None:
        process = self.process
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(grace, shield=True):
                await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()


@asynccontextmanager
async def child(module: str, *args: str) -> AsyncIterator[Child]:
    """``python -m bench.<module> args``; SIGTERM (then SIGKILL) on the way out."""
    prof = os.environ.get("BENCH_PROFILE_" + module.upper())
    profile = ["-m", "cProfile", "-o", prof] if prof else []
    process = await anyio.open_process(
        [sys.executable, *profile, "-m", f"bench.{module}", *args], stderr=None,
        stdin=subprocess.DEVNULL, cwd=str(ROOT))
    proc = Child(process)
    try:
        yield proc
    finally:
        await proc.stop()


@contextmanager
def short_dir() -> Iterator[Path]:
    """ipc:// paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="scb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass(slots=True)
class Cluster:
    """A supervisor process (``bench.cluster_proc``) and its workers."""

    proc: Child
    supervisor: int
    workers: list[int]
    events: str
    control: str = ""
    #: the supervisor's /metrics port (``cluster(metrics=True)``)
    metrics: int | None = None
    events_batch: str = ""

    @property
    def pids(self) -> list[int]:
        return [self.supervisor, *self.workers]

    def consumer_args(self) -> list[str]:
        """``consumer_proc``'s endpoint: events-batch (a batched ``Consumer``), or with
        ``BENCH_BUS=events`` the per-event endpoint, to compare the two."""
        if BUS_MODE == "events":
            return ["--endpoint", self.events]
        return ["--endpoint", self.events_batch, "--batched"]


@asynccontextmanager
async def cluster(sb: Sandbox | Fleet, *, processes: int, identify_interval: float,
                  compression: str = "zlib-stream", intents: int = INTENTS,
                  ready_timeout: float = 120.0, nice: int = 0,
                  stream: str | None = None, metrics: bool = False,
                  batch_window_ms: float = 0.0,
                  publish_window_ms: float = 0.0) -> AsyncIterator[Cluster]:
    """``nice``: run the cluster at a lower priority than the sandbox (which plays Discord,
    whose servers never share a CPU with the bot); ``metrics``: serve /metrics too;
    ``batch_window_ms``: events-batch's window (``--events-batch-window-ms``);
    ``publish_window_ms``: the workers' (``--publish-window-ms``)."""
    with short_dir() as run_dir:
        async with child("cluster_proc", "--api-url", sb.api_url, "--processes",
                         str(processes), "--identify-interval", str(identify_interval),
                         "--compression", compression, "--intents", str(intents),
                         "--run-dir", str(run_dir), "--nice", str(nice),
                         "--batch-window-ms", str(batch_window_ms),
                         "--publish-window-ms", str(publish_window_ms),
                         *(("--stream", stream) if stream else ()),
                         *(("--metrics",) if metrics else ())) as proc:
            ready = await proc.expect("workers", ready_timeout)
            yield Cluster(proc, ready["pid"], ready["workers"], ready["events"],
                          ready.get("control", ""), ready.get("metrics"),
                          ready.get("events_batch", ""))


async def wait_subscribed(sb: Sandbox, consumer: Child, shard_id: int = 0) -> None:
    """Send TYPING_START probes until the consumer saw one: its subscription is in place."""
    await consumer.expect("open")
    guild = sb.world.guilds_for(shard_id, sb.config.shard_count)[0]
    probe = {"channel_id": str(guild.text_channel_id), "guild_id": str(guild.id),
             "user_id": str(sb.world.user_id(1)), "timestamp": 0}
    async with anyio.create_task_group() as tg:
        async def poke() -> None:
            while True:
                await sb.dispatch(shard_id, "TYPING_START", probe)
                await anyio.sleep(0.1)

        tg.start_soon(poke)
        await consumer.expect("probe", 30.0)
        tg.cancel_scope.cancel()
