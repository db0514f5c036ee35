"""`shardctl run --stream` as a real process against the sandbox and real nats-servers.

Every proof counts (shard, seq) of MESSAGE_CREATE: what the sandbox's blasts sent, what
the stream stores (its per-subject message counts: stored twice would show), what
consumer processes printed.  Event counts are scaled down from the issue's 50,000 where
the guarantee does not depend on volume (a kill lands mid-stream either way); the first
test keeps the issue's 16 shards / 4 workers / 50,000 events.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import orjson
import pytest
from streamkit import (
    Checker,
    all_ready,
    checkpointed,
    env_with_runtime,
    kill9,
    log_has,
    metrics_when,
    pulling,
    redelivered,
    run_args,
    sandbox_config,
    short_dir,
    start_blast,
    start_run,
    stored,
    stored_count,
    stream_reader,
    terminate,
)

from shardctl.ports import unused_port
from shardctl.sandbox import Sandbox
from shardctl.stream.server import NatsCluster, NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.timeout(240)
async def test_a_consumer_killed_mid_stream_resumes_its_durable_duplicating_only_unacked(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """16 shards / 4 workers / 50,000 events; the consumer process is SIGKILLed after
    5,000 and started again with the same durable name."""
    url = nats_server.url
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(16)) as sb, anyio.create_task_group() as tg:
            run = await start_run(run_args(sb, run_dir / "state.json", url, processes=4),
                                  env_with_runtime(run_dir), tmp_path / "run.log")
            try:
                with anyio.fail_after(90):
                    await all_ready(sb, 16)
                sent = await start_blast(sb, 3125, tg)
                assert len(sent) == 50_000
                with anyio.fail_after(120):
                    async with stream_reader(url, "bot", tmp_path / "first.err",
                                             "--ack-wait", "2") as first:
                        await first.wait_for(5_000)
                        await kill9(first.process)
                    async with stream_reader(url, "bot", tmp_path / "second.err",
                                             "--ack-wait", "2") as second:
                        await second.wait_for_all(sent - first.seen.keys())
            finally:
                await terminate(run)
                tg.cancel_scope.cancel()
    seen = first.seen + second.seen
    assert set(seen) == sent, "an event was never processed"
    duplicates = {key for key, n in seen.items() if n > 1}
    # only what the first process had printed but not yet acknowledged (one fetch at most)
    assert duplicates <= redelivered(tmp_path / "second.err")
    assert len(duplicates) <= 256
    assert max(seen.values()) <= 2


@pytest.mark.timeout(180)
async def test_a_sigkilled_supervisor_resumes_from_what_the_stream_stored(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """8 shards / 2 workers / 16,000 events; the supervisor is SIGKILLed mid-stream and
    started again: every shard RESUMEs, nothing is missing, nothing is stored twice."""
    url = nats_server.url
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(8)) as sb, anyio.create_task_group() as tg:
            args = run_args(sb, run_dir / "state.json", url)
            env = env_with_runtime(run_dir)
            first = await start_run(args, env, tmp_path / "first.log")
            second = None
            checker = Checker()
            tg.start_soon(checker.run, url, "check")
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 8)
                    # a crash before the first checkpoint would IDENTIFY anew (README)
                    await checkpointed(run_dir / "state.json", 8)
                sent = await start_blast(sb, 2_000, tg)
                with anyio.fail_after(60):
                    await checker.wait_for(3_000)
                await kill9(first)
                at_kill = checker.lines
                with anyio.fail_after(30):  # its workers go with it (PDEATHSIG)
                    await sb.wait_for(lambda: len(sb.records("client_close")) >= 8, timeout=30)
                second = await start_run(args, env, tmp_path / "second.log")
                with anyio.fail_after(90):
                    await checker.wait_for_all(sent)
                    await stored(url, sent)
                count = await stored_count(url)
            finally:
                await terminate(first)
                if second is not None:
                    await terminate(second)
                tg.cancel_scope.cancel()
    assert at_kill < len(sent), "the kill was not mid-stream"
    assert count == len(sent), f"{count - len(sent)} events stored twice"
    assert len(sb.records("identify")) == 8, "the restart identified instead of resuming"
    assert len(sb.records("resumed")) == 8


@pytest.mark.timeout(180)
async def test_a_nats_outage_of_ten_seconds_pauses_the_shards_and_loses_nothing(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """8 shards / 2 workers / 16,000 events; the NATS server stops for 10 s mid-stream
    (a small --stream-buffer, so the supervisor holds the workers back within it).  The
    supervisor's /metrics show the outage and the recovery."""
    url = nats_server.url
    log = tmp_path / "run.log"
    port = unused_port()
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(8)) as sb, anyio.create_task_group() as tg:
            run = await start_run(run_args(sb, run_dir / "state.json", url,
                                           "--stream-buffer", "2000",
                                           "--metrics-port", str(port)),
                                  env_with_runtime(run_dir), log)
            checker = Checker()
            tg.start_soon(checker.run, url, "check")
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 8)
                sent = await start_blast(sb, 2_000, tg)
                with anyio.fail_after(60):
                    await checker.wait_for(1_000)
                await anyio.to_thread.run_sync(nats_server.stop)
                stopped_at = anyio.current_time()
                with anyio.fail_after(9):
                    during = await metrics_when(
                        port, lambda m: m["shardctl_stream_connected"] == 0)
                # the rest of the outage itself, not a synchronisation
                await anyio.sleep(max(0.0, 10 - (anyio.current_time() - stopped_at)))
                await anyio.to_thread.run_sync(nats_server.start)
                with anyio.fail_after(120):
                    await checker.wait_for_all(sent)
                recovered_at = anyio.current_time()
                count = await stored_count(url)
                with anyio.fail_after(30):
                    after = await metrics_when(
                        port, lambda m: m["shardctl_stream_connected"] == 1
                        and m["shardctl_stream_pending"] == 0)
            finally:
                await terminate(run)
                tg.cancel_scope.cancel()
    assert count == len(sent), f"stored {count} of {len(sent)}"
    assert recovered_at - stopped_at >= 10
    assert log_has(log, "holding the workers back"), "the supervisor never pushed back"
    assert log_has(log, "storing events again")
    assert not log_has(log, "backlog over"), "a worker dropped events"
    assert during["shardctl_stream_pending"] > 0
    assert after["shardctl_stream_stalls_total"] >= 1
    assert after["shardctl_stream_stored_total"] > during["shardctl_stream_stored_total"]


