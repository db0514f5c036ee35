"""The cluster against the sandbox: real worker processes, the bus, a consumer process."""

from __future__ import annotations

import os
import signal
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
    env_with_runtime,
    push_messages,
    resumes,
    short_dir,
    terminate,
)

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.cluster.restarts import RestartPolicy
from shardctl.cluster.supervisor import CrashLoopError, Supervisor
from shardctl.gateway.intents import Intents
from shardctl.gateway.limits import Limits
from shardctl.ipc.events import Event
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def sandbox_config(shards: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.2,
                         heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)


def supervisor(sb: Sandbox, run_dir: Path, processes: int,
               intents: Intents | None = None) -> Supervisor:
    return Supervisor(token=TOKEN, api_url=sb.api_url, processes=processes,
                      identify_interval=0.2, runtime_dir=run_dir,
                      intents=Intents.default() if intents is None else intents,
                      state_file=run_dir / "state.json")


def expected(sent: dict[int, list[int]]) -> Counter[tuple[int, int]]:
    return Counter((shard, seq) for shard, seqs in sent.items() for seq in seqs)


async def test_every_event_reaches_a_consumer_process_exactly_once() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(16)) as sb, supervisor(sb, run_dir, 4) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                sent = await push_messages(sb, list(range(16)), 50)
                with anyio.fail_after(30):
                    await consumer.wait_for(16 * 50)
                assert consumer.seen == expected(sent)
            assert not sb.violations


async def test_a_batched_consumer_process_gets_every_event_exactly_once_too() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(8)) as sb, supervisor(sb, run_dir, 2) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            assert sup.endpoints["events_batch"] == f"ipc://{run_dir}/events-batch.sock"
            async with consumer_process(sup.endpoints["events_batch"], "MESSAGE_CREATE",
                                        batched=True) as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(batched=True)
                sent = await push_messages(sb, list(range(8)), 100)
                with anyio.fail_after(30):
                    await consumer.wait_for(8 * 100)
                assert consumer.seen == expected(sent)
                outlet = sup._forwarder.outlet if sup._forwarder is not None else None
                assert outlet is not None and outlet.events >= 8 * 100
                assert 0 < outlet.messages <= outlet.events
            assert not sb.violations


async def test_a_publish_window_sends_a_trickle_in_fewer_batches_and_loses_nothing() -> None:
    """``--publish-window-ms``: the workers hold events for others to travel with them.
    Events 10 ms apart each went alone (one batch per loop pass); with a 100 ms window the
    next event takes a batch along once it is 50 ms old, so batches hold several."""
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(2)) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                           runtime_dir=run_dir, state_file=run_dir / "state.json",
                           publish_window_ms=100) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            async with consumer_process(sup.endpoints["events_batch"], "MESSAGE_CREATE",
                                        batched=True) as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(batched=True)
                assert sup._forwarder is not None
                batches = sup._forwarder.stats.batches
                sent: dict[int, list[int]] = {0: []}
                for _ in range(40):
                    sent[0] += (await push_messages(sb, [0], 1))[0]
                    await anyio.sleep(0.01)  # the load's shape: a trickle, not a burst
                with anyio.fail_after(30):
                    await consumer.wait_for(40)
                assert consumer.seen == expected(sent)
                assert sup._forwarder.stats.batches - batches <= 20
            assert not sb.violations


async def test_the_first_identifies_wait_until_every_shard_has_asked() -> None:
    # Workers boot at different moments; the limiter's start gate lets every bucket start
    # together, so no bucket's queue starts late (cluster/supervisor.py, START_GATE_QUIET).
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(16)) as sb, supervisor(sb, run_dir, 4) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            hellos = [r.at for r in sb.records("hello")]
            identifies = [r.at for r in sb.records("identify")]
    assert len(hellos) == len(identifies) == 16
    assert max(hellos) < min(identifies)


