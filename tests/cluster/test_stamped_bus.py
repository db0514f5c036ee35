"""Workers write the consumer frames (issue 14): in a real cluster the supervisor forwards
the workers' stamped batches untouched, and a respawned worker numbers on from where the
dead one's forwarded events stopped, so consumers see every (type, shard) contiguous."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from clusterkit import TOKEN, blast, push_messages, short_dir

from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.bus import EventForwarder
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import VERSION, Event
from shardctl.ipc.watermarks import counter_key
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def read_until(consumer: Consumer, got: list[Event], messages: int) -> None:
    async for batch in consumer.batches():
        got += batch
        if sum(e.type == "MESSAGE_CREATE" for e in got) >= messages:
            return


@asynccontextmanager
async def cluster(shards: int, processes: int
                  ) -> AsyncIterator[tuple[Sandbox, Supervisor, EventForwarder]]:
    """A READY cluster against the sandbox, and its supervisor's forwarder."""
    config = SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.2,
                           heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)
    with short_dir() as run_dir:
        async with Sandbox(config) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=processes,
                           identify_interval=0.2, runtime_dir=run_dir,
                           state_file=run_dir / "state.json") as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            assert sup._forwarder is not None
            yield sb, sup, sup._forwarder


async def test_stamped_batches_go_through_untouched_and_a_respawn_numbers_on() -> None:
    shards = 8
    async with cluster(shards, 2) as (sb, sup, fwd):
        victim = sup.slots[1]
        old_pid = victim.pid
        assert old_pid is not None
        got: list[Event] = []
        async with Consumer(sup.endpoints["events_batch"], batched=True,
                            hwm=100_000) as consumer:
            consumer.open()
            with anyio.fail_after(10):
                await sup.wait_subscribed(batched=True)
            stamped = fwd.stats.stamped
            sent = await blast(sb, 200)  # batches of several events per shard
            os.kill(old_pid, signal.SIGKILL)  # mid-stream: events keep coming
            more = await push_messages(sb, list(range(shards)), 30)
            sent |= {(shard, seq) for shard, seqs in more.items() for seq in seqs}
            with anyio.fail_after(40):
                await read_until(consumer, got, len(sent))
                await sup.wait_until(lambda status: all(
                    s.state == "ready" and s.pid != old_pid for s in status
                    if s.id in victim.shard_ids))
        assert victim.restarts == 1
    # the workers' batches went through as they were (the survivor's 800 events of the
    # blast alone fill 13 batches or more)
    assert fwd.stats.stamped - stamped >= 10
    messages = sorted((e.shard, e.seq) for e in got if e.type == "MESSAGE_CREATE")
    assert messages == sorted(sent)
    numbers: dict[tuple[str, int], list[int]] = defaultdict(list)
    for event in got:
        numbers[(event.type, event.shard)].append(event.bus_seq)
    for key, seqs in numbers.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), key  # no repeat, no gap
    assert {e.epoch for e in got} == {fwd.epoch}


async def test_a_worker_out_of_step_is_rebased_over_the_control_channel() -> None:
    """The bus moves ahead of a worker's numbering (as a respawn that raced the dead
    worker's last batch would): the supervisor renumbers its batches, sends it a rebase, and
    its batches then go through untouched again, numbered on without a gap."""
    async with cluster(2, 1) as (sb, sup, fwd):
        got: list[Event] = []
        async with Consumer(sup.endpoints["events_batch"], batched=True) as consumer:
            consumer.open()
            with anyio.fail_after(10):
                await sup.wait_subscribed(batched=True)
            fwd._counters[counter_key(b"MESSAGE_CREATE", 0, VERSION)] = 1000
            sent: set[tuple[int, int]] = set()
            with anyio.fail_after(30):
                while not fwd.stats.rebased:  # one event at a time: batches of one event
                    sent |= {(0, seq) for seq in (await push_messages(sb, [0], 1))[0]}
                    await read_until(consumer, got, len(sent))
                stamped = fwd.stats.stamped
                while fwd.stats.stamped == stamped:  # the worker has moved
                    sent |= await blast(sb, 100)  # batches of many events
                    await read_until(consumer, got, len(sent))
    numbers = [e.bus_seq for e in got if e.type == "MESSAGE_CREATE" and e.shard == 0]
    assert numbers == list(range(1001, 1001 + sum(shard == 0 for shard, _ in sent)))
    assert fwd.stats.rebased == 1