@pytest.mark.timeout(180)
async def test_an_r3_stream_on_a_three_node_cluster_survives_losing_its_leader(
        tmp_path: Path) -> None:
    """4 shards / 2 workers / 8,000 events; the stream leader is SIGKILLed mid-stream."""
    with NatsCluster(tmp_path / "nats", log_dir=tmp_path) as cluster, short_dir() as run_dir:
        url = ",".join(cluster.urls)
        async with Sandbox(sandbox_config(4)) as sb, anyio.create_task_group() as tg:
            run = await start_run(run_args(sb, run_dir / "state.json", url,
                                           "--stream-replicas", "3"),
                                  env_with_runtime(run_dir), tmp_path / "run.log")
            checker = Checker()
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 4)
                    leader = await stream_leader(url)
                tg.start_soon(checker.run, url, "check")
                sent = await start_blast(sb, 2_000, tg)
                with anyio.fail_after(60):
                    await checker.wait_for(1_000)
                next(s for s in cluster.servers if s.name == leader).kill()
                with anyio.fail_after(120):
                    await checker.wait_for_all(sent)
                count = await stored_count(url)
            finally:
                await terminate(run)
                tg.cancel_scope.cancel()
    assert count == len(sent), f"stored {count} of {len(sent)}"


async def stream_leader(url: str) -> str:
    """The server name leading the stream, once it exists (created by the supervisor)."""
    import nats
    import nats.js.errors

    nc = await nats.connect(servers=url.split(","))
    try:
        while True:
            try:
                info = await nc.jetstream().stream_info("SHARDCTL")
            except nats.js.errors.NotFoundError:
                await anyio.sleep(0.1)  # the supervisor has not created it yet
                continue
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
            await anyio.sleep(0.1)
    finally:
        await nc.close()


