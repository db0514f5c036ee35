"""One fault at a time against a real cluster, counting every (shard, seq) at a consumer.

See ``chaoskit`` for what "no loss" means for faults that keep the session (RESUME, nothing
lost, no IDENTIFY) and for those that end it (one IDENTIFY, nothing duplicated, every
session contiguous).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections import Counter
from typing import Any

import anyio
import pytest
from chaoskit import Cluster, cluster, event_log, push, sandbox_config
from clusterkit import TOKEN, accepted_identifies, env_with_runtime, resumes, short_dir, terminate

from shardctl.sandbox import Sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def resume_attempts(c: Cluster, shard: int) -> int:
    return len(c.sb.records("resume", shard))


async def resumed_after(c: Cluster, shards: list[int], fault: Any, *, count: int = 5,
                        timeout: float = 20.0) -> None:  # noqa: ASYNC109 - a budget
    """Inject ``fault`` on ``shards`` mid-stream; each must RESUME (no IDENTIFY)."""
    identifies = accepted_identifies(c.sb)
    before = {s: resumes(c.sb, s) for s in shards}
    await c.push(count)
    for shard in shards:
        await c.sb.inject(shard, fault)
    await c.push(count)  # in flight: buffered by the sandbox, replayed on RESUME
    await c.sb.wait_for(lambda: all(resumes(c.sb, s) > before[s] for s in shards),
                        timeout=timeout)
    await c.push(count)
    await c.settle()
    c.assert_exactly_once()
    assert accepted_identifies(c.sb) == identifies, "an IDENTIFY where a RESUME was possible"


async def reidentified_after(c: Cluster, shard: int, fault: Any) -> None:
    """Inject a session-ending ``fault``: exactly one IDENTIFY, never a RESUME of the old."""
    identifies = accepted_identifies(c.sb, shard)
    attempts = resume_attempts(c, shard)
    await c.push(5)
    await c.sb.inject(shard, fault)
    await c.push(5)  # to the dead session: sent by nobody (nothing returned), so not owed
    await c.sb.wait_for(lambda: accepted_identifies(c.sb, shard) > identifies, timeout=20)
    await c.settle()
    await c.push(5)
    await c.settle()
    c.assert_exactly_once()
    assert accepted_identifies(c.sb, shard) == identifies + 1
    assert resume_attempts(c, shard) == attempts, "resumed a session that had ended"
    assert not c.sb.records("resume_rejected")


async def test_op7_storm_on_every_shard_resumes_all_without_loss() -> None:
    async with cluster(8, 2) as c:
        await resumed_after(c, c.shards, "reconnect")


async def test_op9_resumable_resumes_without_loss() -> None:
    async with cluster() as c:
        await resumed_after(c, [1], ("invalid_session", True))


async def test_op9_not_resumable_identifies_a_new_session() -> None:
    async with cluster() as c:
        await reidentified_after(c, 1, ("invalid_session", False))
        assert c.sb.records("invalid_session", 1)


async def test_abrupt_tcp_drop_resumes_without_loss() -> None:
    async with cluster() as c:
        await resumed_after(c, [0, 3], "drop")


async def test_zombie_connection_is_closed_non_1000_and_resumed() -> None:
    async with cluster(config=sandbox_config(4, heartbeat_interval_ms=500)) as c:
        await resumed_after(c, [2], "zombie")
        codes = [r.details["code"] for r in c.sb.records("client_close", 2)]
        assert codes and all(code not in (1000, 1001) for code in codes)


@pytest.mark.parametrize("code", [4000, 4008])
async def test_resumable_close_codes_resume_without_loss(code: int) -> None:
    async with cluster() as c:
        await resumed_after(c, [1], ("close", code))


@pytest.mark.parametrize("code", [4007, 4009])
async def test_session_ending_close_codes_identify_a_new_session(code: int) -> None:
    async with cluster() as c:
        await reidentified_after(c, 2, ("close", code))


@pytest.mark.parametrize("fault", ["corrupt_frame", "not_json"])
async def test_an_undecodable_frame_drops_the_connection_and_resumes(fault: str) -> None:
    async with cluster() as c:
        await resumed_after(c, [0], fault)
        closes = c.sb.records("client_close", 0)
        assert closes and closes[-1].details["code"] not in (1000, 1001)


async def test_gateway_outage_backs_off_with_jitter_and_resumes_when_it_returns() -> None:
    outage = 3.0
    async with cluster() as c:
        start = c.sb.now()
        await resumed_after(c, c.shards, ("refuse_connections", outage))
        refused = c.sb.records("connection_refused")
        assert refused, "nobody tried to reconnect during the outage"
        # Exponential backoff: a handful of attempts per shard in 3 s, never a hot loop.
        per_shard = len(refused) / len(c.shards)
        assert per_shard <= 10, f"{len(refused)} refused attempts in {outage} s"
        # Jitter: the shards' attempts are spread, not in lockstep.
        times = sorted(r.at - start for r in refused)
        assert len({round(t, 3) for t in times}) > len(times) // 2
        assert all(r.at - start <= outage + 0.5 for r in refused)


async def test_worker_kill_9_is_respawned_and_resumes_without_loss() -> None:
    async with cluster(4, 2) as c:
        victim = c.sup.slots[0]
        pid = victim.pid
        assert pid is not None
        identifies = accepted_identifies(c.sb)
        before = resumes(c.sb)
        await c.push(5)
        os.kill(pid, signal.SIGKILL)
        await c.push(5)
        await c.sb.wait_for(lambda: resumes(c.sb) >= before + len(victim.shard_ids), timeout=30)
        await c.settle()
        c.assert_exactly_once()
        assert victim.pid != pid
        assert accepted_identifies(c.sb) == identifies


async def test_frozen_worker_is_detected_by_missed_beats_and_replaced() -> None:
    async with cluster(4, 2, beat_interval=0.2, liveness_timeout=1.0) as c:
        victim = c.sup.slots[1]
        pid = victim.pid
        assert pid is not None
        identifies = accepted_identifies(c.sb)
        before = resumes(c.sb)
        await c.push(5)
        os.kill(pid, signal.SIGSTOP)
        c.excused.update(("heartbeat_late", s) for s in victim.shard_ids)
        try:
            await c.push(5)
            await c.sb.wait_for(lambda: resumes(c.sb) >= before + len(victim.shard_ids),
                                timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):  # never leave a process stopped
                os.kill(pid, signal.SIGCONT)
        await c.settle()
        c.assert_exactly_once()
        assert victim.pid != pid
        assert accepted_identifies(c.sb) == identifies


async def test_supervisor_sigterm_and_restart_resume_from_the_state_file() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb:
            endpoint = f"ipc://{run_dir}/events.sock"
            args = [sys.executable, "-m", "shardctl.cli", "run", "--token", TOKEN,
                    "--api-url", sb.api_url, "--processes", "2", "--identify-interval", "0.2",
                    "--state-file", str(run_dir / "state.json"), "--events-endpoint", endpoint,
                    "--log-level", "WARNING"]
            env = env_with_runtime(run_dir)
            async with event_log(endpoint) as log:
                first = await anyio.open_process(args, env=env)
                try:
                    await sb.wait_for(lambda: len(sb.records("ready")) == 4, timeout=30)
                    sent = await push(sb, [0, 1, 2, 3], 5)
                    with anyio.fail_after(20):
                        await log.wait_for(sent)
                    first.send_signal(signal.SIGTERM)
                    with anyio.fail_after(30):
                        assert await first.wait() == 0
                finally:
                    await terminate(first)
                sent += await push(sb, [0, 1, 2, 3], 5)  # while down: Discord buffers them
                second = await anyio.open_process(args, env=env)
                try:
                    await sb.wait_for(lambda: resumes(sb) == 4, timeout=30)
                    sent += await push(sb, [0, 1, 2, 3], 5)
                    with anyio.fail_after(20):
                        await log.wait_for(sent)
                finally:
                    await terminate(second)
            assert accepted_identifies(sb) == 4, "the restart identified instead of resuming"
            assert log.messages == sent
            assert not log.discontinuities()
            assert not log.gaps
            assert not sb.violations


async def test_a_slow_consumer_sees_its_gaps_and_others_are_unaffected(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import functools

    from shardctl.cluster import supervisor as supervisor_module
    from shardctl.ipc.bus import EventForwarder

    # The real drop policy, reached sooner: a small send queue per consumer.
    monkeypatch.setattr(supervisor_module, "EventForwarder",
                        functools.partial(EventForwarder, out_hwm=1000))
    async with cluster(2, 1) as c, event_log(c.sup.endpoints["events"],
                                             "MESSAGE_CREATE") as slow:
        with anyio.fail_after(10):
            await c.sup.wait_subscribed(b"MESSAGE_CREATE\0")
        await c.push(1)
        with anyio.fail_after(10):
            await slow.wait_for(c.sent)
        slow.process.send_signal(signal.SIGSTOP)
        try:
            await c.push(3000)
            with anyio.fail_after(60):
                await c.log.wait_for(c.sent)  # the fast consumer keeps up meanwhile
        finally:
            slow.process.send_signal(signal.SIGCONT)
        await c.settle()
        # One more per shard reveals a trailing gap too, once it reaches the slow consumer:
        # until that one has drained its backlog, the supervisor still drops what it sends
        # it (the policy under test), so push rounds until one arrives.
        for _ in range(30):
            last = Counter({max(k for k in c.sent if k[0] == shard): 1 for shard in c.shards})
            with anyio.move_on_after(1.0) as waiting:
                await slow.wait_for(last)
            if not waiting.cancelled_caught:
                break
            await c.push(1)
        else:
            pytest.fail("the slow consumer never caught up after SIGCONT")
        with anyio.fail_after(10):
            await c.log.wait_for(c.sent)
        c.assert_exactly_once()

        def missing() -> int:
            return sum(int(line.split()[4]) for line in slow.gaps)

        # Gaps come on stderr, read by another task than the events: wait for them to add up.
        with anyio.move_on_after(10):
            await slow.wait_until(lambda: len(slow.messages) + missing() == len(c.sent))
        assert missing() > 0, "the slow consumer never fell behind: the test proves nothing"
        assert len(slow.messages) + missing() == len(c.sent)
        assert all(n == 1 for n in slow.messages.values())


async def test_invalid_control_messages_are_dropped_and_no_session_is_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    import orjson
    import zmq
    import zmq.asyncio

    from shardctl.ipc.control import VERSION, decode

    async with cluster() as c:
        identifies = accepted_identifies(c.sb)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(c.sup.endpoints["control"])
        try:
            junk: list[list[bytes]] = [
                [b""], [VERSION], [VERSION, b"beat"], [b"SC9", b"beat", b"{}"],
                [VERSION, b"explode", b"{}"], [VERSION, b"\xff\xfe", b"{}"],
                [VERSION, b"state", b"not json"], [VERSION, b"state", b"[1, 2]"],
                [VERSION, b"beat", b"{" * 5000], [VERSION, b"beat", b"0" * (2 << 20)],
                [VERSION, b"register", b'{"worker": "zero", "pid": []}'],
                [VERSION, b"register", b'{"worker": 99, "pid": 1}'],
                [VERSION, b"register", b'{"worker": -1}'],
                [VERSION, b"state", b'{"shards": [5, null, {"id": "x"}]}'],
                [VERSION, b"reply", b'{"id": {"nested": 1}}'],
                [VERSION, b"beat", b"{}", b"extra"],
            ]
            for frames in junk:
                await sock.send_multipart(frames)
            # The supervisor still answers, after every message above (one socket: in order).
            await sock.send_multipart([VERSION, b"status", b"{}"])
            with anyio.fail_after(10):
                reply = decode(await sock.recv_multipart())
            assert reply.kind == "status"
            assert orjson.dumps(reply.body)
        finally:
            sock.close(linger=0)
            ctx.term()
        await c.push(10)
        await c.settle()
        c.assert_exactly_once()
        assert accepted_identifies(c.sb) == identifies
        assert all(s.state == "ready" for s in c.sup.status())
        dropped = [r for r in caplog.records if "malformed control message" in r.getMessage()]
        assert len(dropped) >= 9, [r.getMessage() for r in dropped]
