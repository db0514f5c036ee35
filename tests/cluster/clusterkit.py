"""Helpers for cluster tests: a consumer process, the sandbox's identify/resume records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
from anyio.streams.text import TextReceiveStream

from runkit import short_dir  # noqa: F401  (the cluster tests import it from here)
from shardctl.sandbox import Sandbox
from shardctl.sandbox.blast import Blast

TOKEN = "sandbox-token"


class ConsumerProcess:
    """``shardctl events`` in its own process: the public JSON-lines contract, counted."""

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
                self.seen[(event["shard"], event["seq"])] += 1
                self.lines += 1
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while self.lines < count:
            await self._changed.wait()


@asynccontextmanager
async def consumer_process(endpoint: str, *types: str, keys: Path | None = None,
                           batched: bool = False) -> AsyncIterator[ConsumerProcess]:
    """``keys``: a CURVE key directory; the consumer uses its ``consumer`` key.
    ``batched``: ``endpoint`` is events-batch."""
    args = [sys.executable, "-m", "shardctl.cli", "events", "--endpoint", endpoint,
            *(["--batched"] if batched else [])]
    if keys is not None:
        args += ["--keys", str(keys)]
    for t in types:
        args += ["--type", t]
    process = await anyio.open_process(args, stderr=subprocess.DEVNULL)
    consumer = ConsumerProcess(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.read)
            yield consumer
            tg.cancel_scope.cancel()
    finally:
        await terminate(process)


async def terminate(process: anyio.abc.Process, grace: float = 10.0) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


def accepted_identifies(sb: Sandbox, shard_id: int | None = None) -> int:
    return len(sb.records("identify", shard_id))


def resumes(sb: Sandbox, shard_id: int | None = None) -> int:
    return len(sb.records("resumed", shard_id))


async def push_messages(sb: Sandbox, shard_ids: list[int], count: int) -> dict[int, list[int]]:
    """Dispatch ``count`` MESSAGE_CREATE to each shard; the seqs the sandbox gave them."""
    sent: dict[int, list[int]] = {s: [] for s in shard_ids}
    for i in range(count):
        for shard_id in shard_ids:
            guild = sb.world.guilds_for(shard_id, sb.config.shard_count)[0]
            d: dict[str, Any] = {"id": str(10_000 + i), "guild_id": str(guild.id),
                                 "channel_id": str(guild.text_channel_id), "content": f"m{i}"}
            sent[shard_id] += await sb.dispatch(shard_id, "MESSAGE_CREATE", d)
    return sent


async def blast(sb: Sandbox, count: int) -> set[tuple[int, int]]:
    """``count`` MESSAGE_CREATE per shard, as fast as the sockets take them: the workers
    read many frames at once, so their batches hold several events per shard.  The
    (shard, seq) sent."""
    run = Blast(sb, count)
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.run)
        await run.prepared.wait()
        run.go()
    return {(shard, seq) for shard, (first, last) in run.sent.items()
            for seq in range(first, last + 1)}


def env_with_runtime(run_dir: Path) -> dict[str, str]:
    return {**os.environ, "SHARDCTL_RUNTIME_DIR": str(run_dir)}
