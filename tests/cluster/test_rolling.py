"""Drain and rolling restart under load (issue 16): real workers, the sandbox as Discord.

While MESSAGE_CREATE flow to every shard, a worker (or every worker, one at a time) is
replaced by a fresh process.  The proof: the sandbox accepted no IDENTIFY during the
operation, every drained shard RESUMEd, a consumer process saw every (shard, seq) exactly
once, and the sandbox recorded no violation (never two connections on one session).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import anyio
import anyio.abc
import pytest
from clusterkit import (
    TOKEN,
    accepted_identifies,
    consumer_process,
    push_messages,
    resumes,
    short_dir,
)

from shardctl.cli.statusview import format_table
from shardctl.cluster.rolling import OperationRefusedError
from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.operations import OperationError, request_operation
from shardctl.ipc.status import request_status
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.sandbox.blast import Blast

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def sandbox_config(shards: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.2,
                         heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)


def supervisor(sb: Sandbox, run_dir: Path, processes: int) -> Supervisor:
    return Supervisor(token=TOKEN, api_url=sb.api_url, processes=processes,
                      identify_interval=0.2, runtime_dir=run_dir,
                      state_file=run_dir / "state.json")


class Load:
    """MESSAGE_CREATE to every shard, a few hundred a second, until stopped: the sandbox
    buffers what a closed session misses and replays it on RESUME, as Discord does."""

    def __init__(self, sb: Sandbox, shards: int) -> None:
        self.sb, self.shards = sb, list(range(shards))
        self.sent: Counter[tuple[int, int]] = Counter()
        self.stopped = anyio.Event()

    async def run(self) -> None:
        while not self.stopped.is_set():
            for shard, seqs in (await push_messages(self.sb, self.shards, 2)).items():
                self.sent.update((shard, seq) for seq in seqs)
            await anyio.sleep(0.02)  # the pace of the load, not a synchronisation


async def start_blast(tg: anyio.abc.TaskGroup, sb: Sandbox, load: Load, count: int
                      ) -> Blast:
    """``count`` MESSAGE_CREATE per live session written as fast as each socket drains,
    started now (its seqs count as sent): the operation begins while it is being written."""
    burst = Blast(sb, count)
    tg.start_soon(burst.run)
    await burst.prepared.wait()
    for shard, (first, last) in burst.sent.items():
        load.sent.update((shard, seq) for seq in range(first, last + 1))
    burst.go()
    return burst


async def cli(*args: str) -> tuple[int, str, str]:
    done = await anyio.run_process([sys.executable, "-m", "shardctl.cli", *args],
                                   check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_a_drained_workers_shards_resume_in_a_fresh_process_losing_nothing() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(6)) as sb, supervisor(sb, run_dir, 2) as sup, \
                anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                await sup.wait_ready()
            victim = sup.slots[1]
            drained, old_pid = list(victim.shard_ids), victim.pid
            identifies = accepted_identifies(sb)
            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                load = Load(sb, 6)
                tg.start_soon(load.run)
                with anyio.fail_after(30):  # under load before, during and after
                    await consumer.wait_for(60)
                burst = await start_blast(tg, sb, load, 2000)
                code, out, err = await cli("drain", "--worker", "1", "--control-endpoint",
                                           sup.endpoints["control"])
                assert code == 0, err
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()) + 60)
                load.stopped.set()
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()))
                assert burst.done.is_set()
                assert consumer.seen == load.sent, "an event was lost or delivered twice"
            body = await request_status(sup.endpoints["control"])
        print(out, sup.event_totals.totals(1), sup.event_totals.totals(5))
        last = out.rstrip().splitlines()[-1]
        assert last.startswith("drain of worker 1: 1/1 workers replaced; 3 shards RESUMEd, "
                               "0 IDENTIFYed"), out
        assert last.endswith("done"), out
        assert accepted_identifies(sb) == identifies, "the drain spent an IDENTIFY"
        assert all(resumes(sb, s) == 1 for s in drained)
        assert victim.pid != old_pid and victim.restarts == 0
        assert body["operation"]["state"] == "done"
        assert body["operation"]["resumed"] == len(drained)
        assert "drain of worker 1" in format_table(body)
        assert not sb.violations


async def test_a_rolling_restart_replaces_every_worker_one_at_a_time_losing_nothing() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(6)) as sb, supervisor(sb, run_dir, 3) as sup, \
                anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                await sup.wait_ready()
            old_pids = [slot.pid for slot in sup.slots]
            identifies = accepted_identifies(sb)
            at_once: list[int] = []

            async def watch_phases() -> None:
                while True:
                    progress = sup.operation
                    if progress is not None:
                        at_once.append(len(progress["phases"]))
                    await sup.wait_operation_changed()

            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                load = Load(sb, 6)
                tg.start_soon(load.run)
                tg.start_soon(watch_phases)
                with anyio.fail_after(30):
                    await consumer.wait_for(60)
                burst = await start_blast(tg, sb, load, 2000)
                with anyio.fail_after(90):
                    final = await sup.restart_workers(rolling=True)
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()) + 60)
                load.stopped.set()
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()))
                assert burst.done.is_set()
                assert consumer.seen == load.sent, "an event was lost or delivered twice"
            tg.cancel_scope.cancel()
        assert final["state"] == "done" and final["done"] == [0, 1, 2]
        assert (final["resumed"], final["identified"]) == (6, 0)
        assert max(at_once) == 1, "two workers were replaced at once"
        assert accepted_identifies(sb) == identifies, "the restart spent an IDENTIFY"
        assert all(resumes(sb, s) == 1 for s in range(6))
        assert all(slot.pid not in old_pids and slot.restarts == 0 for slot in sup.slots)
        assert not sb.violations


async def test_restart_workers_all_at_once_resumes_every_shard_losing_nothing() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb, supervisor(sb, run_dir, 2) as sup, \
                anyio.create_task_group() as tg:
            with anyio.fail_after(30):
                await sup.wait_ready()
            old_pids = [slot.pid for slot in sup.slots]
            identifies = accepted_identifies(sb)
            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                load = Load(sb, 4)
                tg.start_soon(load.run)
                with anyio.fail_after(30):
                    await consumer.wait_for(40)
                burst = await start_blast(tg, sb, load, 2000)
                code, out, err = await cli("restart-workers", "--all-at-once",
                                           "--control-endpoint", sup.endpoints["control"])
                assert code == 0, err
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()) + 40)
                load.stopped.set()
                with anyio.fail_after(30):
                    await consumer.wait_for(sum(load.sent.values()))
                assert burst.done.is_set()
                assert consumer.seen == load.sent, "an event was lost or delivered twice"
        last = out.rstrip().splitlines()[-1]
        assert last.startswith("restart of workers: 2/2 workers replaced; 4 shards RESUMEd, "
                               "0 IDENTIFYed"), out
        assert accepted_identifies(sb) == identifies, "the restart spent an IDENTIFY"
        assert all(slot.pid not in old_pids and slot.restarts == 0 for slot in sup.slots)
        assert not sb.violations


async def test_a_drain_is_refused_for_a_busy_or_unknown_worker_or_a_bad_argument() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(2)) as sb, supervisor(sb, run_dir, 2) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            endpoint = sup.endpoints["control"]
            with pytest.raises(OperationError, match="no worker 7: this cluster runs "
                                                     "workers 0-1"):
                await request_operation(endpoint, "drain", {"worker": 7})
            with pytest.raises(OperationError, match="drain: worker must be"):
                await request_operation(endpoint, "drain", {"worker": "1"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(sup.drain_worker, 0)
                await sup.wait_operation_changed()  # started
                with pytest.raises(OperationError, match="worker 0 is already being drained"):
                    await request_operation(endpoint, "drain", {"worker": 0})
                with pytest.raises(OperationRefusedError, match="drain of worker 0 is in "
                                                                "progress"):
                    await sup.restart_workers()
            assert sup.operation is not None and sup.operation["state"] == "done"
            code, _, err = await cli("drain", "--worker", "5", "--control-endpoint", endpoint,
                                     "--timeout", "5")
        assert code == 1
        assert err.strip() == "Error: no worker 5: this cluster runs workers 0-1"
        assert not sb.violations