async def test_killed_worker_is_respawned_and_resumes_without_loss() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(16)) as sb, supervisor(sb, run_dir, 4) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            victim = sup.slots[1]
            victim_shards, old_pid = list(victim.shard_ids), victim.pid
            assert old_pid is not None
            identifies_before = accepted_identifies(sb)
            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                sent = await push_messages(sb, list(range(16)), 20)
                os.kill(old_pid, signal.SIGKILL)  # mid-stream: events keep coming
                more = await push_messages(sb, list(range(16)), 20)
                with anyio.fail_after(30):
                    await sup.wait_until(lambda shards: all(
                        s.state == "ready" and s.pid != old_pid for s in shards
                        if s.id in victim_shards))
                    await consumer.wait_for(16 * 40)
                for shard, seqs in more.items():
                    sent[shard] += seqs
                assert consumer.seen == expected(sent)
            assert victim.restarts == 1
            assert accepted_identifies(sb) == identifies_before, "a RESUME was possible"
            assert all(resumes(sb, s) >= 1 for s in victim_shards)
            assert not sb.violations


async def test_commands_route_to_the_owning_shard_and_status_is_accurate() -> None:
    with short_dir() as run_dir:
        # Fetching every member needs the (privileged) GUILD_MEMBERS intent (protocol §11).
        intents = Intents.default() | Intents.GUILD_MEMBERS
        async with Sandbox(sandbox_config(4)) as sb, \
                supervisor(sb, run_dir, 2, intents) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            status = sup.status()
            pids = {slot.pid for slot in sup.slots}
            assert [s.id for s in status] == [0, 1, 2, 3]
            assert all(s.state == "ready" and s.pid in pids and s.guilds == 2 for s in status)
            assert all(s.session_id for s in status)
            for shard_id in range(4):
                guild = sb.world.guilds_for(shard_id, 4)[0]
                assert sup.shard_of(guild.id) == shard_id
                reply = await sup.update_voice(guild.id, guild.voice_channel_id)
                assert reply, reply.error
                assert reply.shard == shard_id
                members = await sup.fetch_guild_members(guild.id, timeout=5.0)
                assert members, members.error
                assert len(members.value) == sb.config.members_per_guild
            commands = sb.records("command")
            voice = [c for c in commands if c.get("op") == 4]
            assert sorted(c.shard_id for c in voice) == [0, 1, 2, 3]
            replies = await sup.update_status(
                {"since": None, "activities": [], "status": "dnd", "afk": False})
            assert [r.shard for r in replies if r.ok] == [0, 1, 2, 3]
            assert not sb.violations


async def test_sigterm_saves_sessions_and_the_next_start_resumes_them() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb:
            args = [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
                    "--api-url", sb.api_url, "--processes", "2", "--identify-interval", "0.2",
                    "--state-file", str(run_dir / "state.json")]
            env = env_with_runtime(run_dir)
            first = await anyio.open_process(args, env=env)
            try:
                with anyio.fail_after(30):
                    await sb.wait_for(lambda: accepted_identifies(sb) == 4, timeout=30)
                    await sb.wait_for(lambda: len(sb.records("ready")) == 4, timeout=30)
                first.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    assert await first.wait() == 0
            finally:
                await terminate(first)
            closes = [r.get("code") for r in sb.records("client_close")]
            assert closes and all(code not in (1000, 1001) for code in closes)
            second = await anyio.open_process(args, env=env)
            try:
                with anyio.fail_after(30):
                    await sb.wait_for(lambda: resumes(sb) == 4, timeout=30)
            finally:
                await terminate(second)
            assert accepted_identifies(sb) == 4, "the restart identified instead of resuming"
            assert not sb.violations


