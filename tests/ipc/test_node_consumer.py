"""The README's wire format is enough for another language: the Node example consumer.

Runs examples/node-consumer/consumer.js (Node + the ``zeromq`` v6 package) against a real
forwarder and checks it prints exactly what ``shardctl events`` prints.  ``npm install`` runs
once into a cache directory keyed by package.json ($SHARDCTL_TEST_CACHE or ~/.cache).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import orjson
import pytest

from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import Event, lifecycle_payload, session_tag, subscription_prefix
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.watermarks import Stamper

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node-consumer"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the Node "
                                "example consumer cannot run here")


@pytest.fixture(scope="module")
def node_consumer() -> Path:
    """A directory holding consumer.js with node_modules/zeromq installed."""
    package = (EXAMPLE / "package.json").read_bytes()
    base = Path(os.environ.get("SHARDCTL_TEST_CACHE", Path.home() / ".cache" / "shardctl-tests"))
    target = base / f"node-consumer-{hashlib.sha256(package).hexdigest()[:12]}"
    if not (target / "node_modules" / "zeromq").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "node is installed but npm is not"
        target.mkdir(parents=True, exist_ok=True)
        (target / "package.json").write_bytes(package)
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"],
                                cwd=target, capture_output=True, text=True, timeout=300,
                                check=False)
        assert result.returncode == 0, f"npm install failed:\n{result.stderr[-2000:]}"
    shutil.copy(EXAMPLE / "consumer.js", target / "consumer.js")  # always the current file
    return target


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@asynccontextmanager
async def node_reading(node_consumer: Path, endpoint: str, batched: bool,
                       types: list[str]) -> AsyncIterator[anyio.abc.Process]:
    """The Node example consumer on ``endpoint``, killed on the way out."""
    assert NODE is not None
    async with await anyio.open_process(
            [NODE, str(node_consumer / "consumer.js"),
             *(["--batched", endpoint] if batched else [endpoint]), *types],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            yield proc
        finally:
            proc.kill()


async def lines(proc: anyio.abc.Process, count: int) -> list[str]:
    """The first ``count`` lines the process prints."""
    assert proc.stdout is not None
    out = b""
    with anyio.fail_after(10):
        async for chunk in proc.stdout:
            out += chunk
            if out.count(b"\n") >= count:
                break
    return out.decode("utf-8").splitlines()


@pytest.mark.anyio
@pytest.mark.parametrize("batched", [False, True], ids=["events", "events-batch"])
async def test_node_consumer_reads_the_documented_frames(node_consumer: Path,
                                                         ipc_dir: Path, batched: bool) -> None:
    seen: list[Event] = []
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out",
                         on_batch=seen.extend, batch_outbound=f"ipc://{ipc_dir}/batch")
    key = new_publish_key()
    fwd.publishers.authorize(0, key, [7, 2**32 - 1])
    pub = EventPublisher(fwd.inbound, publish_key=key)
    types = ["MESSAGE_CREATE", "SHARD_DISCONNECT"]
    events: list[tuple[int, str, int | None, bytes]] = [
        (7, "MESSAGE_CREATE", 41, b'{"op":0,"s":41,"t":"MESSAGE_CREATE","d":'
                                  b'{"content":"hello \\u00e9","id":"1152921504606846976"}}'),
        (7, "MESSAGE_CREATE_X", 42, b'{"op":0,"s":42,"t":"MESSAGE_CREATE_X","d":{}}'),
        (7, "SHARD_DISCONNECT", None, lifecycle_payload({"code": 4009, "resumable": True})),
        (2**32 - 1, "MESSAGE_CREATE", 2**53, b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":[1,2]}'),
    ]
    endpoint = str(fwd.batch_outbound if batched else fwd.outbound)
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        await tg.start(pub.run)
        async with node_reading(node_consumer, endpoint, batched, types) as proc:
            with anyio.fail_after(20):
                if batched:
                    await fwd.wait_subscribed(b"", batched=True)
                for t in types if not batched else ():
                    await fwd.wait_subscribed(subscription_prefix(t))
                await pub.wait_subscribed()
            for shard, t, seq, payload in events:
                pub.publish(shard, t, seq, payload)
            pub.flush_nowait()
            printed = await lines(proc, 3)
        tg.cancel_scope.cancel()
    expected = [e.to_json_line().decode() for e in seen if e.type in types]
    assert len(expected) == 3
    assert printed == expected


@pytest.mark.anyio
@pytest.mark.parametrize("batched", [False, True], ids=["events", "events-batch"])
async def test_node_consumer_reads_a_batch_the_supervisor_forwarded_untouched(
        node_consumer: Path, ipc_dir: Path, batched: bool) -> None:
    """A worker that numbers its own events (ipc/watermarks.py): its batch continues the
    bus, so the forwarder sends its records as the worker wrote them.  The Node consumer
    prints the same lines as ``shardctl.Consumer`` reading the same endpoint."""
    epoch, shard, tag = 0x5EED, 7, session_tag("a")
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out", epoch=epoch,
                         batch_outbound=f"ipc://{ipc_dir}/batch")
    fwd.last_seq[shard], fwd.session_tags[shard] = 5, tag  # RESUMEd at seq 5
    key = new_publish_key()
    fwd.publishers.authorize(0, key, [shard])
    pub = EventPublisher(fwd.inbound, publish_key=key,
                         stamper=Stamper(epoch, sessions=[(shard, tag, 5)]))
    types = ["MESSAGE_CREATE", "TYPING_START"]
    endpoint = str(fwd.batch_outbound if batched else fwd.outbound)
    async with anyio.create_task_group() as tg, \
            Consumer(endpoint, types, batched=batched) as ours:
        await tg.start(fwd.run)
        await tg.start(pub.run)
        async with node_reading(node_consumer, endpoint, batched, types) as proc:
            with anyio.fail_after(20):
                for t in types[:1] if batched else types:  # ours and the Node one's
                    await fwd.wait_subscribed(subscription_prefix(t), 2, batched=batched)
                await pub.wait_subscribed()
            for seq in range(6, 14):
                t = types[seq % 3 == 0]
                pub.publish(shard, t, seq, b'{"op":0,"s":%d,"t":"%s","d":{"n":%d}}'
                            % (seq, t.encode(), seq), session=tag)
            pub.flush_nowait()
            printed = await lines(proc, 8)
            with anyio.fail_after(10):
                expected = [(await ours.__anext__()).to_json_line().decode()
                            for _ in range(8)]
        tg.cancel_scope.cancel()
    assert (fwd.stats.stamped, fwd.stats.restamped, fwd.stats.small) == (1, 0, 0)
    assert [orjson.loads(line)["seq"] for line in expected] == list(range(6, 14))
    assert printed == expected
