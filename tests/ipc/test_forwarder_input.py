"""The supervisor's batch reader (EventForwarder) against whatever bytes a worker socket sends.

The forwarder is the only production reader of worker batches: a broken or hostile worker
must cost the supervisor one dropped batch tail, never the bus.  Real sockets: a raw XPUB
stands in for a worker, so the test knows when the forwarder's subscription has arrived.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import zmq
import zmq.asyncio

from shardctl.ipc.bus import BatchBuilder, EventForwarder
from shardctl.ipc.events import BATCH_HEADER, Event, encode_record
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio

FINAL = "FINAL"
#: The rogue worker holds a real assignment's credential: what it tests is a broken
#: worker's bytes, not a stranger (tests/cluster/test_events_in_attacks.py).
WORKER, KEY = 3, new_publish_key()


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    # tmp_path can exceed the 107-byte ipc:// limit; a short private directory cannot.
    path = Path(tempfile.mkdtemp(prefix="fw-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def batch_of(records: Sequence[bytes]) -> bytes:
    """A batch as a worker seals it (the production encoder)."""
    builder = BatchBuilder(max_events=len(records) + 1, worker=WORKER, key=KEY)
    for record in records:
        builder.add(record, 0.0)
    return builder.seal()[0]


def message_records(n: int) -> list[bytes]:
    return [encode_record("MESSAGE_CREATE", 0, s, 0, b'{"op":0,"s":%d}' % s)
            for s in range(1, n + 1)]


@asynccontextmanager
async def forwarder_with_rogue_worker(ipc_dir: Path
                                      ) -> AsyncIterator[tuple[EventForwarder, zmq.asyncio.Socket,
                                                               anyio.Event]]:
    """A running forwarder, a raw worker socket it has subscribed to, and an event set once
    a batch holding a ``FINAL`` event has been forwarded (inputs arrive in order)."""
    final_seen = anyio.Event()

    def on_batch(events: Sequence[Event]) -> None:
        if any(e.type == FINAL for e in events):
            final_seen.set()

    # Replays of the same records must reach the reader, not the duplicate filter.
    fwd = EventForwarder(f"ipc://{ipc_dir}/in", f"ipc://{ipc_dir}/out", on_batch=on_batch,
                         drop_duplicates=False)
    fwd.publishers.authorize(WORKER, KEY, [0])
    ctx = zmq.asyncio.Context()
    rogue = ctx.socket(zmq.XPUB)
    rogue.setsockopt(zmq.SNDHWM, 100_000)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(fwd.run)
            rogue.connect(fwd.inbound)
            with anyio.fail_after(5):
                assert await rogue.recv() == b"\x01"  # the forwarder subscribed to everything
            yield fwd, rogue, final_seen
            tg.cancel_scope.cancel()
    finally:
        rogue.close(linger=0)
        ctx.term()


async def test_a_cut_or_padded_batch_forwards_its_whole_records_and_counts_one_malformed(
        ipc_dir: Path) -> None:
    records = message_records(3)
    batch = batch_of(records)
    ends = [len(batch_of(records[:k])) for k in range(1, 4)]
    cuts = range(len(batch))
    async with forwarder_with_rogue_worker(ipc_dir) as (fwd, rogue, final_seen):
        for cut in cuts:
            await rogue.send(batch[:cut])
        await rogue.send(batch + b"x")
        await rogue.send(batch_of([encode_record(FINAL, 0, None, 0, b"{}")]))
        with anyio.fail_after(10):
            await final_seen.wait()
    assert fwd.stats.batches == len(cuts) + 2
    # A cut inside the header cannot prove its sender: refused, not read.
    assert fwd.stats.refused == BATCH_HEADER.size
    assert fwd.stats.malformed == len(cuts) + 1 - BATCH_HEADER.size
    # A record is forwarded when it is whole; the padded batch's three go before its error.
    whole = sum(end <= cut for cut in cuts for end in ends)
    assert fwd.stats.events == whole + 3 + 1


async def test_the_forwarder_survives_random_and_mutated_batches(ipc_dir: Path) -> None:
    rng = random.Random(14)
    valid = batch_of(message_records(4))
    inputs: list[bytes] = []
    for _ in range(300):
        if rng.random() < 0.5:
            inputs.append(rng.randbytes(rng.randrange(0, 96)))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            inputs.append(bytes(mutated))
    async with forwarder_with_rogue_worker(ipc_dir) as (fwd, rogue, final_seen):
        for data in inputs:
            await rogue.send(data)
        await rogue.send(batch_of([encode_record(FINAL, 0, None, 0, b"{}")]))
        with anyio.fail_after(10):
            await final_seen.wait()
    assert fwd.stats.batches == len(inputs) + 1
    assert fwd.stats.malformed > 0
