"""Helpers for stream tests: NATS servers on loopback, supervisors and consumers as real
processes, and what they saw."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import anyio.abc
import orjson
from anyio.streams.text import TextReceiveStream

from shardctl.sandbox import Sandbox, SandboxConfig

TOKEN = "sandbox-token"


@contextmanager
def short_dir() -> Iterator[Path]:
    """ipc:// paths must stay under 107 bytes: pytest's tmp_path can be too deep."""
    path = Path(tempfile.mkdtemp(prefix="sn-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sandbox_config(shards: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.05,
                         heartbeat_interval_ms=5000, guilds_per_shard=1, session_ttl=120.0)


def run_args(sb: Sandbox, state: Path, stream: str, *extra: str,
             processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
            "--api-url", sb.api_url, "--processes", str(processes),
            "--identify-interval", "0.05", "--state-file", str(state), "--stream", stream,
            "--log-level", "WARNING", *extra]


def env_with_runtime(run_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHARDCTL_") and k != "DISCORD_TOKEN"}
    return {**env, "SHARDCTL_RUNTIME_DIR": str(run_dir), "PYTHONUNBUFFERED": "1"}


async def start_run(args: list[str], env: dict[str, str], log: Path) -> anyio.abc.Process:
    """Output to a file: an unread pipe fills up and blocks the process's logging."""
    with log.open("ab") as out:
        return await anyio.open_process(args, env=env, stdout=out, stderr=out)


async def terminate(process: anyio.abc.Process, grace: float = 20.0) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def kill9(process: anyio.abc.Process) -> None:
    process.kill()
    await process.wait()


class StreamReader:
    """``shardctl events --stream URL --durable NAME`` in its own process: the JSON lines,
    counted by (shard, seq), and the lines it marked as redelivered."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.seen: Counter[tuple[int, int]] = Counter()
        self.lines = 0
        self._changed = anyio.Event()

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                event = orjson.loads(line)
                if event["t"] == "MESSAGE_CREATE":
                    self.seen[(event["shard"], event["seq"])] += 1
                    self.lines += 1
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while self.lines < count:
            await self._changed.wait()

    async def wait_for_all(self, wanted: set[tuple[int, int]]) -> None:
        while not wanted <= self.seen.keys():
            await self._changed.wait()


@asynccontextmanager
async def stream_reader(url: str, durable: str, *extra: str,
                        stderr: Path | None = None) -> AsyncIterator[StreamReader]:
    args = [sys.executable, "-m", "shardctl.cli", "events", "--stream", url,
            "--durable", durable, "--type", "MESSAGE_CREATE", *extra]
    with contextlib_open(stderr) as err:
        process = await anyio.open_process(args, stderr=err)
    reader = StreamReader(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read)
            yield reader
            tg.cancel_scope.cancel()
    finally:
        await terminate(process)


@contextmanager
def contextlib_open(path: Path | None) -> Iterator[int | object]:
    if path is None:
        yield subprocess.DEVNULL
        return
    with path.open("ab") as f:
        yield f


def stored_seqs(messages: list[tuple[int, int]]) -> Counter[tuple[int, int]]:
    return Counter(messages)
