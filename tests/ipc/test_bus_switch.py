"""A reshard's switch on the bus: two worker sets with the same shard ids, one held back
and then released in one step (cluster/reshard.py), over real ZeroMQ sockets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchkit import encode_batch
from shardctl.errors import ProtocolError
from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import (
    OVERLAP,
    batch_records,
    decode_event,
    encode_record,
    lifecycle_payload,
    mark_overlap,
)
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def frame(t: str, seq: int) -> bytes:
    return b'{"op":0,"s":%d,"t":"%s","d":{"n":%d}}' % (seq, t.encode(), seq)


def publisher(fwd: EventForwarder, worker: int) -> EventPublisher:
    key = new_publish_key()
    fwd.publishers.authorize(worker, key, [0])
    return EventPublisher(fwd.inbound, worker=worker, publish_key=key)


class Changes:
    """Woken by the forwarder after each batch it forwards or hands to a sink."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        with anyio.fail_after(within):
            while not predicate():
                await self._event.wait()


async def test_the_switch_moves_shard_0_from_the_old_set_to_the_new_in_one_step(
        ipc_dir: Path) -> None:
    changes = Changes()
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out",
                         on_progress=changes.notify)
    held: list[bytes] = []
    dropped: list[bytes] = []

    def hold(batch: bytes) -> None:
        held.append(batch)
        changes.notify()

    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        old, new = publisher(fwd, 0), publisher(fwd, 1)
        fwd.divert(1, hold)  # the new set, until the switch
        await tg.start(old.run)
        await tg.start(new.run)
        async with Consumer(fwd.outbound) as consumer:
            consumer.open()
            with anyio.fail_after(5):
                await fwd.wait_subscribed(b"")
                await old.wait_subscribed()
                await new.wait_subscribed()
            for seq in range(1, 6):
                old.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            new.publish(0, "READY", 1, frame("READY", 1))
            for seq in range(2, 5):  # the new session's own numbering, same shard id
                new.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq))
            old.flush_nowait()
            new.flush_nowait()
            await changes.until(lambda: fwd.last_seq.get(0) == 5
                        and sum(len(batch_records(b)) for b in held) == 4)

            async def step() -> None:
                fwd.divert(0, dropped.append)
                fwd.last_seq.pop(0)
                await fwd.publish("RESHARD", 0, lifecycle_payload({"new_shards": 2}))
                fwd.divert(1, None)
                for batch in held:
                    await fwd.forward(mark_overlap(batch))

            await fwd.exclusive(step)
            old.publish(0, "MESSAGE_CREATE", 6, frame("MESSAGE_CREATE", 6), urgent=True)
            new.publish(0, "MESSAGE_CREATE", 5, frame("MESSAGE_CREATE", 5), urgent=True)
            got = []
            with anyio.fail_after(5):
                async for event in consumer:
                    got.append(event)
                    if len(got) == 11:
                        break
            tg.cancel_scope.cancel()
    assert [(e.type, e.seq, e.overlap) for e in got] == [
        *[("MESSAGE_CREATE", s, False) for s in range(1, 6)],
        ("RESHARD", None, False), ("READY", 1, True),
        *[("MESSAGE_CREATE", s, True) for s in range(2, 5)],
        ("MESSAGE_CREATE", 5, False)]
    # bus_seq stays contiguous per (type, shard) across the two sets
    assert [e.bus_seq for e in got if e.type == "MESSAGE_CREATE"] == list(range(1, 10))
    assert consumer.missed == 0
    assert fwd.last_seq[0] == 5 and fwd.stats.duplicates == 0
    assert dropped, "the old set's event after the switch was forwarded"


@given(st.lists(st.tuples(st.sampled_from(["READY", "MESSAGE_CREATE", "GUILD_CREATE"]),
                          st.integers(0, 2**32 - 1), st.none() | st.integers(0, 2**63)),
                min_size=1, max_size=20))
def test_mark_overlap_sets_the_flag_on_every_record_and_nothing_else(
        records: list[tuple[str, int, int | None]]) -> None:
    batch = encode_batch([encode_record(t, shard, seq, 7, frame(t, 1))
                          for t, shard, seq in records])
    marked = mark_overlap(batch)
    assert len(marked) == len(batch)
    assert [(t, s) for t, s, _ in batch_records(marked)] == [(t, s) for t, s, _ in records]
    for _, _, h in batch_records(batch):
        assert marked[h + 5] == batch[h + 5] | OVERLAP
    changed = [i for i, (a, b) in enumerate(zip(batch, marked, strict=True)) if a != b]
    assert all(marked[i] & OVERLAP for i in changed)
    # the consumer reads the flag; the gateway seq is untouched
    start = batch_records(marked)[0][2] - len(records[0][0]) - 1
    event = decode_event(marked[start:])
    assert event.overlap and event.seq == records[0][2]


def test_mark_overlap_until_a_time_marks_only_what_was_received_by_then() -> None:
    batch = encode_batch([encode_record("MESSAGE_CREATE", 0, seq, at, frame("M", seq))
                          for seq, at in [(1, 100), (2, 200), (3, 201)]])
    marked = mark_overlap(batch, received_until_ns=200)
    flags = [marked[h + 5] & OVERLAP for _, _, h in batch_records(marked)]
    assert flags == [OVERLAP, OVERLAP, 0]


def test_the_events_line_says_overlap_only_when_the_flag_is_set() -> None:
    record = encode_record("MESSAGE_CREATE", 3, 42, 0, frame("MESSAGE_CREATE", 42))
    batch = encode_batch([record])
    head = len(batch) - len(record) + 9  # the batch header and the record's prefix
    plain = decode_event(batch[head:])
    marked = decode_event(mark_overlap(batch)[head:])
    assert plain.to_json_line() == b'{"shard":3,"seq":42,"t":"MESSAGE_CREATE","d":{"n":42}}'
    assert marked.to_json_line() == (
        b'{"shard":3,"seq":42,"t":"MESSAGE_CREATE","d":{"n":42},"overlap":true}')


@pytest.mark.parametrize("cut", [3, 41, 50])
def test_a_truncated_batch_is_a_protocol_error(cut: int) -> None:
    batch = encode_batch([encode_record("MESSAGE_CREATE", 0, 1, 0, frame("M", 1))] * 2)
    with pytest.raises(ProtocolError):
        batch_records(batch[:len(batch) - cut])
