"""BatchOutlet: worker batches become events-batch messages, small ones coalesced in a window."""

from __future__ import annotations

import anyio
import pytest

from batchkit import encode_batch
from shardctl.ipc.batch_out import BatchOutlet
from shardctl.ipc.events import decode_batch, encode_event, encode_record

pytestmark = pytest.mark.anyio

WINDOW = 0.2


def worker_batch(*seqs: int, shard: int = 0) -> bytearray:
    return bytearray(encode_batch([encode_record("MESSAGE_CREATE", shard, s, 1, b'{"s":%d}' % s)
                                   for s in seqs]))


class Wire:
    """What the outlet sent, message by message, and when."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self._changed = anyio.Event()

    async def send(self, message: bytes | bytearray) -> None:
        self.sent.append((anyio.current_time(), bytes(message)))
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, messages: int) -> None:
        with anyio.fail_after(5):
            while len(self.sent) < messages:
                await self._changed.wait()

    def seqs(self) -> list[list[int | None]]:
        return [[e.seq for e in decode_batch(m)] for _, m in self.sent]


async def test_without_a_window_each_batch_goes_at_once_as_itself() -> None:
    wire = Wire()
    outlet = BatchOutlet(wire.send)
    buf = worker_batch(1, 2, 3)
    await outlet.batch(buf, len(buf), 3, set(), 0)
    await outlet.event(encode_event("SHARD_READY", 0, None, 1, b"{}"), len("SHARD_READY"))
    assert wire.seqs() == [[1, 2, 3], [None]]
    assert wire.sent[0][1] == bytes(buf) and buf[0] == 2  # the buffer itself, now version 2
    assert (outlet.messages, outlet.events) == (2, 4)


async def test_dropped_records_are_left_out() -> None:
    wire = Wire()
    outlet = BatchOutlet(wire.send)
    buf = worker_batch(1, 2, 3)
    second = 40 + len(encode_record("MESSAGE_CREATE", 0, 1, 1, b'{"s":1}'))
    await outlet.batch(buf, len(buf), 3, {second}, 0)
    assert wire.seqs() == [[1, 3]]


async def test_a_window_coalesces_small_batches_and_sends_them_when_it_ends() -> None:
    wire = Wire()
    outlet = BatchOutlet(wire.send, window=WINDOW)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outlet.run)
        started = anyio.current_time()
        for seq in (1, 2, 3):
            buf = worker_batch(seq)
            await outlet.batch(buf, len(buf), 1, set(), 0)
        assert wire.sent == [] and outlet.held == 3
        await wire.until(1)
        tg.cancel_scope.cancel()
    assert wire.seqs() == [[1, 2, 3]]
    assert wire.sent[0][0] - started >= WINDOW


async def test_a_large_batch_goes_at_once_after_what_was_held() -> None:
    wire = Wire()
    outlet = BatchOutlet(wire.send, window=60.0)  # the window itself never ends here
    small, large = worker_batch(1), worker_batch(*range(2, 40))
    await outlet.batch(small, len(small), 1, set(), 0)
    await outlet.batch(large, len(large), 38, set(), 0)
    assert wire.seqs() == [[1], list(range(2, 40))]


async def test_a_full_window_goes_without_waiting_and_a_stop_takes_the_rest() -> None:
    wire = Wire()
    outlet = BatchOutlet(wire.send, window=60.0)
    for seq in range(1, 71):
        buf = worker_batch(seq)
        await outlet.batch(buf, len(buf), 1, set(), 0)
    assert wire.seqs() == [list(range(1, 65))]
    held = outlet.take_held()
    assert [[e.seq for e in decode_batch(m)] for m in held] == [list(range(65, 71))]
    assert outlet.held == 0


def test_a_window_is_a_number_of_seconds() -> None:
    with pytest.raises(ValueError, match="window"):
        BatchOutlet(Wire().send, window=-1)
    with pytest.raises(ValueError, match="window"):
        BatchOutlet(Wire().send, window=float("nan"))


async def test_a_free_outlet_sends_without_a_pass_through_the_event_loop() -> None:
    """At a steady load every batch holds one event: a loop pass per batch was half the
    forwarder's own CPU per message."""
    wire = Wire()
    outlet = BatchOutlet(wire.send)
    passes = 0

    async def other_task() -> None:
        nonlocal passes
        passes += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)  # runs at the first pass through the loop
        for seq in range(1, 11):
            buf = worker_batch(seq)
            await outlet.batch(buf, len(buf), 1, set(), 0)
        await outlet.event(encode_event("SHARD_READY", 0, None, 1, b"{}"), len("SHARD_READY"))
        assert passes == 0 and len(wire.sent) == 11
    assert passes == 1


async def test_a_send_that_waits_holds_the_others_back_in_order() -> None:
    """A full consumer pipe makes a send wait: whatever comes meanwhile queues behind it."""
    gate, entered = anyio.Event(), anyio.Event()
    wire = Wire()

    async def slow_first(message: bytes | bytearray) -> None:
        if not wire.sent and not gate.is_set():
            entered.set()
            await gate.wait()
        await wire.send(message)

    outlet = BatchOutlet(slow_first)
    first, second = worker_batch(1, 2), worker_batch(3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outlet.batch, first, len(first), 2, set(), 0)
        await entered.wait()
        tg.start_soon(outlet.batch, second, len(second), 1, set(), 0)
        tg.start_soon(outlet.event, encode_event("SHARD_READY", 0, None, 1, b"{}"),
                      len("SHARD_READY"))
        await anyio.wait_all_tasks_blocked()
        assert wire.sent == []
        gate.set()
    assert wire.seqs() == [[1, 2], [3], [None]]
