"""StreamConsumer against a real nats-server: replay positions, redelivery, ordered mode."""

from __future__ import annotations

import datetime
from pathlib import Path

import anyio
import pytest
from test_publisher import Progress, message, publisher, put, ready

from shardctl.ipc.events import Event
from shardctl.stream.consumer import StreamConsumer
from shardctl.stream.server import NatsServer

pytestmark = pytest.mark.anyio


async def fill(server: NatsServer, frames: list[bytes]) -> None:
    progress = Progress()
    pub = publisher(server, progress)
    async with anyio.create_task_group() as tg:
        await tg.start(pub.run)
        put(pub, frames)
        with anyio.fail_after(30):
            await progress.until(lambda: pub.pending == 0)
        tg.cancel_scope.cancel()


async def take(events: StreamConsumer, n: int) -> list[Event]:
    out = []
    with anyio.fail_after(10):
        async for event in events:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_a_new_durable_replays_from_a_stream_sequence(nats_server: NatsServer) -> None:
    await fill(nats_server, [ready(0, "s"), *(message(0, seq) for seq in range(2, 21))])
    async with StreamConsumer(nats_server.url, "from11", start_seq=11) as events:
        got = await take(events, 10)
    assert [e.seq for e in got] == list(range(11, 21))


async def test_a_new_durable_replays_from_a_time(nats_server: NatsServer) -> None:
    await fill(nats_server, [ready(0, "s"), *(message(0, seq) for seq in range(2, 6))])
    since = datetime.datetime.now(datetime.UTC)
    await fill(nats_server, [message(0, seq) for seq in range(6, 9)])
    async with StreamConsumer(nats_server.url, "since", types=["MESSAGE_CREATE"],
                              start_time=since) as events:
        got = await take(events, 3)
    assert [e.seq for e in got] == [6, 7, 8]


async def test_what_was_not_acknowledged_comes_again_marked_replayed(
        nats_server: NatsServer) -> None:
    await fill(nats_server, [ready(0, "s"), message(0, 2), message(0, 3)])
    async with StreamConsumer(nats_server.url, "bot", types=["MESSAGE_CREATE"],
                              ack_wait=1.0) as events:
        first, second = await take(events, 2)
        await events.ack(first)
        assert not second.replayed
    async with StreamConsumer(nats_server.url, "bot", types=["MESSAGE_CREATE"]) as events:
        (again,) = await take(events, 1)  # after ack_wait, to the next process
        assert events.redelivered == 1
    assert (again.seq, again.replayed) == (3, True)


async def test_ordered_mode_hands_out_one_event_until_it_is_acknowledged(
        nats_server: NatsServer) -> None:
    await fill(nats_server, [ready(0, "s"), message(0, 2), message(0, 3)])
    async with StreamConsumer(nats_server.url, "ordered", types=["MESSAGE_CREATE"],
                              ordered=True) as a, \
            StreamConsumer(nats_server.url, "ordered", types=["MESSAGE_CREATE"],
                           ordered=True) as b:
        (first,) = await take(a, 1)
        with anyio.move_on_after(1.5) as waited:  # the other member gets nothing meanwhile
            await take(b, 1)
        assert waited.cancelled_caught
        await a.ack(first)
        (second,) = await take(b, 1)
    assert (first.seq, second.seq) == (2, 3)


async def test_a_filter_selects_types_and_shards_in_the_server(nats_server: NatsServer
                                                                ) -> None:
    await fill(nats_server, [ready(0, "s0"), ready(1, "s1"), message(0, 2), message(1, 2),
                             message(1, 3)])
    async with StreamConsumer(nats_server.url, "one", types=["MESSAGE_CREATE"],
                              shards=[1]) as events:
        got = await take(events, 2)
        assert events.pending == 0
    assert [(e.type, e.shard, e.seq) for e in got] == [("MESSAGE_CREATE", 1, 2),
                                                        ("MESSAGE_CREATE", 1, 3)]


async def test_a_consumer_started_before_nats_waits_for_it(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")  # not running yet
    got: list[Event] = []

    async def consume() -> None:
        async with StreamConsumer(server.url, "early", types=["MESSAGE_CREATE"]) as events:
            got.extend(await take(events, 1))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await anyio.to_thread.run_sync(server.start)
            await fill(server, [ready(0, "s"), message(0, 2)])
    finally:
        server.kill()
    assert [e.seq for e in got] == [2]
