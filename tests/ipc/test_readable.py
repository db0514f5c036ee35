"""Readable: one persistent reader on a ZeroMQ socket's FD, woken only by input."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import zmq

from shardctl.ipc.readable import Readable

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="rd-") as d:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        endpoint = f"ipc://{Path(d) / 'r.sock'}"
        pull.bind(endpoint)
        push.connect(endpoint)
        try:
            yield push, pull
        finally:
            push.close(linger=0)
            pull.close(linger=0)
            ctx.term()


async def test_wait_returns_when_a_message_arrives_and_not_before(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    push, pull = pair
    async with Readable(pull) as readable:
        assert not readable.ready()
        woke = anyio.Event()

        async def waiter() -> None:
            await readable.wait(60.0)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert not woke.is_set()
            push.send(b"one")
            with anyio.fail_after(5):
                await woke.wait()
        assert pull.recv(zmq.NOBLOCK) == b"one"
        # Input already queued: no wait at all.
        push.send(b"two")
        with anyio.fail_after(5):
            while not readable.ready():
                await readable.wait(0.05)
            await readable.wait(60.0)
        assert pull.recv(zmq.NOBLOCK) == b"two"


async def test_wait_gives_up_after_the_recheck_time(
        pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    _, pull = pair
    async with Readable(pull) as readable:
        clock = anyio.current_time()
        with anyio.fail_after(5):
            await readable.wait(0.05)
        assert anyio.current_time() - clock >= 0.04
        assert not readable.ready()


async def test_close_wakes_a_waiter(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    _, pull = pair
    readable = Readable(pull)
    readable.start()
    with anyio.fail_after(5):  # the task group ends only once the waiter has returned
        async with anyio.create_task_group() as tg:
            tg.start_soon(readable.wait, 60.0)
            await anyio.wait_all_tasks_blocked()
            readable.close()
