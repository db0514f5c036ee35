"""StreamPublisher against a real nats-server: what counts as forwarded, back-pressure, and
the server's deduplication of a replay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
from streamkit import stored_count

from shardctl.ipc.events import decode_event, encode_event
from shardctl.stream.publisher import StreamPublisher
from shardctl.stream.server import NatsServer
from shardctl.stream.settings import StreamSettings

pytestmark = pytest.mark.anyio

URL = "ws://127.0.0.1:1/resume/"


def put(pub: StreamPublisher, frames: list[bytes]) -> None:
    """Hand ``pub`` frames as the forwarder does: decoded once, as events."""
    pub.put([decode_event(frame) for frame in frames])


def ready(shard: int, session: str) -> bytes:
    payload = orjson.dumps({"op": 0, "s": 1, "t": "READY",
                            "d": {"session_id": session, "resume_gateway_url": URL}})
    return encode_event("READY", shard, 1, 1, payload, bus_seq=1, epoch=1)


def message(shard: int, seq: int) -> bytes:
    return encode_event("MESSAGE_CREATE", shard, seq, 1, b'{"op":0}', bus_seq=seq, epoch=1)


class Progress:
    """The publisher's on_progress, awaitable."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def __call__(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()


def publisher(server: NatsServer, progress: Progress, **options: int) -> StreamPublisher:
    return StreamPublisher(StreamSettings((server.url,)), on_progress=progress,
                           **options)  # type: ignore[arg-type]


async def test_forwarded_is_what_the_stream_acknowledged_not_what_was_handed_over(
        tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")  # not started yet: the stream is unreachable
    progress = Progress()
    pub = publisher(server, progress, ack_timeout=1)
    pub.seed([(1, "old", URL, 40)])
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pub.run)
            put(pub, [ready(0, "s0"), *(message(0, seq) for seq in range(2, 11)),
                     message(1, 41)])
            await anyio.wait_all_tasks_blocked()
            assert pub.durable(0) is None and pub.durable(1) == ("old", URL, 40)
            assert pub.pending == 11
            await anyio.to_thread.run_sync(server.start)
            with anyio.fail_after(30):
                await progress.until(lambda: pub.pending == 0)
            assert pub.durable(0) == ("s0", URL, 10)
            assert pub.durable(1) == ("old", URL, 41)  # a resumed session goes on
            tg.cancel_scope.cancel()
    finally:
        server.kill()


async def test_a_full_buffer_holds_the_forwarder_until_the_stream_takes_events(
        tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    progress = Progress()
    pub = publisher(server, progress, max_pending=100, ack_timeout=1)
    released = anyio.Event()

    async def forwarder() -> None:
        await pub.wait_room()
        released.set()

    try:
        async with anyio.create_task_group() as tg:
            await tg.start(pub.run)
            put(pub, [ready(0, "s0"), *(message(0, seq) for seq in range(2, 151))])
            assert pub.full
            tg.start_soon(forwarder)
            await anyio.wait_all_tasks_blocked()
            assert not released.is_set(), "nothing was stored, yet room was made"
            await anyio.to_thread.run_sync(server.start)
            with anyio.fail_after(30):
                await released.wait()
                await progress.until(lambda: pub.pending == 0)
            tg.cancel_scope.cancel()
        assert pub.stalls == 1
        assert await stored_count(server.url) == 149
    finally:
        server.kill()


async def test_a_replay_of_stored_events_is_stored_once(nats_server: NatsServer) -> None:
    """A supervisor that crashed RESUMEs from an older seq: Discord sends those again."""
    progress = Progress()
    pub = publisher(nats_server, progress)
    async with anyio.create_task_group() as tg:
        await tg.start(pub.run)
        put(pub, [ready(0, "s0"), *(message(0, seq) for seq in range(2, 21))])
        put(pub, [message(0, seq) for seq in range(11, 31)])  # 11..20 again, then new
        with anyio.fail_after(30):
            await progress.until(lambda: pub.pending == 0)
        tg.cancel_scope.cancel()
    assert await stored_count(nats_server.url) == 29
    assert pub.duplicates == 10
    assert pub.durable(0) == ("s0", URL, 30)


async def test_a_full_stream_is_back_pressure_until_it_has_room(nats_server: NatsServer
                                                                ) -> None:
    """Discard "new": a full stream refuses; nothing is dropped, the forwarder is held
    back, and once the operator gives it room every event is stored, once."""
    import nats

    big = b'{"op":0,"d":"' + b"x" * 10_000 + b'"}'
    frames = [ready(0, "s0"), *(encode_event("MESSAGE_CREATE", 0, seq, 1, big, bus_seq=seq,
                                             epoch=1) for seq in range(2, 202))]
    progress = Progress()
    pub = StreamPublisher(StreamSettings((nats_server.url,), max_bytes=1 << 20),
                          on_progress=progress, max_pending=150)
    async with anyio.create_task_group() as tg:
        await tg.start(pub.run)
        put(pub, frames)
        with anyio.fail_after(30):
            await progress.until(lambda: pub.durable(0) is not None)
            # stuck below the end: the stream took what fits and refuses the rest
            await progress.until(lambda: pub.acked > 50)
        await anyio.wait_all_tasks_blocked()
        assert pub.pending > 0 and pub.durable(0) != ("s0", URL, 201)
        nc = await nats.connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info("SHARDCTL")
            info.config.max_bytes = 8 << 20
            await nc.jetstream().update_stream(info.config)
        finally:
            await nc.close()
        with anyio.fail_after(30):
            await progress.until(lambda: pub.pending == 0)
        tg.cancel_scope.cancel()
    assert pub.durable(0) == ("s0", URL, 201)
    assert await stored_count(nats_server.url) == 200
