"""The continuous checkpoint: writes what changed, never after close, survives a bad disk."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from shardctl.cluster.checkpoint import Checkpointer
from shardctl.cluster.sessions import SessionRecord, WorkerMark, save

pytestmark = pytest.mark.anyio


class Store:
    def __init__(self) -> None:
        self.value = 0
        self.written: list[int] = []
        self.fail = False
        self.wrote = anyio.Event()

    def snapshot(self) -> int:
        return self.value

    def write(self, value: int) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.written.append(value)


async def test_only_a_changed_snapshot_is_written() -> None:
    store = Store()
    checkpoint = Checkpointer(store.snapshot, store.write)
    assert await checkpoint.flush()
    assert not await checkpoint.flush()  # idle: nothing to write
    store.value = 1
    assert await checkpoint.flush()
    assert store.written == [0, 1] and checkpoint.writes == 2


async def test_nothing_is_written_after_close() -> None:
    store = Store()
    checkpoint = Checkpointer(store.snapshot, store.write)
    await checkpoint.close()
    store.value = 5
    assert not await checkpoint.flush()
    assert store.written == []


async def test_a_failed_write_is_logged_once_and_retried(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    store = Store()
    checkpoint = Checkpointer(store.snapshot, store.write)
    store.fail = True
    assert not await checkpoint.flush()
    assert not await checkpoint.flush()
    assert len([r for r in caplog.records if "could not write" in r.getMessage()]) == 1
    store.fail = False
    assert await checkpoint.flush()  # the same snapshot: it was never stored
    assert store.written == [0]


async def test_the_task_writes_each_interval_while_something_changes() -> None:
    store = Store()
    written = anyio.Event()

    def write(value: int) -> None:
        store.write(value)
        if len(store.written) == 3:
            written.set()

    def snapshot() -> int:
        store.value += 1  # always changing
        return store.value

    checkpoint = Checkpointer(snapshot, write, interval=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(checkpoint.run)
        with anyio.fail_after(5):
            await written.wait()
        await checkpoint.close()
        tg.cancel_scope.cancel()
    assert store.written[:3] == [1, 2, 3]


def test_cost_of_a_durable_merged_write_is_reported(tmp_path: Path) -> None:
    """Not a limit, a figure: ``pytest -s`` prints the cost of one checkpoint of 64 shards."""
    url = "wss://gateway-us-east1-b.discord.gg"
    records = {i: SessionRecord(i, f"{i:032x}", url, 10**6 + i) for i in range(64)}
    marks = [WorkerMark(1000 + w, "1234567", tuple(range(w * 16, w * 16 + 16)))
             for w in range(4)]
    n = 50
    start = time.perf_counter()
    for i in range(n):
        save(tmp_path / "state.json", "t", 64, records, shard_ids=range(64), workers=marks,
             now=1000.0 + i)
    print(f"\ncheckpoint of 64 shards: {(time.perf_counter() - start) / n * 1e6:.0f} µs/write")
