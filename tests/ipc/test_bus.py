"""Publisher → forwarder → consumer over real ZeroMQ sockets (ipc:// and tcp://127.0.0.1)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import zmq

from batchkit import encode_batch
from shardctl.ipc.bus import BatchBuilder, EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer, Gap
from shardctl.ipc.events import (
    Event,
    batch_header,
    decode_batch,
    encode_record,
    lifecycle_payload,
    subscription_prefix,
)
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # tmp_path can exceed the 107-byte ipc:// limit; a short private directory cannot.
    path = Path(tempfile.mkdtemp(prefix="sb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def frame(t: str, seq: int, body: str = "x") -> bytes:
    return b'{"op":0,"s":%d,"t":"%s","d":{"n":%d,"b":"%s"}}' % (
        seq, t.encode(), seq, body.encode())


def publisher(fwd: EventForwarder, *, worker: int = 0, shards: Sequence[int] = range(16),
              **kwargs: Any) -> EventPublisher:
    """A worker's publisher with the credential of an assignment ``fwd`` knows of."""
    key = new_publish_key()
    fwd.publishers.authorize(worker, key, shards)
    return EventPublisher(fwd.inbound, worker=worker, publish_key=key, **kwargs)


@asynccontextmanager
async def running(*services: Any) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for service in services:
            await tg.start(service.run)
        yield
        tg.cancel_scope.cancel()


@asynccontextmanager
async def bus(ipc_dir: Path | None, **fwd_kwargs: Any) -> AsyncIterator[EventForwarder]:
    if ipc_dir is None:
        fwd = EventForwarder("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", **fwd_kwargs)
    else:
        fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out", **fwd_kwargs)
    async with running(fwd):
        yield fwd


async def subscribed(fwd: EventForwarder, consumer: Consumer,
                     *publishers: EventPublisher) -> None:
    consumer.open()
    with anyio.fail_after(5):
        for prefix in consumer.subscriptions:
            await fwd.wait_subscribed(prefix)
        for pub in publishers:
            await pub.wait_subscribed()


async def take(consumer: Consumer, n: int, within: float = 10) -> list[Event]:
    out: list[Event] = []
    with anyio.fail_after(within):
        async for event in consumer:
            out.append(event)
            if len(out) == n:
                break
    return out


# -- batching, pure ----------------------------------------------------------------------------


def test_batch_is_due_when_full() -> None:
    b = BatchBuilder(max_events=32, max_delay=0.002)
    assert not any(b.add(b"r", now=0.0) for _ in range(31))
    assert b.add(b"r", now=0.0)
    batch, count = b.seal()
    assert count == 32 and len(b) == 0 and b.deadline is None
    assert batch[:4] == b"\x03\x00\x00\x20"  # batch version 3, 32 events


def test_batch_is_due_when_big() -> None:
    b = BatchBuilder(max_events=64, max_bytes=1000)
    assert not b.add(b"x" * 600, now=0.0)
    assert b.add(b"x" * 600, now=0.0)


def test_batch_is_due_max_delay_after_its_first_event() -> None:
    b = BatchBuilder(max_events=64, max_delay=0.002)
    assert not b.due(100.0)
    b.add(b"r", now=100.0)
    b.add(b"r", now=100.0015)  # later events do not push the deadline back
    assert b.deadline == pytest.approx(100.002)
    assert not b.due(100.0019)
    assert b.due(100.002)
    b.seal()
    assert not b.due(200.0)


def test_a_window_batch_is_ripe_once_half_its_window_old() -> None:
    b = BatchBuilder(max_events=64, max_delay=0.002)
    assert not b.ripe(100.0)  # empty
    b.add(b"r", now=100.0)
    assert not b.ripe(100.0009)
    assert b.ripe(100.001)
    assert not BatchBuilder(max_delay=0.0).ripe(0.0)  # no window: the loop pass decides


# -- publisher ---------------------------------------------------------------------------------