@pytest.mark.timeout(120)
async def test_two_consumer_processes_with_one_durable_split_the_events(
        nats_server: NatsServer, tmp_path: Path) -> None:
    url = nats_server.url
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb, anyio.create_task_group() as tg:
            run = await start_run(run_args(sb, run_dir / "state.json", url),
                                  env_with_runtime(run_dir), tmp_path / "run.log")
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 4)
                async with stream_reader(url, "group", tmp_path / "a.err") as a, \
                        stream_reader(url, "group", tmp_path / "b.err") as b:
                    with anyio.fail_after(30):
                        await pulling(url, "group", 2)
                    sent = await start_blast(sb, 1_000, tg)
                    with anyio.fail_after(60):
                        while not sent <= a.seen.keys() | b.seen.keys():
                            with anyio.move_on_after(0.5):  # either one's lines count
                                await a.wait_for(a.lines + 1)
            finally:
                await terminate(run)
                tg.cancel_scope.cancel()
    assert a.lines and b.lines, (a.lines, b.lines)
    assert a.lines + b.lines == len(sent), "an event went to both"


@pytest.mark.timeout(180)
async def test_a_stop_during_a_nats_outage_saves_what_the_stream_stored(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """4 shards / 2 workers / 4,000 events; NATS stops mid-stream, then the supervisor gets
    SIGTERM: it saves the seq the stream acknowledged, not the one it received, so the next
    start RESUMEs from there and Discord replays the rest."""
    url = nats_server.url
    state = None
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb, anyio.create_task_group() as tg:
            port = unused_port()
            args = run_args(sb, run_dir / "state.json", url, "--metrics-port", str(port))
            env = env_with_runtime(run_dir)
            first = await start_run(args, env, tmp_path / "first.log")
            second = None
            checker = Checker()
            tg.start_soon(checker.run, url, "check")
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 4)
                    await checkpointed(run_dir / "state.json", 4)
                sent = await start_blast(sb, 500, tg)
                with anyio.fail_after(60):
                    await checker.wait_for(500)
                await anyio.to_thread.run_sync(nats_server.stop)
                # events that arrive during the outage: received, never acknowledged
                sent |= await start_blast(sb, 500, tg)
                with anyio.fail_after(60):
                    await metrics_when(port, lambda f: f["shardctl_stream_connected"] == 0
                                       and f["shardctl_stream_pending"] > 0)
                with anyio.fail_after(60):
                    await terminate(first, grace=50)
                assert first.returncode == 0
                state = orjson.loads((run_dir / "state.json").read_bytes())
                await anyio.to_thread.run_sync(nats_server.start)
                second = await start_run(args, env, tmp_path / "second.log")
                with anyio.fail_after(90):
                    await checker.wait_for_all(sent)
                count = await stored_count(url)
            finally:
                await terminate(first)
                if second is not None:
                    await terminate(second)
                tg.cancel_scope.cancel()
    last_sent = {shard: max(seq for s, seq in sent if s == shard) for shard in range(4)}
    saved = {r["shard_id"]: r["seq"] for r in state["sessions"]}
    assert len(saved) == 4
    assert any(saved[shard] < last_sent[shard] for shard in saved), \
        "the outage held nothing back: no proof"
    assert count == len(sent), f"stored {count} of {len(sent)}"
    assert len(sb.records("resumed")) == 4
