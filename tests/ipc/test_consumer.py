"""Consumer: filtering and gap detection, fed by a raw XPUB standing in for the supervisor."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import zmq
import zmq.asyncio

from shardctl import Consumer, Event, Gap
from shardctl.ipc.bus import wait_socket
from shardctl.ipc.events import encode_event, lifecycle_payload

pytestmark = pytest.mark.anyio

EPOCH = 77


@pytest.fixture
def endpoint() -> Iterator[str]:
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    yield f"ipc://{path}/out"
    shutil.rmtree(path, ignore_errors=True)


class FakeSupervisor:
    """An XPUB sending hand-made consumer messages, numbering bus_seq like the forwarder."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self.counters: dict[tuple[str, int], int] = {}
        self.epoch = EPOCH

    def send(self, t: str, shard: int, seq: int | None, *, skip_bus: int = 0) -> None:
        key = (t, shard)
        bus_seq = self.counters.get(key, 0) + 1 + skip_bus
        self.counters[key] = bus_seq
        payload = (b'{"op":0,"s":%d,"t":"%s","d":{"seq":%d}}' % (seq, t.encode(), seq)
                   if seq is not None else lifecycle_payload({"shard": shard}))
        self.sock.send(encode_event(t, shard, seq, 1, payload, bus_seq=bus_seq, epoch=self.epoch))

    async def wait_subscribed(self, n: int = 1) -> None:
        got = 0
        shadow = zmq.asyncio.Socket.from_socket(self.sock)
        with anyio.fail_after(5):
            while got < n:
                try:
                    msg = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    await wait_socket(shadow, 100, zmq.POLLIN)
                    continue
                got += msg[:1] == b"\x01"


@asynccontextmanager
async def fake(endpoint: str) -> AsyncIterator[FakeSupervisor]:
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.bind(endpoint)
    try:
        yield FakeSupervisor(sock)
    finally:
        sock.close(linger=0)