async def test_full_batch_is_sent_inside_publish_and_a_partial_one_waits(ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd, max_events=8, max_delay=60.0)
        async with running(pub):
            with anyio.fail_after(5):
                await pub.wait_subscribed()
            for seq in range(1, 9):
                pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            assert (pub.sent, pub.backlog) == (8, 0)  # no task switch needed
            pub.publish(0, "MESSAGE_CREATE", 9, frame("MESSAGE_CREATE", 9))
            assert (pub.sent, pub.backlog) == (8, 1)  # held for up to max_delay


async def test_partial_batch_is_flushed_after_max_delay(ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd, max_events=64, max_delay=0.002)
        async with running(pub), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, pub)
            for seq in (1, 2, 3):
                pub.publish(0, "TYPING_START", seq, frame("TYPING_START", seq))
            assert pub.sent == 0
            got = await take(consumer, 3, within=5)
            assert [e.seq for e in got] == [1, 2, 3]


async def test_a_window_batch_goes_with_the_first_event_that_finds_it_half_a_window_old(
        ipc_dir: Path) -> None:
    """At a steady load the next event takes the batch along: its window's timer, a wake-up
    of its own, is cancelled and never fires."""
    now = 0.0
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd, max_delay=60.0, clock=lambda: now)
        async with running(pub), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, pub)
            batches = fwd.stats.batches
            for seq, at in enumerate((0.0, 10.0, 29.9), 1):
                now = at
                pub.publish(0, "TYPING_START", seq, frame("TYPING_START", seq))
            assert (pub.sent, pub.backlog) == (0, 3)
            assert pub._timer is not None  # the window's end, should nobody come
            now = 30.0
            pub.publish(0, "TYPING_START", 4, frame("TYPING_START", 4))
            assert (pub.sent, pub.backlog) == (4, 0)
            assert pub._timer is None
            got = await take(consumer, 4, within=5)
            assert [e.seq for e in got] == [1, 2, 3, 4]
            assert fwd.stats.batches == batches + 1


async def test_by_default_events_published_together_go_as_one_batch_after_the_loop_pass(
        ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, pub)
            batches = fwd.stats.batches
            for seq in (1, 2, 3):  # one loop pass: no await between them
                pub.publish(0, "TYPING_START", seq, frame("TYPING_START", seq))
            assert pub.sent == 0  # not sent from inside publish()...
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            assert pub.sent == 3  # ...but as soon as the loop came round, with no timer
            got = await take(consumer, 3, within=5)
            assert [e.seq for e in got] == [1, 2, 3]
            assert fwd.stats.batches == batches + 1


async def test_lifecycle_events_are_sent_at_once(ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd, max_events=64, max_delay=60.0)
        async with running(pub), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, pub)
            pub.publish(2, "GUILD_CREATE", 1, frame("GUILD_CREATE", 1))
            pub.publish(2, "SHARD_READY", None, lifecycle_payload({"guilds": 1}))
            assert pub.sent == 2
            got = await take(consumer, 2, within=5)
            assert [(e.type, e.seq) for e in got] == [("GUILD_CREATE", 1), ("SHARD_READY", None)]
            assert got[1].d == {"guilds": 1}


async def test_publisher_holds_events_until_the_supervisor_subscribes(ipc_dir: Path) -> None:
    seen: list[Event] = []
    all_seen = anyio.Event()

    def on_batch(evs: Sequence[Event]) -> None:
        seen.extend(evs)
        if len(seen) >= 100:
            all_seen.set()

    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out", on_batch=on_batch)
    pub = publisher(fwd, max_events=10)
    async with running(pub):
        for seq in range(1, 101):
            pub.publish(1, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
        assert (pub.sent, pub.backlog) == (0, 100)  # nobody there: nothing thrown away
        async with running(fwd):
            with anyio.fail_after(5):
                await pub.flush()
                await all_seen.wait()
    assert [e.seq for e in seen] == list(range(1, 101))


async def test_backlog_is_bounded_and_drops_oldest(ipc_dir: Path) -> None:
    pub = EventPublisher(f"ipc://{ipc_dir}/nobody", max_events=5, max_backlog=10)
    for seq in range(1, 31):
        pub.publish(0, "MESSAGE_CREATE", seq, b"{}")
    assert pub.dropped == 20
    assert pub.backlog == 10


# -- end to end --------------------------------------------------------------------------------


async def burst(pub: EventPublisher, shards: Sequence[int], per_shard: int) -> None:
    for seq in range(1, per_shard + 1):
        for shard in shards:
            pub.publish(shard, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "y" * 200))
        if seq % 100 == 0:
            await anyio.lowlevel.checkpoint()  # a worker yields between websocket reads
    pub.flush_nowait()


