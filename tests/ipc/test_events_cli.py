"""``shardctl events``: the JSON-lines contract, end to end through a real subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.events import lifecycle_payload, subscription_prefix
from shardctl.ipc.publishers import new_publish_key


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="se-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def frame(t: str, seq: int, d: str) -> bytes:
    return b'{"t":"%s","s":%d,"op":0,"d":%s}' % (t.encode(), seq, d.encode())


@pytest.mark.anyio
async def test_events_command_prints_one_json_object_per_line(ipc_dir: Path) -> None:
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out")
    key = new_publish_key()
    fwd.publishers.authorize(0, key, [0, 1])
    pub = EventPublisher(fwd.inbound, publish_key=key)
    cmd = [sys.executable, "-c", "from shardctl.cli import main; main()", "events",
           "--endpoint", fwd.outbound, "--type", "MESSAGE_CREATE", "--type", "SHARD_READY",
           "--shard", "1", "--count", "3"]
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        await tg.start(pub.run)
        async with await anyio.open_process(cmd, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE) as proc:
            try:
                with anyio.fail_after(20):  # includes the interpreter's start-up
                    for t in ("MESSAGE_CREATE", "SHARD_READY"):
                        await fwd.wait_subscribed(subscription_prefix(t, 1))
                    await pub.wait_subscribed()
                pub.publish(0, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1, '{"x":0}'))
                pub.publish(1, "MESSAGE_CREATE_X", 2, frame("MESSAGE_CREATE_X", 2, "{}"))
                pub.publish(1, "MESSAGE_CREATE", 42, frame("MESSAGE_CREATE", 42,
                                                           '{"content":"h\\u00e9 \\"q\\"",'
                                                           '"id":"123"}'))
                pub.publish(1, "SHARD_READY", None, lifecycle_payload({"guilds": 2}))
                pub.publish(1, "MESSAGE_CREATE", 43, frame("MESSAGE_CREATE", 43, "null"))
                pub.flush_nowait()
                assert proc.stdout is not None
                out = b""
                with anyio.fail_after(10):
                    async for chunk in proc.stdout:
                        out += chunk
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
        tg.cancel_scope.cancel()
    assert out.decode("utf-8").splitlines() == [
        '{"shard":1,"seq":42,"t":"MESSAGE_CREATE","d":{"content":"hé \\"q\\"","id":"123"}}',
        '{"shard":1,"seq":null,"t":"SHARD_READY","d":{"guilds":2}}',
        '{"shard":1,"seq":43,"t":"MESSAGE_CREATE","d":null}',
    ]


def test_events_command_needs_an_endpoint() -> None:
    result = CliRunner().invoke(main, ["events"], env={"SHARDCTL_EVENTS_ENDPOINT": None})
    assert result.exit_code == 2
    assert "--endpoint" in result.output


def test_events_command_refuses_an_invalid_type() -> None:
    result = CliRunner().invoke(main, ["events", "-e", "ipc:///nowhere", "--type", "A\u00c9"])
    assert result.exit_code == 2
    assert "--type" in result.output