async def test_events_in_process_and_output_callback_see_the_stream() -> None:
    got: list[tuple[int, int | None]] = []
    all_output = anyio.Event()

    def output(event: Event) -> None:
        if event.type == "MESSAGE_CREATE":
            got.append((event.shard, event.seq))
            if len(got) == 10:
                all_output.set()

    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(2)) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                           runtime_dir=run_dir, state_file=run_dir / "s.json",
                           output=output) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            seen: list[tuple[int, int | None, str]] = []
            async with anyio.create_task_group() as tg:
                async def listen(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                    stream = sup.events("MESSAGE_CREATE")
                    task_status.started()
                    async for event in stream:
                        seen.append((event.shard, event.seq, event.d["id"]))
                        if len(seen) == 10:
                            return

                await tg.start(listen)
                await anyio.wait_all_tasks_blocked()
                sent = await push_messages(sb, [0, 1], 5)
            assert sorted((s, q) for s, q, _ in seen) == sorted(expected(sent))
            assert {c for _, _, c in seen} == {str(10_000 + i) for i in range(5)}
            with anyio.fail_after(10):
                await all_output.wait()
            assert sorted(got) == sorted(expected(sent))


async def test_a_shared_remote_limiter_paces_the_cluster() -> None:
    with short_dir() as run_dir:
        server = SessionLimiterService(f"ipc://{run_dir}/shared-limiter", Limits(interval=0.2))
        async with Sandbox(sandbox_config(4)) as sb, anyio.create_task_group() as tg:
            endpoint = await tg.start(server.serve)
            async with Supervisor(token=TOKEN, api_url=sb.api_url, processes=2,
                                  identify_interval=0.2, runtime_dir=run_dir,
                                  state_file=run_dir / "s.json", limiter=endpoint) as sup:
                with anyio.fail_after(30):
                    await sup.wait_ready()
                assert sup.limiter is None
                assert len(server.grants()) == 4
                # the supervisor told it the bot's limits from GET /gateway/bot
                assert server.scheduler.max_concurrency == sb.config.max_concurrency
            tg.cancel_scope.cancel()
        assert not sb.violations


async def test_a_crash_loop_stops_the_cluster_with_a_clear_error() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(2)) as sb:
            sup = Supervisor(token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                             runtime_dir=run_dir, state_file=run_dir / "s.json",
                             restart_policy=lambda: RestartPolicy(max_restarts=1, window=60.0))
            with pytest.raises(CrashLoopError, match="worker 0 exited 2 times within 60 s"):
                async with sup:
                    with anyio.fail_after(30):
                        await sup.wait_ready()
                        first = sup.slots[0].pid
                        assert first is not None
                        os.kill(first, signal.SIGKILL)
                        await sup.wait_until(lambda shards: all(
                            s.state == "ready" and s.pid not in (None, first) for s in shards))
                        second = sup.slots[0].pid
                        assert second is not None
                        os.kill(second, signal.SIGKILL)  # the second death within the window
                        await sup.run()


async def test_a_frozen_worker_is_replaced_and_its_shards_resume() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(2)) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                           runtime_dir=run_dir, state_file=run_dir / "s.json",
                           beat_interval=0.2, liveness_timeout=1.0) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            pid = sup.slots[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            with anyio.fail_after(30):
                await sb.wait_for(lambda: resumes(sb) == 2, timeout=30)
            assert sup.slots[0].pid != pid
            assert accepted_identifies(sb) == 2
            assert not sb.violations


async def test_the_start_is_refused_when_the_session_budget_is_short(tmp_path: Path) -> None:
    config = SandboxConfig(shard_count=4, max_concurrency=4, identify_interval=0.2,
                           session_start_remaining=3)
    async with Sandbox(config) as sb:
        args = [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
                "--api-url", sb.api_url, "--identify-interval", "0.2",
                "--state-file", str(tmp_path / "state.json")]
        result = await anyio.run_process(args, check=False, env=env_with_runtime(tmp_path))
        assert result.returncode == 5
        assert b"4 shards must IDENTIFY but only 3 of 1000" in result.stderr
        assert b"Traceback" not in result.stderr
        assert accepted_identifies(sb) == 0