def assert_exactly_once_in_order(got: list[Event], shards: Sequence[int], n: int) -> None:
    by_shard: dict[int, list[int]] = {s: [] for s in shards}
    for e in got:
        by_shard[e.shard].append(e.seq or 0)
    for s in shards:
        assert by_shard[s] == list(range(1, n + 1)), f"shard {s}"


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_burst_is_delivered_exactly_once_in_order(ipc_dir: Path, transport: str) -> None:
    n = 5000 if transport == "ipc" else 2500
    async with bus(ipc_dir if transport == "ipc" else None) as fwd:
        pubs = [publisher(fwd, worker=0), publisher(fwd, worker=1)]
        shard_sets = [(0, 2), (1, 3)]  # two workers, two shards each: 4n = 20k events on ipc
        async with running(*pubs), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, *pubs)
            async with anyio.create_task_group() as tg:
                for pub, shards in zip(pubs, shard_sets, strict=True):
                    tg.start_soon(burst, pub, shards, n)
                got = await take(consumer, 4 * n, within=60)
    assert_exactly_once_in_order(got, [0, 1, 2, 3], n)
    assert consumer.gaps == type(consumer.gaps)() and consumer.missed == 0
    assert fwd.stats.events == 4 * n and fwd.stats.duplicates == 0
    assert fwd.last_seq == {0: n, 1: n, 2: n, 3: n}
    assert all(e.bus_seq == e.seq and e.epoch == fwd.epoch for e in got)


async def test_type_subscription_is_exact_not_prefix(ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.outbound, types=["MESSAGE_CREATE"]) as mc, \
                Consumer(fwd.outbound, types=["MESSAGE_CREATE_X"]) as mx, \
                Consumer(fwd.outbound, types=["MESSAGE_CREATE"], shards=[1]) as mc1:
            for c in (mc, mx, mc1):
                await subscribed(fwd, c, pub)
            seq = 0
            for i in range(30):
                for shard in (0, 1):
                    for t in ("MESSAGE_CREATE", "MESSAGE_CREATE_X", "MESSAGE_DELETE"):
                        seq += 1
                        pub.publish(shard, t, seq, frame(t, seq, str(i)))
            pub.flush_nowait()
            got_mc = await take(mc, 60)
            got_mx = await take(mx, 60)
            got_mc1 = await take(mc1, 30)
            # everything published after the last expected event proves nothing else is queued
            pub.publish(1, "MESSAGE_CREATE", seq + 1, frame("MESSAGE_CREATE", seq + 1))
            pub.publish(1, "MESSAGE_CREATE_X", seq + 2, frame("MESSAGE_CREATE_X", seq + 2))
            pub.flush_nowait()
            assert (await take(mc, 1))[0].seq == seq + 1
            assert (await take(mx, 1))[0].seq == seq + 2
            assert (await take(mc1, 1))[0].seq == seq + 1
    assert {e.type for e in got_mc} == {"MESSAGE_CREATE"}
    assert {e.type for e in got_mx} == {"MESSAGE_CREATE_X"}
    assert {(e.type, e.shard) for e in got_mc1} == {("MESSAGE_CREATE", 1)}
    assert mc1.subscriptions == [subscription_prefix("MESSAGE_CREATE", 1)]