async def take(consumer: Consumer, n: int) -> list[Event]:
    out: list[Event] = []
    with anyio.fail_after(5):
        async for event in consumer:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_unfiltered_consumer_reports_gateway_seq_gaps(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        for seq in [1, 2, 3, 7, 8]:
            sup.send("MESSAGE_CREATE", 0, seq)
        got = await take(consumer, 5)
    assert [e.seq for e in got] == [1, 2, 3, 7, 8]  # a gap never stops delivery
    assert list(consumer.gaps) == [Gap("gateway", 0, "MESSAGE_CREATE", 4, 7)]
    assert consumer.missed == 3


async def test_ready_starts_a_new_session_and_replays_are_not_gaps(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        for t, seq in [("MESSAGE_CREATE", 40), ("MESSAGE_CREATE", 41), ("READY", 1),
                       ("GUILD_CREATE", 2), ("RESUMED", 3), ("MESSAGE_CREATE", 2),
                       ("MESSAGE_CREATE", 3)]:
            sup.send(t, 5, seq)
        await take(consumer, 7)
    assert list(consumer.gaps) == []


async def test_first_event_of_a_shard_only_sets_the_expectation(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        sup.send("MESSAGE_CREATE", 0, 1000)
        sup.send("MESSAGE_CREATE", 1, 5)
        sup.send("MESSAGE_CREATE", 0, 1001)
        await take(consumer, 3)
    assert consumer.missed == 0


async def test_filtered_consumer_detects_loss_through_bus_seq(endpoint: str) -> None:
    gaps: list[Gap] = []
    async with fake(endpoint) as sup, \
            Consumer(endpoint, types=["MESSAGE_CREATE"], on_gap=gaps.append) as consumer:
        await sup.wait_subscribed()
        seq = 0
        for i in range(6):
            seq += 1
            sup.send("TYPING_START", 2, seq)  # other types in between: s jumps, no loss
            seq += 1
            sup.send("MESSAGE_CREATE", 2, seq, skip_bus=2 if i == 4 else 0)
        got = await take(consumer, 6)
    assert {e.type for e in got} == {"MESSAGE_CREATE"}
    assert gaps == [Gap("bus", 2, "MESSAGE_CREATE", 5, 7)]
    assert consumer.missed == 2


async def test_lifecycle_events_are_checked_by_bus_seq(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        sup.send("SHARD_DISCONNECT", 1, None)
        sup.send("SHARD_DISCONNECT", 1, None, skip_bus=1)
        got = await take(consumer, 2)
    assert got[0].seq is None and got[0].d == {"shard": 1}
    assert list(consumer.gaps) == [Gap("bus", 1, "SHARD_DISCONNECT", 2, 3)]


async def test_a_new_supervisor_epoch_restarts_bus_seq_without_a_gap(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint, types=["MESSAGE_CREATE"]) as consumer:
        await sup.wait_subscribed()
        sup.send("MESSAGE_CREATE", 0, 1)
        sup.send("MESSAGE_CREATE", 0, 2)
        sup.epoch, sup.counters = EPOCH + 1, {}
        sup.send("MESSAGE_CREATE", 0, 3)
        got = await take(consumer, 3)
    assert [e.bus_seq for e in got] == [1, 2, 1]
    assert consumer.missed == 0


async def test_shard_filter_without_types_runs_client_side(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint, shards=[3]) as consumer:
        await sup.wait_subscribed()
        for shard in (1, 3, 2, 3):
            sup.send("MESSAGE_CREATE", shard, 1)
        sup.send("GUILD_CREATE", 3, 2)
        got = await take(consumer, 3)
    assert [(e.shard, e.type) for e in got] == [(3, "MESSAGE_CREATE")] * 2 + [(3, "GUILD_CREATE")]
    assert consumer.subscriptions == [b""]


async def test_malformed_messages_are_skipped_and_counted(endpoint: str) -> None:
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        sup.sock.send(b"no terminator here")
        sup.send("MESSAGE_CREATE", 0, 1)
        got = await take(consumer, 1)
    assert got[0].seq == 1 and consumer.malformed == 1


async def test_closed_consumer_stops_iteration(endpoint: str) -> None:
    consumer = Consumer(endpoint)
    consumer.close()
    with anyio.fail_after(1):
        assert [e async for e in consumer] == []
    with pytest.raises(RuntimeError):
        consumer.open()


def test_empty_type_list_is_refused() -> None:
    with pytest.raises(ValueError, match="receive nothing"):
        Consumer("ipc:///nowhere", types=[])


async def test_a_replay_after_a_resume_is_flagged_and_a_new_session_is_not(
        endpoint: str) -> None:
    sent = [("READY", 1), ("MESSAGE_CREATE", 2), ("MESSAGE_CREATE", 3), ("MESSAGE_CREATE", 4),
            # a supervisor crash: the restart RESUMEs from the checkpointed 2
            ("MESSAGE_CREATE", 3), ("MESSAGE_CREATE", 4), ("MESSAGE_CREATE", 5),
            ("RESUMED", 6),
            # a new session: its small seqs are new events
            ("READY", 1), ("MESSAGE_CREATE", 2)]
    async with fake(endpoint) as sup, Consumer(endpoint) as consumer:
        await sup.wait_subscribed()
        for t, seq in sent:
            sup.send(t, 3, seq)
        got = await take(consumer, len(sent))
    assert [e.replayed for e in got] == [False] * 4 + [True, True] + [False] * 4


async def test_a_consumer_without_ready_never_calls_anything_a_replay(endpoint: str) -> None:
    async with fake(endpoint) as sup, \
            Consumer(endpoint, types=["MESSAGE_CREATE"]) as consumer:
        await sup.wait_subscribed()
        for seq in [5, 6, 2, 3]:  # a replay, or a new session: it cannot know
            sup.send("MESSAGE_CREATE", 0, seq)
        got = await take(consumer, 4)
    assert not any(e.replayed for e in got)
