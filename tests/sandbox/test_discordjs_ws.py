"""@discordjs/ws (discord.js's gateway layer, Node) against ``shardctl sandbox`` (issue 13).

tests/sandbox/discordjs/client.js prints what its WebSocketManager sees as JSON lines; the
sandbox is the CLI, judged by its ``--record`` file once it has stopped.  ``npm ci`` runs
once into a cache directory keyed by package.json and package-lock.json
($SHARDCTL_TEST_CACHE or ~/.cache), as for the Node consumer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.abc import Process
from cli_sandbox import REAL_CLIENT_WORLD, TOKEN, cli_sandbox, stop

FIXTURE = Path(__file__).resolve().parent / "discordjs"
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(240),
    pytest.mark.skipif(NODE is None, reason="node is not installed: @discordjs/ws cannot run"),
]

@pytest.fixture(scope="module")
def discordjs_client() -> Path:
    """A directory holding client.js with node_modules/@discordjs/ws installed."""
    manifest = (FIXTURE / "package.json").read_bytes() + \
        (FIXTURE / "package-lock.json").read_bytes()
    base = Path(os.environ.get("SHARDCTL_TEST_CACHE", Path.home() / ".cache" / "shardctl-tests"))
    target = base / f"discordjs-ws-{hashlib.sha256(manifest).hexdigest()[:12]}"
    if not (target / "node_modules" / "@discordjs" / "ws").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not"
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(FIXTURE / name, target / name)
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
                                cwd=target, capture_output=True, text=True, timeout=180,
                                check=False)
        assert result.returncode == 0, f"npm ci failed:\n{result.stderr[-2000:]}"
    shutil.copy(FIXTURE / "client.js", target / "client.js")  # always the current file
    return target


class Seen:
    """What client.js reported, and a wake-up per line."""

    def __init__(self) -> None:
        self.ready: set[int] = set()
        self.resumed: set[int] = set()
        self.dispatches: Counter[tuple[int, str]] = Counter()
        self.lines: list[dict[str, Any]] = []

    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        if line["event"] == "ready":
            self.ready.add(line["shard"])
        elif line["event"] == "resumed":
            self.resumed.add(line["shard"])
        elif line["event"] == "dispatch":
            self.dispatches[(line["shard"], line["t"])] += 1

    def done(self) -> bool:
        return (self.ready == {0, 1} and 0 in self.resumed
                and all(self.dispatches[(s, "MESSAGE_CREATE")] >= 2 for s in (0, 1)))


async def follow(process: Process, seen: Seen) -> None:
    """Read client.js's lines until ``seen.done()``."""
    assert process.stdout is not None
    buf = b""
    async for chunk in process.stdout:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            seen.add(orjson.loads(line))
        if seen.done():
            return
    raise AssertionError(f"client.js exited early: {seen.lines[-5:]}")


async def test_discordjs_ws_readies_two_shards_receives_dispatches_and_resumes_after_op7(
        discordjs_client: Path, tmp_path: Path) -> None:
    assert NODE is not None
    async with cli_sandbox(tmp_path, *REAL_CLIENT_WORLD) as sb:
        api_base = sb.api_url.removesuffix("/v10")
        env = {**os.environ, "SANDBOX_TOKEN": TOKEN}
        seen = Seen()
        with (tmp_path / "client.err").open("wb") as err:
            client = await anyio.open_process(
                [NODE, str(discordjs_client / "client.js"), api_base, "513"],
                stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            with anyio.fail_after(40):
                await follow(client, seen)
            client.send_signal(signal.SIGTERM)  # every shard closes with 1000
            with anyio.fail_after(10):
                await client.wait()
        finally:
            await stop(client)
        await stop(sb.process)

        errors = [line for line in seen.lines if line["event"] in ("error", "timeout")]
        assert errors == []
        assert sb.records("violation") == [], sb.log()
        assert sorted(r["shard_id"] for r in sb.records("identify")) == [0, 1]
        resumes = sb.records("resume")
        assert resumes and all(r["details"]["path"] == "resume" for r in resumes)
        assert any(r["shard_id"] == 0 for r in sb.records("resumed"))
        # a well-formed client: nothing for the sandbox to note
        assert sb.records("note") == []