async def test_replayed_events_are_forwarded_once_and_ready_starts_over(ipc_dir: Path) -> None:
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.outbound) as consumer:
            await subscribed(fwd, consumer, pub)
            # a respawned worker RESUMEs from seq 3 while 4 and 5 were already forwarded
            for seq in [1, 2, 3, 4, 5, 4, 5, 6, 7]:
                pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            pub.publish(0, "READY", 1, frame("READY", 1))  # new session: s restarts at 1
            pub.publish(0, "GUILD_CREATE", 2, frame("GUILD_CREATE", 2))
            pub.flush_nowait()
            got = await take(consumer, 9)
    assert [(e.type, e.seq) for e in got] == [("MESSAGE_CREATE", s) for s in range(1, 8)] + [
        ("READY", 1), ("GUILD_CREATE", 2)]
    assert fwd.stats.duplicates == 2
    assert fwd.last_seq == {0: 2}
    assert consumer.missed == 0


async def test_events_lost_before_the_supervisor_are_counted_and_reported(ipc_dir: Path) -> None:
    gaps: list[Gap] = []
    async with bus(ipc_dir) as fwd:
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.outbound, on_gap=gaps.append) as consumer:
            await subscribed(fwd, consumer, pub)
            for seq in [1, 2, 5, 6]:
                pub.publish(4, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            pub.flush_nowait()
            await take(consumer, 4)
    assert fwd.stats.upstream_gaps == 1
    assert gaps == [Gap("gateway", 4, "MESSAGE_CREATE", 3, 5)]
    assert consumer.missed == 2


async def test_malformed_batch_from_a_worker_is_dropped_and_the_bus_keeps_going(
        ipc_dir: Path) -> None:
    seen: list[Event] = []
    two_seen = anyio.Event()

    def on_batch(evs: Sequence[Event]) -> None:
        seen.extend(evs)
        if len(seen) >= 2:
            two_seen.set()

    async with bus(ipc_dir, on_batch=on_batch) as fwd:
        broken = zmq.Context.instance().socket(zmq.PUB)
        try:
            broken.connect(fwd.inbound)
            key = new_publish_key()
            fwd.publishers.authorize(1, key, [0])  # a worker with a bug, but ours
            pub = publisher(fwd, max_events=2)
            async with running(pub):
                with anyio.fail_after(5):
                    await pub.wait_subscribed()
                    while fwd.stats.malformed == 0:
                        broken.send(batch_header(5, 1, key) + b"garbage")
                        await anyio.sleep(0.01)
                    pub.publish(0, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1))
                    pub.publish(0, "MESSAGE_CREATE", 2, frame("MESSAGE_CREATE", 2))
                    await two_seen.wait()
        finally:
            broken.close(linger=0)
    assert [e.seq for e in seen] == [1, 2]
    assert seen[0].epoch == fwd.epoch and seen[0].bus_seq == 1
    assert fwd.stats.refused == 0


async def stranger_sends(fwd: EventForwarder, batches: Sequence[bytes]) -> None:
    """A PUB that is not ours: resend (slow joiner) until the forwarder refused them all."""
    rogue = zmq.Context.instance().socket(zmq.PUB)
    try:
        rogue.connect(fwd.inbound)
        with anyio.fail_after(5):
            while fwd.stats.refused < len(batches):
                for batch in batches:
                    rogue.send(batch)
                await anyio.sleep(0.01)
    finally:
        rogue.close(linger=0)


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll the forwarder's counters: a refused batch or event leaves no other trace."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - dropping signals no event to await
            await anyio.sleep(0.005)


def one(t: str, shard: int, seq: int, **header: Any) -> bytes:
    return encode_batch([encode_record(t, shard, seq, 0, frame(t, seq))], **header)


