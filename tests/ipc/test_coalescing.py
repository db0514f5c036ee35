"""Wake-ups at steady load (issue 14, "Figures"): the publisher's batching window is a timer,
and a Consumer takes every waiting event per wake-up without a task switch per event, yet
still lets its peers run on a busy bus."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import zmq
import zmq.asyncio

from shardctl.ipc.bus import EventForwarder, EventPublisher, wait_socket
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import encode_event
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_batch_opened_late_in_the_window_gets_its_own_full_window(
        ipc_dir: Path) -> None:
    clock = Clock()
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out")
    key = new_publish_key()
    fwd.publishers.authorize(0, key, [0])
    pub = EventPublisher(fwd.inbound, worker=0, publish_key=key, max_events=2,
                         max_delay=0.02, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        await tg.start(pub.run)
        with anyio.fail_after(5):
            await pub.wait_subscribed()
        pub.publish(0, "TYPING_START", 1, b"{}")  # arms the window's timer
        pub.publish(0, "TYPING_START", 2, b"{}")  # full: sent at once
        clock.now = 0.015
        pub.publish(0, "TYPING_START", 3, b"{}")  # due at 0.035 by the batch's clock
        assert pub.sent == 2
        await anyio.sleep(0.05)  # the first timer has fired: not due yet, so it re-arms
        assert (pub.sent, pub.backlog) == (2, 1)
        clock.now = 0.035
        with anyio.fail_after(5):
            while pub.sent < 3:  # noqa: ASYNC110 - the re-armed timer has no event to await
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def xpub(endpoint: str) -> AsyncIterator[zmq.Socket[bytes]]:
    sock = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.bind(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


async def subscribed(sock: zmq.Socket[bytes]) -> None:
    shadow = zmq.asyncio.Socket.from_socket(sock)
    with anyio.fail_after(5):
        while True:
            try:
                if sock.recv(zmq.NOBLOCK)[:1] == b"\x01":
                    return
            except zmq.Again:
                await wait_socket(shadow, 100, zmq.POLLIN)


def send(sock: zmq.Socket[bytes], n: int) -> None:
    for i in range(1, n + 1):
        sock.send(encode_event("MESSAGE_CREATE", 0, i, 0, b"{}", bus_seq=i, epoch=1))


async def consume(consumer: Consumer, n: int) -> int:
    """Iterate ``n`` events; how many times a peer task got to run meanwhile."""
    runs = 0

    async def peer() -> None:
        nonlocal runs
        while True:
            runs += 1
            await anyio.lowlevel.checkpoint()

    seqs = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer)
            await anyio.lowlevel.checkpoint()  # the peer is running
            before = runs
            async for event in consumer:
                seqs.append(event.seq)
                if len(seqs) == n:
                    break
            tg.cancel_scope.cancel()
    assert seqs == list(range(1, n + 1))
    return runs - before


async def test_a_consumer_takes_every_waiting_event_without_a_task_switch_per_event(
        ipc_dir: Path) -> None:
    endpoint = f"inproc://{ipc_dir.name}"
    async with xpub(endpoint) as sock, Consumer(endpoint) as consumer:
        await subscribed(sock)
        send(sock, 100)  # inproc: in the consumer's pipe when send() returns
        assert await consume(consumer, 100) == 0  # no task switch per event
        assert consumer.pending == 0


async def test_a_consumer_on_a_busy_bus_still_lets_its_peers_run(ipc_dir: Path) -> None:
    endpoint = f"inproc://{ipc_dir.name}"
    async with xpub(endpoint) as sock, Consumer(endpoint) as consumer:
        await subscribed(sock)
        send(sock, 5000)  # several drain budgets, all waiting at once
        assert await consume(consumer, 5000) >= 3
