"""Helpers for stream tests: supervisors and consumers as real processes, blasts, and what
the stream holds."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import orjson
from anyio.streams.text import TextReceiveStream

from runkit import short_dir  # noqa: F401  (the stream tests import it from here)
from shardctl.sandbox import Blast, Sandbox, SandboxConfig
from shardctl.stream.consumer import StreamConsumer

TOKEN = "sandbox-token"

Key = tuple[int, int]


def sandbox_config(shards: int) -> SandboxConfig:
    """Blasts hold a connection's send lock while they write: beats far apart; a replay
    buffer that holds a whole blast, for the RESUME after a kill."""
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.05,
                         heartbeat_interval_ms=30_000, guilds_per_shard=1, session_ttl=120.0,
                         replay_buffer=20_000, record_dispatches=False)


def run_args(sb: Sandbox, state: Path, stream: str, *extra: str,
             processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
            "--api-url", sb.api_url, "--processes", str(processes),
            "--identify-interval", "0.05", "--state-file", str(state), "--stream", stream,
            "--log-level", "INFO", "--log-format", "json", *extra]


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


async def all_ready(sb: Sandbox, shards: int) -> None:
    await sb.wait_for(lambda: len(sb.records("ready")) >= shards, timeout=90)


async def start_blast(sb: Sandbox, per_shard: int, tg: anyio.abc.TaskGroup) -> set[Key]:
    """Start a blast of ``per_shard`` MESSAGE_CREATE on every live session (it runs on in
    ``tg``); the (shard, seq) it sends."""
    blast = Blast(sb, per_shard)
    tg.start_soon(blast.run)
    await blast.prepared.wait()
    blast.go()
    return {(shard, seq) for shard, (first, last) in blast.sent.items()
            for seq in range(first, last + 1)}


class Counted:
    """(shard, seq) of MESSAGE_CREATE, counted, with a wake-up per change."""

    def __init__(self) -> None:
        self.seen: Counter[Key] = Counter()
        self.lines = 0
        self._changed = anyio.Event()

    def add(self, key: Key) -> None:
        self.seen[key] += 1
        self.lines += 1

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while self.lines < count:
            await self._changed.wait()

    async def wait_for_all(self, wanted: set[Key]) -> None:
        while not wanted <= self.seen.keys():
            await self._changed.wait()


class StreamReader(Counted):
    """``shardctl events --stream URL --durable NAME`` in its own process: its JSON lines."""

    def __init__(self, process: anyio.abc.Process) -> None:
        super().__init__()
        self.process = process

    async def read(self) -> None:
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                event = orjson.loads(line)
                if event["t"] == "MESSAGE_CREATE":
                    self.add((event["shard"], event["seq"]))
            self.changed()


@asynccontextmanager
async def stream_reader(url: str, durable: str, stderr: Path, *extra: str
                        ) -> AsyncIterator[StreamReader]:
    args = [sys.executable, "-m", "shardctl.cli", "events", "--stream", url,
            "--durable", durable, "--type", "MESSAGE_CREATE", *extra]
    with stderr.open("ab") as err:
        process = await anyio.open_process(args, stderr=err)
    reader = StreamReader(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader.read)
            yield reader
            tg.cancel_scope.cancel()
    finally:
        await terminate(process)


def redelivered(stderr: Path) -> set[Key]:
    """What a reader reported as delivered again ("redelivered: shard S seq N TYPE")."""
    out = set()
    for line in stderr.read_text().splitlines():
        if line.startswith("redelivered: shard "):
            words = line.split()
            out.add((int(words[2]), int(words[4])))
    return out


class Checker(Counted):
    """A StreamConsumer in the test process: what the stream holds, as it arrives (what it
    took from a server that died comes again after 5 s, not the default 30)."""

    async def run(self, url: str, durable: str) -> None:
        async with StreamConsumer(url, durable, types=["MESSAGE_CREATE"],
                                  ack_wait=5.0) as events:
            async for event in events:
                assert event.seq is not None
                self.add((event.shard, event.seq))
                await events.ack(event)
                if not events.pending:
                    self.changed()


async def stored(url: str, wanted: set[Key], durable: str = "audit") -> Counter[Key]:
    """Every MESSAGE_CREATE the stream holds, counted by a fresh durable, once ``wanted``
    are all there (each stored message is delivered to it once: it acknowledges at once)."""
    checker = Checker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(checker.run, url, durable)
        await checker.wait_for_all(wanted)
        tg.cancel_scope.cancel()
    return checker.seen


def log_has(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


async def pulling(url: str, durable: str, readers: int) -> None:
    """Return once ``readers`` fetches wait on ``durable``: every reader process is taking
    events (started before that, one may get none of a short burst)."""
    import nats
    import nats.errors

    nc = await nats.connect(servers=url.split(","))
    try:
        while True:
            try:
                info = await nc.jetstream().consumer_info("SHARDCTL", durable)
                if (info.num_waiting or 0) >= readers:
                    return
            except nats.errors.Error:
                pass  # not created yet by the first reader (NotFoundError is one)
            await anyio.sleep(0.1)
    finally:
        await nc.close()


async def stored_count(url: str, t: str = "MESSAGE_CREATE") -> int:
    """How many messages of type ``t`` the stream holds (its per-subject counts)."""
    import nats
    import nats.errors

    nc = await nats.connect(servers=url.split(","))
    try:
        while True:
            try:
                info = await nc.jetstream().stream_info(
                    "SHARDCTL", subjects_filter=f"shardctl.{t}.>")
                return sum((info.state.subjects or {}).values())
            except nats.errors.Error:  # a cluster electing a leader: ask again
                await anyio.sleep(0.2)
    finally:
        await nc.close()


async def checkpointed(path: Path, sessions: int) -> None:
    """Until the state file holds ``sessions`` sessions.  Another process writes it:
    nothing to await but the file itself."""
    while True:
        try:
            body = orjson.loads(await anyio.Path(path).read_bytes())
            if len(body["sessions"]) >= sessions:
                return
        except (OSError, orjson.JSONDecodeError, KeyError):
            pass
        await anyio.sleep(0.05)


async def metrics_when(port: int, predicate: Callable[[dict[str, float]], bool]
                       ) -> dict[str, float]:
    """The supervisor's shardctl_stream_* figures once ``predicate`` holds for them (another
    process: nothing to await but its answers)."""
    import httpx

    async with httpx.AsyncClient() as client:
        while True:
            try:
                reply = await client.get(f"http://127.0.0.1:{port}/metrics")
                figures = {line.split()[0]: float(line.split()[1])
                           for line in reply.text.splitlines()
                           if line.startswith("shardctl_stream_")}
                if figures and predicate(figures):
                    return figures
            except httpx.HTTPError:
                pass  # not serving yet
            await anyio.sleep(0.1)