async def test_batches_without_a_current_publish_key_are_refused_before_they_count(
        ipc_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []
    async with bus(ipc_dir, on_batch=seen.extend) as fwd:
        fwd.last_seq[0] = 5
        pub = publisher(fwd, worker=0, shards=[0])
        async with running(pub):
            with anyio.fail_after(5):
                await pub.wait_subscribed()
            forged = [
                one("MESSAGE_CREATE", 0, 10**9),                                 # no key
                one("MESSAGE_CREATE", 0, 10**9, worker=0, key=bytes(32)),       # a guess
                one("MESSAGE_CREATE", 0, 10**9, worker=7, key=new_publish_key()),  # no worker
                b"\x01\x00\x00\x01" + encode_record("READY", 0, 1, 0, b"{}"),  # version 1
                b"junk",
            ]
            await stranger_sends(fwd, forged)
            assert fwd.stats.refused == len(forged)
            assert fwd.last_seq == {0: 5} and fwd.last_session == {}
            assert seen == [] and fwd.stats.events == 0
            pub.publish(0, "MESSAGE_CREATE", 6, frame("MESSAGE_CREATE", 6))
            pub.flush_nowait()
            await until(lambda: fwd.last_seq[0] == 6)
    assert [e.seq for e in seen] == [6]
    refusals = [r for r in caplog.records if "publish key" in r.getMessage()]
    assert len(refusals) == 2  # once for worker 0, once for everyone unknown


async def test_a_worker_publishes_only_its_own_shards(ipc_dir: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []
    async with bus(ipc_dir, on_batch=seen.extend) as fwd:
        mine = publisher(fwd, worker=0, shards=[0, 2], max_events=4)
        theirs = publisher(fwd, worker=1, shards=[1, 3])
        async with running(mine, theirs):
            with anyio.fail_after(5):
                await mine.wait_subscribed()
            for seq in (1, 2):
                for shard in (0, 1, 2, 3):  # 1 and 3 belong to worker 1
                    mine.publish(shard, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            mine.flush_nowait()
            await until(lambda: fwd.stats.events + fwd.stats.foreign == 8)
    assert sorted((e.shard, e.seq) for e in seen) == [(0, 1), (0, 2), (2, 1), (2, 2)]
    assert fwd.stats.foreign == 4 and fwd.stats.refused == 0
    assert set(fwd.last_seq) == {0, 2}
    assert len([r for r in caplog.records if "not assigned to it" in r.getMessage()]) == 1


async def test_a_new_assignment_shuts_the_old_key_out(ipc_dir: Path) -> None:
    seen: list[Event] = []
    async with bus(ipc_dir, on_batch=seen.extend) as fwd:
        old = publisher(fwd, worker=0, shards=[0])
        new = publisher(fwd, worker=0, shards=[0])  # a respawned worker: its slot's new key
        async with running(old, new):
            with anyio.fail_after(5):
                await old.wait_subscribed()
                await new.wait_subscribed()
            old.publish(0, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1), urgent=True)
            new.publish(0, "MESSAGE_CREATE", 2, frame("MESSAGE_CREATE", 2), urgent=True)
            await until(lambda: fwd.stats.events + fwd.stats.refused == 2)
    assert [e.seq for e in seen] == [2]
    assert fwd.stats.refused == 1


async def test_a_worker_given_more_shards_switches_keys_without_losing_a_batch(
        ipc_dir: Path) -> None:
    seen: list[Event] = []
    async with bus(ipc_dir, on_batch=seen.extend) as fwd:
        pub = publisher(fwd, worker=0, shards=[0], max_events=1)
        async with running(pub):
            with anyio.fail_after(5):
                await pub.wait_subscribed()
            pub.publish(0, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1))  # sealed, old key
            # It adopts shard 1: a new assignment, to the same live process.
            key = new_publish_key()
            fwd.publishers.authorize(0, key, [0, 1], same_process=True)
            pub.set_credential(0, key)
            pub.publish(1, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1))
            pub.publish(0, "MESSAGE_CREATE", 2, frame("MESSAGE_CREATE", 2))
            await until(lambda: fwd.stats.events == 3)
    assert [(e.shard, e.seq) for e in seen] == [(0, 1), (1, 1), (0, 2)]
    assert fwd.stats.refused == 0


