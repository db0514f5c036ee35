"""EventForwarder.drain: events-out hands a lagging consumer what it holds, within a bound.

Real sockets: a plain pyzmq SUB with ZeroMQ's default 1,000-message receive queue (what
any language's client gets) and the forwarder's default send queue.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
import zmq

from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import BUS_CLOSING_TYPE, HEADER, decode_batch
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio

TOPIC = b"MESSAGE_CREATE\0"


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Progress:
    """Woken by the forwarder after every batch (its ``on_progress`` hook)."""

    def __init__(self) -> None:
        self._changed = anyio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(20):
            while not predicate():
                await self._changed.wait()


@asynccontextmanager
async def forwarding(ipc_dir: Path, out_hwm: int = 100_000,
                     resumed: dict[int, int] | None = None,
                     batch_window: float = 0.0) -> AsyncIterator[
        tuple[EventForwarder, EventPublisher]]:
    progress = Progress()
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out", nodrop=False,
                         out_hwm=out_hwm, on_progress=progress.notify,
                         batch_outbound=f"ipc://{ipc_dir}/batch", batch_window=batch_window)
    fwd.progress = progress  # type: ignore[attr-defined]
    fwd.last_seq.update(resumed or {})  # as the supervisor seeds it from the state file
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        key = new_publish_key()
        fwd.publishers.authorize(0, key, [0, 1])
        pub = EventPublisher(fwd.inbound, worker=0, publish_key=key)
        await tg.start(pub.run)
        yield fwd, pub
        tg.cancel_scope.cancel()


@contextmanager
def plain_sub(endpoint: str, topic: bytes = TOPIC) -> Iterator[zmq.Socket[bytes]]:
    """Every option at ZeroMQ's default (RCVHWM 1,000)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        yield sock
    finally:
        sock.close(0)
        ctx.term()


def payload(seq: int) -> bytes:
    return b'{"op":0,"s":%d,"t":"MESSAGE_CREATE","d":{"b":"%s"}}' % (seq, b"y" * 300)


async def publish(fwd: EventForwarder, pub: EventPublisher, shard: int,
                  seqs: range) -> None:
    for seq in seqs:
        pub.publish(shard, "MESSAGE_CREATE", seq, payload(seq))
        if seq % 200 == 0:
            await anyio.lowlevel.checkpoint()  # a worker yields between websocket reads
    pub.flush_nowait()
    await fwd.progress.until(  # type: ignore[attr-defined]
        lambda: fwd.last_seq.get(shard) == seqs[-1])


def read_all(sock: zmq.Socket[bytes], stop: threading.Event, rate: float, *,
             batched: bool = False) -> list[int]:
    """Seqs read, at most ``rate`` a second, until nothing came for a while after ``stop``;
    ``batched``: events-batch's frames (padding skipped)."""
    got: list[int] = []
    paced = 0
    while True:
        if not sock.poll(200):
            if stop.is_set():
                return got
            continue
        message = sock.recv()
        if batched:
            got.extend(e.seq or 0 for e in decode_batch(message) if e.type != BUS_CLOSING_TYPE)
        else:
            got.append(HEADER.unpack_from(message, len(TOPIC))[4])
        if len(got) - paced >= 64:
            stop.wait((len(got) - paced) / rate)  # the reading pace of a slow consumer
            paced = len(got)


async def test_drain_hands_a_lagging_default_sub_everything_it_holds(ipc_dir: Path) -> None:
    n = 12_000  # far beyond the SUB's 1,000 and the kernel's buffers
    async with forwarding(ipc_dir) as (fwd, pub):
        with plain_sub(fwd.outbound) as sub:
            with anyio.fail_after(5):
                await fwd.wait_subscribed(TOPIC)
            await publish(fwd, pub, 0, range(1, n + 1))
            stop = threading.Event()
            async with anyio.create_task_group() as tg:
                reading: list[list[int]] = []

                async def reader() -> None:
                    reading.append(await anyio.to_thread.run_sync(read_all, sub, stop, 10_000))

                tg.start_soon(reader)
                started = anyio.current_time()
                assert await fwd.drain(20)
                took = anyio.current_time() - started
                stop.set()
    assert reading[0] == list(range(1, n + 1))
    assert took > 0.3, "the drain returned before the consumer could have read it all"


async def test_drain_hands_a_lagging_batch_reader_everything_it_holds(ipc_dir: Path) -> None:
    n = 12_000
    async with forwarding(ipc_dir) as (fwd, pub):
        assert fwd.batch_outbound is not None
        with plain_sub(fwd.batch_outbound, b"") as sub:
            with anyio.fail_after(5):
                await fwd.wait_subscribed(b"", batched=True)
            await publish(fwd, pub, 0, range(1, n + 1))
            stop = threading.Event()
            async with anyio.create_task_group() as tg:
                reading: list[list[int]] = []

                async def reader() -> None:
                    reading.append(await anyio.to_thread.run_sync(
                        lambda: read_all(sub, stop, 20_000, batched=True)))

                tg.start_soon(reader)
                assert await fwd.drain(20)
                stop.set()
    assert reading[0] == list(range(1, n + 1))


