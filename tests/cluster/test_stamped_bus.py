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
from clusterkit import TOKEN, push_messages, short_dir

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
        restamped = fwd.stats.restamped
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
            sent = await push_messages(sb, list(range(shards)), 30)
            os.kill(old_pid, signal.SIGKILL)  # mid-stream: events keep coming
            more = await push_messages(sb, list(range(shards)), 30)
            with anyio.fail_after(40):
                await read_until(consumer, got, shards * 60)
                await sup.wait_until(lambda status: all(
                    s.state == "ready" and s.pid != old_pid for s in status
                    if s.id in victim.shard_ids))
        assert victim.restarts == 1
    messages = sorted((e.shard, e.seq) for e in got if e.type == "MESSAGE_CREATE")
    assert messages == sorted((shard, seq) for part in (sent, more)
                              for shard, seqs in part.items() for seq in seqs)
    numbers: dict[tuple[str, int], list[int]] = defaultdict(list)
    for event in got:
        numbers[(event.type, event.shard)].append(event.bus_seq)
    for key, seqs in numbers.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), key  # no repeat, no gap
    assert {e.epoch for e in got} == {fwd.epoch}
    # The workers' batches went through as they were; a respawn that raced the dead worker's
    # last batch may make each of its shards' keys need one renumbering here, no more.
    assert fwd.stats.stamped - stamped >= 10
    assert fwd.stats.restamped - restamped <= len(victim.shard_ids)


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
            sent = 0
            with anyio.fail_after(30):
                while not fwd.stats.rebased:  # until a batch big enough to compare
                    sent += len((await push_messages(sb, [0], 20))[0])
                    await read_until(consumer, got, sent)
                stamped = fwd.stats.stamped
                while fwd.stats.stamped == stamped:  # the worker has moved
                    sent += len((await push_messages(sb, [0], 20))[0])
                    await read_until(consumer, got, sent)
    numbers = [e.bus_seq for e in got if e.type == "MESSAGE_CREATE"]
    assert numbers == list(range(1001, 1001 + sent))
    assert fwd.stats.rebased == 1