async def test_slow_consumer_pushes_back_instead_of_losing_events(ipc_dir: Path) -> None:
    n = 3000  # x 4 KB: far more than the pipes and kernel buffers hold
    async with bus(ipc_dir, out_hwm=50, in_hwm=5) as fwd:
        pub = publisher(fwd, max_events=32, hwm=5)
        async with running(pub), Consumer(fwd.outbound, hwm=50) as consumer:
            await subscribed(fwd, consumer, pub)
            for seq in range(1, n + 1):
                pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "z" * 4000))
            pub.flush_nowait()
            assert pub.backlog > 0  # the supervisor pushed back; the worker holds the rest
            got = await take(consumer, n, within=30)
    assert fwd.stats.blocked > 0  # the consumer's full pipe stopped the forwarder ...
    assert [e.seq for e in got] == list(range(1, n + 1))  # ... and nothing was lost
    assert consumer.missed == 0 and pub.dropped == 0


async def test_a_stuck_consumer_holds_the_bus_without_starving_the_event_loop(
        ipc_dir: Path) -> None:
    async with bus(ipc_dir, out_hwm=20) as fwd:
        stuck = zmq.Context.instance().socket(zmq.SUB)
        try:
            stuck.setsockopt(zmq.RCVHWM, 20)
            stuck.setsockopt(zmq.SUBSCRIBE, b"")
            stuck.connect(fwd.outbound)  # connected and subscribed, never reads
            pub = publisher(fwd)
            async with running(pub):
                with anyio.fail_after(5):
                    await fwd.wait_subscribed(b"")
                    await pub.wait_subscribed()
                for seq in range(1, 2001):
                    pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "z" * 4000))
                pub.flush_nowait()
                # The loop stays responsive while the forwarder waits on the full pipe: these
                # sleeps ARE the behaviour under test (a busy retry would never let them end).
                with anyio.fail_after(5):
                    for _ in range(20):
                        await anyio.sleep(0.01)
                assert fwd.stats.blocked > 0
                assert fwd.stats.events < 2000  # held back, not dropped ...
                assert pub.dropped == 0
        finally:
            stuck.close(linger=0)


