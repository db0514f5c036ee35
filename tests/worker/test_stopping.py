"""close_in_groups: a stop closes shards a bounded group at a time, and gives up in time."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from shardctl.worker.stopping import close_in_groups

pytestmark = pytest.mark.anyio


class FakeShard:
    """A shard whose close takes a few loop passes (or never ends, ``hangs``)."""

    open_closes = 0
    most_at_once = 0

    def __init__(self, hangs: bool = False) -> None:
        self.hangs = hangs
        self.closed_with: tuple[str, int] | None = None

    async def shutdown(self, why: str = "shutdown", code: int = 4009) -> None:
        cls = type(self)
        cls.open_closes += 1
        cls.most_at_once = max(cls.most_at_once, cls.open_closes)
        try:
            if self.hangs:
                await anyio.Event().wait()
            for _ in range(3):
                await anyio.lowlevel.checkpoint()
            self.closed_with = (why, code)
        finally:
            cls.open_closes -= 1


@pytest.fixture(autouse=True)
def fresh_counts() -> None:
    FakeShard.open_closes = FakeShard.most_at_once = 0


async def test_every_shard_closes_with_the_code_and_never_more_than_a_group_at_once() -> None:
    shards = [FakeShard() for _ in range(100)]
    with anyio.fail_after(10):
        await close_in_groups(shards, "worker stopping", 4009, group=8)
    assert all(s.closed_with == ("worker stopping", 4009) for s in shards)
    assert FakeShard.most_at_once == 8


async def test_fewer_shards_than_a_group_all_close() -> None:
    shards = [FakeShard() for _ in range(3)]
    await close_in_groups(shards, "bye", 4000, group=32)
    assert [s.closed_with for s in shards] == [("bye", 4000)] * 3


async def test_closes_that_never_end_give_way_to_the_deadline() -> None:
    shards = [FakeShard(hangs=True), FakeShard(hangs=True), *(FakeShard() for _ in range(5))]
    with anyio.fail_after(10), anyio.move_on_after(0.2) as deadline:
        await close_in_groups(shards, "bye", 4009, group=2)
    assert deadline.cancelled_caught
    assert FakeShard.open_closes == 0  # the hanging closes were cancelled
    assert all(s.closed_with is None for s in shards)  # the rest never started


async def test_a_group_needs_a_shard() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await close_in_groups([FakeShard()], "bye", 4009, group=0)