async def test_a_drain_sends_what_the_batching_window_still_holds(ipc_dir: Path) -> None:
    async with forwarding(ipc_dir, batch_window=60.0) as (fwd, pub):  # a window never ending
        assert fwd.batch_outbound is not None
        with plain_sub(fwd.batch_outbound, b"") as sub:
            with anyio.fail_after(5):
                await fwd.wait_subscribed(b"", batched=True)
            for seq in range(1, 11):
                pub.publish(0, "MESSAGE_CREATE", seq, payload(seq))
                pub.flush_nowait()
                await pub.flush()
            await fwd.progress.until(  # type: ignore[attr-defined]
                lambda: fwd.outlet.held == 10)
            assert await fwd.drain(5)
            stop = threading.Event()
            stop.set()
            got = read_all(sub, stop, 1e9, batched=True)
    assert got == list(range(1, 11))


async def test_a_drain_that_runs_out_returns_false_within_its_bound(ipc_dir: Path) -> None:
    async with forwarding(ipc_dir, resumed={1: 100}) as (fwd, pub):  # RESUMEd at seq 100
        with plain_sub(fwd.outbound):  # subscribed, never reads
            with anyio.fail_after(5):
                await fwd.wait_subscribed(TOPIC)
            await publish(fwd, pub, 1, range(101, 20_101))
            started = anyio.current_time()
            assert not await fwd.drain(0.5)
            took = anyio.current_time() - started
    assert 0.4 < took < 2.0
    # fewer than a send queue's worth were sent: any of them may still have been held
    assert fwd.unsent_bound() == {1: 100}


async def test_a_drain_without_consumers_is_complete_at_once(ipc_dir: Path) -> None:
    async with forwarding(ipc_dir) as (fwd, pub):
        await publish(fwd, pub, 0, range(1, 1001))
        started = anyio.current_time()
        assert await fwd.drain(5)
        assert anyio.current_time() - started < 1.0


async def test_the_bound_moves_up_with_what_has_surely_left(ipc_dir: Path) -> None:
    async with forwarding(ipc_dir, out_hwm=1000) as (fwd, pub):
        await publish(fwd, pub, 0, range(1, 10_001))
        assert not await fwd.drain(0)
    bound = fwd.unsent_bound()[0]
    window = 1000 + 256
    assert 10_000 - window - fwd.sent_marks.every <= bound <= 10_000 - window


async def test_the_closing_padding_reaches_no_consumer_as_an_event(ipc_dir: Path) -> None:
    async with forwarding(ipc_dir) as (fwd, pub):
        raw = zmq.Context.instance().socket(zmq.SUB)
        try:
            raw.setsockopt(zmq.SUBSCRIBE, b"")  # a raw subscriber to everything sees it
            raw.connect(fwd.outbound)
            async with Consumer(fwd.outbound) as everything:
                with anyio.fail_after(5):  # both: the raw SUB's and the Consumer's
                    await fwd.wait_subscribed(b"", consumers=2)
                await publish(fwd, pub, 0, range(1, 101))
                assert await fwd.drain(5)
                got = []
                with anyio.fail_after(5):
                    async for event in everything:
                        got.append(event)
                        if len(got) == 100:
                            break
                assert [e.seq for e in got] == list(range(1, 101))
                with anyio.move_on_after(0.5):  # what else arrives: nothing, the padding
                    extra = await everything.__anext__()  # is skipped
                    pytest.fail(f"the consumer handed out {extra.type}")
            types = set()
            while raw.poll(500):
                message = raw.recv()
                types.add(message[:message.index(b"\0")])
            assert types == {b"MESSAGE_CREATE", BUS_CLOSING_TYPE.encode()}
        finally:
            raw.close(linger=0)


class Options:
    """A stand-in for the XPUB's setsockopt: what the forwarder applied, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes]] = []

    def setsockopt(self, option: int, value: bytes) -> None:
        self.calls.append((option, value))


def test_a_prefix_stays_subscribed_while_any_consumer_holds_it() -> None:
    fwd = EventForwarder("ipc:///unused/in", "ipc:///unused/out")
    sock = Options()
    apply = fwd._subscription
    assert apply(sock, b"\x01" + TOPIC)  # type: ignore[arg-type]
    assert not apply(sock, b"\x01" + TOPIC)  # type: ignore[arg-type]  # a second consumer
    assert not apply(sock, b"\x00" + TOPIC)  # type: ignore[arg-type]  # one leaves
    assert fwd.subscriptions == {TOPIC}
    assert apply(sock, b"\x00" + TOPIC)  # type: ignore[arg-type]  # the last one leaves
    assert fwd.subscriptions == set()
    assert not apply(sock, b"\x00" + TOPIC)  # type: ignore[arg-type]  # nothing to drop
    # each subscriber's pipe also takes the closing padding
    assert sock.calls.count((zmq.SUBSCRIBE, b"BUS_CLOSING\0")) == 2
    assert sock.calls.count((zmq.UNSUBSCRIBE, TOPIC)) == 2
