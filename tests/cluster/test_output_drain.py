"""The end of a stop for ``output=``: what it received is delivered (bounded), and what it
did not get decides the seq saved (cluster/fanout.py, cluster/stop_drain.py)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from shardctl.cluster.fanout import BatchHook, EventFanout
from shardctl.cluster.sessions import SessionRecord
from shardctl.cluster.stop_drain import lowered, undelivered_caps
from shardctl.ipc.events import Event

pytestmark = pytest.mark.anyio


def event(t: str, shard: int, seq: int | None) -> Event:
    return Event(t, shard, seq, 0, b"{}")


class Hook:
    def __init__(self) -> None:
        self.installed: BatchHook | None = None

    def __call__(self, hook: BatchHook | None) -> None:
        self.installed = hook


async def test_a_stop_delivers_everything_output_already_received() -> None:
    hook = Hook()
    fanout = EventFanout(hook)
    got: list[int] = []

    async def output(e: Event) -> None:
        await anyio.lowlevel.checkpoint()
        got.append(e.seq or 0)

    async with anyio.create_task_group() as tg:
        await tg.start(fanout.feed, output)
        assert hook.installed is not None
        hook.installed([event("MESSAGE_CREATE", 0, seq) for seq in range(1, 501)])
        with anyio.fail_after(5):
            assert await fanout.drain_output(5.0) == []
    assert got == list(range(1, 501))


async def test_a_drain_that_runs_out_returns_what_output_did_not_get_in_order() -> None:
    hook = Hook()
    fanout = EventFanout(hook)
    got: list[int] = []
    release = anyio.Event()

    async def output(e: Event) -> None:
        got.append(e.seq or 0)
        if e.seq == 3:
            await release.wait()  # stuck on the third event

    async with anyio.create_task_group() as tg:
        await tg.start(fanout.feed, output)
        assert hook.installed is not None
        hook.installed([event("MESSAGE_CREATE", 0, seq) for seq in range(1, 11)])
        started = anyio.current_time()
        with anyio.fail_after(5):
            left = await fanout.drain_output(0.2)
        assert anyio.current_time() - started < 2.0
    assert [e.seq for e in left] == list(range(3, 11))  # the one it was cut off in, too
    assert got == [1, 2, 3]


async def test_without_an_output_there_is_nothing_to_drain() -> None:
    assert await EventFanout(Hook()).drain_output(1.0) == []


def test_the_cap_is_just_below_the_first_event_output_did_not_get() -> None:
    left = [event("MESSAGE_CREATE", 0, 41), event("SHARD_DISCONNECT", 1, None),
            event("MESSAGE_CREATE", 1, 7), event("MESSAGE_CREATE", 0, 42)]
    assert undelivered_caps(left) == {0: 40, 1: 6}


def test_an_undelivered_ready_caps_its_shard_at_the_ready() -> None:
    left = [event("MESSAGE_CREATE", 0, 900), event("READY", 0, 1),
            event("MESSAGE_CREATE", 0, 2)]
    assert undelivered_caps(left) == {0: 1}  # the new session, replayed after its READY


def test_caps_only_ever_lower_a_saved_seq() -> None:
    records = [SessionRecord(0, "a", "wss://x", 50), SessionRecord(1, "b", "wss://x", 10),
               SessionRecord(2, "c", "wss://x", 5)]
    assert [r.seq for r in lowered(records, {0: 40, 1: 20})] == [40, 10, 5]