async def test_forwarder_notes_the_session_of_each_ready(tmp_path: Path) -> None:
    ready = b'{"op":0,"s":1,"t":"READY","d":{"session_id":"abc","resume_gateway_url":"ws://r/"}}'
    both = anyio.Event()

    def on_batch(events: Sequence[Event]) -> None:
        if any(e.seq == 2 for e in events):
            both.set()

    fwd = EventForwarder(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out", on_batch=on_batch)
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        pub = publisher(fwd, max_events=1)
        async with running(pub):
            with anyio.fail_after(5):
                await pub.wait_subscribed()
                pub.publish(3, "READY", 1, ready)
                pub.publish(3, "MESSAGE_CREATE", 2, frame("MESSAGE_CREATE", 2))
                await both.wait()
        tg.cancel_scope.cancel()
    assert fwd.last_session == {3: ("abc", "ws://r/")}


async def test_a_high_backlog_asks_readers_to_pause_until_it_drains(ipc_dir: Path) -> None:
    seen: list[Event] = []
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out",
                         on_batch=seen.extend)
    pub = publisher(fwd, max_events=10, high_water=50, max_pause=60.0)
    async with running(pub):
        for seq in range(1, 50):
            pub.publish(1, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            assert pub.pressure() is None
        pub.publish(1, "MESSAGE_CREATE", 50, frame("MESSAGE_CREATE", 50))
        pause = pub.pressure()
        assert pause is not None  # 50 waiting (nobody subscribed yet): readers should wait
        async with running(fwd):
            with anyio.fail_after(5):
                await pause  # returns once the supervisor took the backlog below 25
        assert pub.backlog <= 25
    assert pub.dropped == 0


async def test_a_pause_never_outlasts_max_pause(ipc_dir: Path) -> None:
    pub = EventPublisher(f"ipc://{ipc_dir}/nobody", max_events=10, high_water=5,
                         max_pause=0.05)
    async with running(pub):
        for seq in range(1, 6):
            pub.publish(1, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
        pause = pub.pressure()
        assert pause is not None
        started = anyio.current_time()
        with anyio.fail_after(5):
            await pause  # no supervisor will ever drain it: the reader goes on regardless
        assert anyio.current_time() - started >= 0.04
        assert pub.backlog == 5  # and nothing was thrown away to get there


def test_high_water_must_fit_the_backlog() -> None:
    with pytest.raises(ValueError, match="high_water"):
        EventPublisher("ipc:///tmp/x", max_backlog=10, high_water=11)


# -- events-batch: one message per worker batch ------------------------------------------------


@asynccontextmanager
async def batch_bus(ipc_dir: Path, **fwd_kwargs: Any) -> AsyncIterator[EventForwarder]:
    async with bus(ipc_dir, batch_outbound=f"ipc://{ipc_dir}/batch", **fwd_kwargs) as fwd:
        yield fwd


async def batch_subscribed(fwd: EventForwarder, count: int, *pubs: EventPublisher) -> None:
    with anyio.fail_after(5):
        await fwd.wait_subscribed(b"", count, batched=True)
        for pub in pubs:
            await pub.wait_subscribed()


async def test_a_batched_consumer_gets_every_event_in_order_a_batch_per_message(
        ipc_dir: Path) -> None:
    n = 2000
    async with batch_bus(ipc_dir) as fwd:
        assert fwd.batch_outbound is not None
        pubs = [publisher(fwd, worker=0), publisher(fwd, worker=1)]
        raw = zmq.Context.instance().socket(zmq.SUB)  # ZeroMQ's defaults, as any language
        try:
            raw.setsockopt(zmq.SUBSCRIBE, b"")
            raw.connect(fwd.batch_outbound)
            async with running(*pubs), \
                    Consumer(fwd.batch_outbound, batched=True) as consumer:
                consumer.open()
                await batch_subscribed(fwd, 2, *pubs)
                async with anyio.create_task_group() as tg:
                    for pub, shards in zip(pubs, [(0, 2), (1, 3)], strict=True):
                        tg.start_soon(burst, pub, shards, n)
                    got = await take(consumer, 4 * n, within=60)
                messages = []
                with anyio.fail_after(10):
                    while sum(len(decode_batch(m)) for m in messages) < 4 * n:
                        try:
                            messages.append(raw.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            await anyio.sleep(0.01)
        finally:
            raw.close(linger=0)
    assert_exactly_once_in_order(got, [0, 1, 2, 3], n)
    assert consumer.missed == 0 and consumer.malformed == 0
    assert all(e.bus_seq == e.seq and e.epoch == fwd.epoch for e in got)
    # the publisher's batches of up to 64 events arrive whole: far fewer messages than events
    assert len(messages) <= 4 * n // 16
    assert [(e.shard, e.seq) for m in messages for e in decode_batch(m)] == [
        (e.shard, e.seq) for e in got]


async def test_both_endpoints_carry_the_same_numbering(ipc_dir: Path) -> None:
    async with batch_bus(ipc_dir) as fwd:
        assert fwd.batch_outbound is not None
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.outbound) as each, \
                Consumer(fwd.batch_outbound, batched=True) as batched:
            await subscribed(fwd, each, pub)
            batched.open()
            await batch_subscribed(fwd, 1)
            for seq in range(1, 41):
                t = ("MESSAGE_CREATE", "TYPING_START")[seq % 2]
                pub.publish(seq % 3, t, seq, frame(t, seq))
            pub.flush_nowait()
            await fwd.publish("SHARD_RESHARD", 1, lifecycle_payload({"x": 1}))
            per_event, per_batch = await take(each, 41), await take(batched, 41)
    assert [(e.type, e.shard, e.seq, e.bus_seq, e.raw) for e in per_batch] == [
        (e.type, e.shard, e.seq, e.bus_seq, e.raw) for e in per_event]
    assert [(e.shard, e.seq) for e in per_batch if e.type == "SHARD_RESHARD"] == [(1, None)]


async def test_a_batched_consumer_filters_here_and_never_sees_what_the_bus_dropped(
        ipc_dir: Path) -> None:
    async with batch_bus(ipc_dir) as fwd:
        assert fwd.batch_outbound is not None
        pub = publisher(fwd, shards=[0, 1])
        async with running(pub), Consumer(fwd.batch_outbound, types=["MESSAGE_CREATE"],
                                          shards=[0], batched=True) as consumer:
            consumer.open()
            await batch_subscribed(fwd, 1, pub)
            # another type, another shard, a replay (7-10 again), a shard not the worker's
            for seq in [*range(1, 11), 7, 8, 9, 10, 11, 12]:
                t = ("TYPING_START", "MESSAGE_CREATE")[seq % 2]
                pub.publish(0, t, seq, frame(t, seq))
                pub.publish(1, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            pub.publish(7, "MESSAGE_CREATE", 1, frame("MESSAGE_CREATE", 1))
            pub.flush_nowait()
            got = await take(consumer, 6)
    assert [(e.type, e.shard, e.seq) for e in got] == [
        ("MESSAGE_CREATE", 0, s) for s in (1, 3, 5, 7, 9, 11)]
    assert [e.bus_seq for e in got] == list(range(1, 7))
    assert consumer.missed == 0 and fwd.stats.foreign == 1


async def test_a_malformed_batch_still_hands_batched_consumers_what_went_out(
        ipc_dir: Path) -> None:
    async with batch_bus(ipc_dir) as fwd:
        assert fwd.batch_outbound is not None
        broken = zmq.Context.instance().socket(zmq.PUB)
        try:
            broken.connect(fwd.inbound)
            key = new_publish_key()
            fwd.publishers.authorize(1, key, [0])  # a worker with a bug, but ours
            good = b"".join(encode_record("MESSAGE_CREATE", 0, seq, 1, frame("MESSAGE_CREATE", seq))
                            for seq in (1, 2))
            async with Consumer(fwd.batch_outbound, batched=True) as consumer:
                consumer.open()
                await batch_subscribed(fwd, 1)
                with anyio.fail_after(5):
                    while fwd.stats.malformed == 0:  # the PUB's slow joiner: resend
                        broken.send(batch_header(3, 1, key) + good + b"garbage")
                        await anyio.sleep(0.01)
                got = await take(consumer, 2)
        finally:
            broken.close(linger=0)
    assert [(e.seq, e.bus_seq) for e in got] == [(1, 1), (2, 2)]


async def test_next_batch_hands_out_everything_received_in_order(ipc_dir: Path) -> None:
    n = 500
    async with batch_bus(ipc_dir) as fwd:
        assert fwd.batch_outbound is not None
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.batch_outbound, batched=True) as consumer:
            consumer.open()
            await batch_subscribed(fwd, 1, pub)
            await burst(pub, [0, 1], n)
            got: list[Event] = []
            sizes = []
            with anyio.fail_after(10):
                async for events in consumer.batches():
                    assert events, "a batch is never empty"
                    got += events
                    sizes.append(len(events))
                    if len(got) >= 2 * n:
                        consumer.close()  # ends the iteration
    assert_exactly_once_in_order(got, [0, 1], n)
    assert max(sizes) > 1 and len(got) == 2 * n
    with pytest.raises(StopAsyncIteration):
        await consumer.next_batch()


async def test_a_window_coalesces_a_trickle_into_fewer_messages_in_order(ipc_dir: Path) -> None:
    n = 60
    async with batch_bus(ipc_dir, batch_window=0.2) as fwd:
        assert fwd.batch_outbound is not None
        pub = publisher(fwd)
        async with running(pub), Consumer(fwd.batch_outbound, batched=True) as consumer:
            consumer.open()
            await batch_subscribed(fwd, 1, pub)
            for seq in range(1, n + 1):  # one event per worker batch, as at a steady load
                pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
                pub.flush_nowait()
                await pub.flush()
            got = await take(consumer, n)
    assert [e.seq for e in got] == list(range(1, n + 1))
    assert consumer.missed == 0
    assert fwd.outlet.events == n and fwd.outlet.messages < n // 2
