"""``shardctl sandbox`` as a child process, for tests that run real clients against the CLI.

The child binds any free port and prints its URLs; its record (``--record``) is read once it
has stopped, so a test never polls a file that is still being written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.abc import Process

TOKEN = "sandbox-token"
#: The world the real-client tests share: 2 shards in 2 buckets (both IDENTIFY at once),
#: a beat every 5 s (1.25 s of slack on a loaded machine), 4 MESSAGE_CREATE per second per
#: session, and op 7 to shard 0 1.5 s after its READY (and again after each RESUMED).
REAL_CLIENT_WORLD = ("--shard-count", "2", "--max-concurrency", "2",
                     "--heartbeat-interval-ms", "5000", "--dispatch-rate", "4",
                     "--fault", "reconnect@1.5/0")


@dataclass
class CliSandbox:
    api_url: str
    gateway_url: str
    record_path: Path
    log_path: Path
    process: Process

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The record as written so far (complete once the sandbox has stopped)."""
        lines = self.record_path.read_bytes().splitlines()
        recs = [orjson.loads(line) for line in lines]
        return [r for r in recs if kind is None or r["kind"] == kind]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def _read_urls(process: Process) -> dict[str, str]:
    assert process.stdout is not None
    out = b""
    async for chunk in process.stdout:
        out += chunk
        lines = dict(line.split(maxsplit=1) for line in out.decode().splitlines()
                     if line.count(" ") >= 1)
        if "resume:" in lines and out.endswith(b"\n"):
            return lines
    raise AssertionError(f"shardctl sandbox exited before printing its URLs: {out!r}")


async def stop(process: Process) -> None:
    """SIGTERM (the sandbox closes every socket), SIGKILL if it lingers."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(10):
            await process.wait()
    if process.returncode is None:
        process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()


@asynccontextmanager
async def cli_sandbox(tmp: Path, *options: str) -> AsyncIterator[CliSandbox]:
    """``shardctl sandbox --port 0 --record FILE *options`` until the block ends."""
    record, log = tmp / "sandbox-record.jsonl", tmp / "sandbox.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCTL_")}
    args = [sys.executable, "-m", "shardctl.cli", "sandbox", "--port", "0",
            "--record", str(record), "--log-level", "WARNING", *options]
    with log.open("wb") as log_file:
        process = await anyio.open_process(args, stdout=subprocess.PIPE, stderr=log_file,
                                           env=env)
    try:
        with anyio.fail_after(20):
            urls = await _read_urls(process)
        yield CliSandbox(urls["api:"], urls["gateway:"], record, log, process)
    finally:
        await stop(process)
