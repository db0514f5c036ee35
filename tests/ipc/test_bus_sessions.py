"""The forwarder compares a seq only with seqs of its own gateway session (issue 14, "Two
truths": a lost READY made the new session's events up to the old seq count as replays)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.events import Event, session_tag
from shardctl.ipc.publishers import new_publish_key

pytestmark = pytest.mark.anyio

OLD, NEW = session_tag("old-session"), session_tag("new-session")
DONE = "TEST_DONE"  # a seq-less event: everything before it was forwarded


def frame(t: str, seq: int) -> bytes:
    return b'{"op":0,"s":%d,"t":"%s","d":{}}' % (seq, t.encode())


@asynccontextmanager
async def bus(tmp_path: Path, seen: list[Event], **fwd_kwargs: object
              ) -> AsyncIterator[tuple[EventForwarder, EventPublisher, anyio.Event]]:
    """A forwarder collecting what it forwards, and one worker's publisher for shard 0."""
    done = anyio.Event()

    def on_batch(events: Sequence[Event]) -> None:
        seen.extend(e for e in events if e.type != DONE)
        if any(e.type == DONE for e in events):
            done.set()

    fwd = EventForwarder(f"ipc://{tmp_path}/in", f"ipc://{tmp_path}/out", on_batch=on_batch)
    for name, value in fwd_kwargs.items():
        getattr(fwd, name).update(value)
    key = new_publish_key()
    fwd.publishers.authorize(0, key, [0])
    pub = EventPublisher(fwd.inbound, worker=0, publish_key=key)
    async with anyio.create_task_group() as tg:
        await tg.start(fwd.run)
        await tg.start(pub.run)
        with anyio.fail_after(10):
            await pub.wait_subscribed()
            yield fwd, pub, done
        tg.cancel_scope.cancel()


async def finish(pub: EventPublisher, done: anyio.Event) -> None:
    pub.publish(0, DONE, None, b"{}")
    with anyio.fail_after(10):
        await done.wait()


async def test_a_new_session_whose_ready_was_lost_is_not_taken_for_replays(
        tmp_path: Path) -> None:
    seen: list[Event] = []
    ready = (b'{"op":0,"s":1,"t":"READY","d":{"session_id":"old-session",'
             b'"resume_gateway_url":"wss://r.example/"}}')
    async with bus(tmp_path, seen) as (fwd, pub, done):
        pub.publish(0, "READY", 1, ready, session=OLD)
        for seq in range(2, 11):
            pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq), session=OLD)
        # the shard re-IDENTIFYs; the new session's READY never reaches the bus
        for seq in range(2, 6):
            pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq), session=NEW)
        await finish(pub, done)
    assert [e.seq for e in seen] == [*range(1, 11), *range(2, 6)]
    assert fwd.stats.duplicates == 0
    assert fwd.stats.unseen_sessions == 1
    assert fwd.last_seq == {0: 5}
    # never the old session with the new session's seq: nothing to RESUME, so it IDENTIFYs
    assert 0 not in fwd.last_session


async def test_a_resumed_session_s_replays_are_still_dropped_after_a_supervisor_restart(
        tmp_path: Path) -> None:
    seen: list[Event] = []
    saved = {0: ("old-session", "wss://r.example/")}
    async with bus(tmp_path, seen, last_seq={0: 7}, last_session=saved) as (fwd, pub, done):
        for seq in range(5, 10):  # Discord replays from the seq the respawned worker had
            pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq), session=OLD)
        await finish(pub, done)
    assert [e.seq for e in seen] == [8, 9]
    assert fwd.stats.duplicates == 3
    assert fwd.last_session == saved


async def test_a_session_s_events_after_its_ready_compare_within_it(tmp_path: Path) -> None:
    seen: list[Event] = []
    ready = b'{"op":0,"s":1,"t":"READY","d":{"session_id":"new-session"}}'
    async with bus(tmp_path, seen, last_seq={0: 7},
                   last_session={0: ("old-session", "wss://r.example/")}) as (fwd, pub, done):
        pub.publish(0, "READY", 1, ready, session=NEW)
        for seq in [2, 3, 2, 4]:  # a replay inside the new session is still one
            pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq), session=NEW)
        await finish(pub, done)
    assert [e.seq for e in seen] == [1, 2, 3, 4]
    assert fwd.stats.duplicates == 1
    assert fwd.stats.unseen_sessions == 0
    assert fwd.last_seq == {0: 4}
