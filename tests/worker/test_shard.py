"""Shard against the sandbox over loopback: the protocol as Discord would see it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from shardkit import INTENTS, TOKEN, Events, config, dispatch_seqs, make_shard

from shardctl.errors import AuthenticationError, DisallowedIntentsError
from shardctl.gateway.intents import Intents
from shardctl.gateway.limits import Limits
from shardctl.sandbox import Reconnect, Sandbox, ScheduledFault
from shardctl.worker.limiter import LocalSessionLimiter
from shardctl.worker.shard import Shard

pytestmark = pytest.mark.anyio


class CountingLimiter:
    """A real LocalSessionLimiter that counts how often it was entered."""

    def __init__(self) -> None:
        self.inner = LocalSessionLimiter(Limits(interval=0.35))
        self.entered: list[int] = []

    @asynccontextmanager
    async def identify(self, shard_id: int) -> AsyncIterator[None]:
        async with self.inner.identify(shard_id):
            self.entered.append(shard_id)
            yield


@asynccontextmanager
async def running(sb: Sandbox, events: Events, **kw: Any) -> AsyncIterator[Shard]:
    """A shard connected (READY) in a task group; shut down (4009) on exit."""
    async with anyio.create_task_group() as tg:
        shard = make_shard(sb, events, **kw)
        with anyio.fail_after(5):
            await tg.start(shard.connect)
        try:
            yield shard
        finally:
            await shard.shutdown()


def paths(sb: Sandbox) -> list[str]:
    return [r["path"] for r in sb.records("connect")]


async def test_identify_ready_then_heartbeats() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events) as shard:
            assert shard.state == "ready" and shard.session_id
            assert events.names()[:2] == ["READY", "SHARD_READY"]
            assert shard.resume_gateway_url == sb.resume_gateway_url
            await sb.wait_for(lambda: len(sb.records("heartbeat")) >= 3, timeout=5)
            assert shard.latency is not None and shard.latency < 1.0
            first = sb.records("heartbeat")[0]
            assert 0.0 <= first["since_hello"] <= 0.6 + 0.05
        assert shard.state == "closed"
    assert not sb.violations
    assert [r["code"] for r in sb.records("client_close")] == [4009]
    assert TOKEN not in repr(shard)


async def test_server_heartbeat_request_answered_at_once() -> None:
    events = Events()
    async with Sandbox(config(heartbeat_interval_ms=5000), port=0) as sb, running(sb, events):
        await sb.wait_for(lambda: len(sb.records("heartbeat")) >= 1, timeout=6)
        await sb.inject(0, "request_heartbeat")
        await sb.wait_for(lambda: any(r.get("requested") for r in sb.records("heartbeat")),
                          timeout=1)
    assert not sb.violations


async def _pump_dispatches(sb: Sandbox, stop: anyio.Event, sent: list[int]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        # An event no intent covers, so the sandbox never filters it (protocol §12).
        sent.extend(await sb.dispatch(0, "SHARDCTL_TEST", {"n": n}))
        await anyio.sleep(0.01)


@pytest.mark.parametrize("compression", [True, "zstd-stream", False])
async def test_op7_resumes_on_resume_url_without_losing_or_repeating(compression: Any) -> None:
    events = Events()
    limiter = CountingLimiter()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events, limiter=limiter,
                           transport_compression=compression) as shard, \
                anyio.create_task_group() as tg:
            stop, sent = anyio.Event(), []
            tg.start_soon(_pump_dispatches, sb, stop, sent)
            await events.wait_for(lambda: events.count("SHARDCTL_TEST") >= 5)
            await sb.inject(0, "reconnect")
            await events.wait_for(lambda: events.count("SHARD_RESUMED") == 1)
            at_resume = len(sent)
            await events.wait_for(lambda: events.count("SHARDCTL_TEST") >= at_resume + 5)
            stop.set()
            await events.wait_for(lambda: dispatch_seqs(events)[-1] >= max(sent))
            assert shard.state == "ready"
        seqs = dispatch_seqs(events)
        assert seqs == list(range(1, len(seqs) + 1))  # none lost, none repeated
        assert set(sent) <= set(seqs)
        assert paths(sb) == ["connect", "resume"]
        assert [r["path"] for r in sb.records("resume")] == ["resume"]
        expected = {True: "zlib-stream", "zstd-stream": "zstd-stream", False: None}[compression]
        for r in sb.records("connect"):
            assert r["query"].get("compress") == expected and r["query"]["v"] == "10"
        assert limiter.entered == [0]  # the RESUME took no identify slot
        closes = sb.records("client_close")
        assert closes[0]["code"] not in (1000, 1001)
    assert not sb.violations


async def test_op9_resumable_resumes() -> None:
    events = Events()
    limiter = CountingLimiter()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events, limiter=limiter) as shard:
            session = shard.session_id
            await sb.inject(0, ("invalid_session", True))
            await events.wait_for(lambda: events.count("SHARD_RESUMED") == 1)
            assert shard.session_id == session
            assert limiter.entered == [0]
        assert ("INVALID_SESSION", {"resumable": True}) in [(n, d) for n, d, _ in events.items]
    assert not sb.violations


async def test_op9_not_resumable_reidentifies_after_1_to_5_s() -> None:
    events = Events()
    limiter = CountingLimiter()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events, limiter=limiter) as shard:
            session = shard.session_id
            await sb.inject(0, ("invalid_session", False))
            t0 = anyio.current_time()
            await events.wait_for(lambda: events.count("SHARD_READY") == 2, timeout=8)
            assert 1.0 <= anyio.current_time() - t0 <= 6.0
            assert shard.session_id != session
            assert limiter.entered == [0, 0]
        assert not sb.records("resume")  # never RESUMEs the dead session
        assert len(sb.records("identify")) == 2
    assert not sb.violations


async def test_drop_resumes() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events):
            await sb.inject(0, "drop")
            await events.wait_for(lambda: events.count("SHARD_RESUMED") == 1)
        assert paths(sb) == ["connect", "resume"]
        disconnect = next(d for n, d, _ in events.items if n == "DISCONNECT")
        assert disconnect["code"] is None and disconnect["action"] == "resume"
    assert not sb.violations


async def test_zombie_closes_non_1000_and_resumes() -> None:
    events = Events()
    async with Sandbox(config(heartbeat_interval_ms=400), port=0) as sb:
        async with running(sb, events):
            await sb.wait_for(lambda: len(sb.records("heartbeat")) >= 1)
            await sb.inject(0, ("zombie", True))
            await events.wait_for(lambda: events.count("SHARD_RESUMED") == 1, timeout=5)
        first_close = sb.records("client_close")[0]
        assert first_close["code"] not in (1000, 1001)
        assert paths(sb) == ["connect", "resume"]
    assert not sb.violations


@pytest.mark.parametrize("code", [4000, 4009])
async def test_server_close_resume_or_reidentify(code: int) -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events):
            await sb.inject(0, ("close", code))
            await events.wait_for(lambda: events.count("SHARD_RESUMED")
                                  + events.count("SHARD_READY") == 2)
        if code == 4000:
            assert len(sb.records("identify")) == 1 and len(sb.records("resumed")) == 1
        else:
            assert len(sb.records("identify")) == 2 and not sb.records("resume")
    assert not sb.violations


async def test_bad_token_is_fatal_4004() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        shard = make_shard(sb, events, token="not-the-token")
        with anyio.fail_after(5), pytest.raises(AuthenticationError) as info:
            await shard.connect()
        assert info.value.code == 4004
        assert "not-the-token" not in str(info.value)
        assert len(sb.records("connect")) == 1  # no retry loop
        assert shard.state == "closed"


async def test_disallowed_intents_is_fatal_4014_naming_them() -> None:
    events = Events()
    async with Sandbox(config(privileged_intents=0), port=0) as sb:
        shard = make_shard(sb, events, intents=INTENTS | Intents.MESSAGE_CONTENT)
        with anyio.fail_after(5), pytest.raises(DisallowedIntentsError) as info:
            await shard.connect()
        message = str(info.value)
        assert "MESSAGE_CONTENT" in message and "Privileged Gateway Intents" in message
        assert len(sb.records("connect")) == 1


async def test_fetch_guild_members_collects_every_chunk_by_nonce() -> None:
    events = Events()
    intents = INTENTS | Intents.GUILD_MEMBERS
    async with Sandbox(config(members_per_guild=2300), port=0) as sb, \
            running(sb, events, intents=intents) as shard:
        ready = next(d for n, d, _ in events.items if n == "READY")
        guild_id = ready["guilds"][0]["id"]
        result = await shard.fetch_guild_members(guild_id, timeout=5)
        ok, error = result
        assert ok and error is None
        assert len(result.value) == 2300
        assert len({m["user"]["id"] for m in result.value}) == 2300
        chunks = [d for n, d, _ in events.items if n == "GUILD_MEMBERS_CHUNK"]
        assert len(chunks) == 3 and {c["chunk_count"] for c in chunks} == {3}
    assert not sb.violations


async def test_fetch_guild_members_times_out_with_an_error() -> None:
    events = Events()
    intents = INTENTS | Intents.GUILD_MEMBERS
    async with Sandbox(config(), port=0) as sb, \
            running(sb, events, intents=intents) as shard:
        result = await shard.fetch_guild_members(123456789012345678, timeout=0.5)
        ok, error = result
        assert not ok and error is not None and "timed out" in error
        assert result.value == []


async def test_commands_report_ok_or_error_and_never_raise() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        shard = make_shard(sb, events)
        ok, error = await shard.update_status({"status": "idle", "activities": [],
                                               "since": None, "afk": False})
        assert not ok and error is not None and "not connected" in error
        async with running(sb, events) as shard:
            presence = {"status": "dnd", "activities": [], "since": None, "afk": False}
            results = [await shard.update_status(presence) for _ in range(6)]
            assert all(results[:5]) and not results[5]
            assert results[5].retry_after is not None and results[5].retry_after > 0
            bad = await shard.update_status({"status": "sleepy"})
            assert not bad and bad.error
            guild = next(d for n, d, _ in events.items if n == "READY")["guilds"][0]["id"]
            assert await shard.update_voice(guild, None)
            await sb.wait_for(lambda: len(sb.records("command")) >= 6)
    assert not sb.violations


async def test_disconnect_4009_resumes_and_1000_reidentifies() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events) as shard:
            await shard.disconnect()
            await events.wait_for(lambda: events.count("SHARD_RESUMED") == 1)
            await shard.disconnect("restart", code=1000)
            await events.wait_for(lambda: events.count("SHARD_READY") == 2)
        assert [r["code"] for r in sb.records("client_close")] == [4009, 1000, 4009]
        assert len(sb.records("identify")) == 2 and len(sb.records("resumed")) == 1
    assert not sb.violations


async def test_shutdown_then_connect_again_resumes() -> None:
    events = Events()
    calls: list[int] = []

    def gateway(shard: Shard) -> str:
        calls.append(shard.id)
        return sb.gateway_url

    async with Sandbox(config(), port=0) as sb:
        async with running(sb, events, gateway=gateway) as shard:
            pass
        assert shard.state == "closed" and shard.session_id is not None
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(5):
                await tg.start(shard.connect)  # the same shard again: RESUME, no IDENTIFY
            assert shard.state == "ready" and events.count("SHARD_RESUMED") == 1
            await shard.shutdown(code=1000)  # ends the session for good
        assert shard.session_id is None
        assert paths(sb) == ["connect", "resume"], sb.records("connect")
        assert calls == [0]  # the gateway callable runs for fresh connects only
        assert [r["code"] for r in sb.records("client_close")] == [4009, 1000]
    assert not sb.violations


async def test_auto_reconnect_off_returns_after_a_close() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        shard = make_shard(sb, events, auto_reconnect=False)
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(5):
                await tg.start(shard.connect)
            await sb.inject(0, ("close", 4000))
            with anyio.fail_after(5):
                await events.wait_for(lambda: events.count("DISCONNECT") == 1)
        assert shard.state == "closed" and len(sb.records("connect")) == 1


async def test_async_with_shard_and_async_output() -> None:
    seen: list[str] = []

    async def output(shard: Shard, name: str, data: Any) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(name)

    async with Sandbox(config(), port=0) as sb:
        async with make_shard(sb, output, gateway=_async_gateway(sb.gateway_url)) as shard:
            assert shard.state == "ready"
            assert seen[:2] == ["READY", "SHARD_READY"]
        assert shard.state == "closed"
        assert seen[-1] == "DISCONNECT"


def _async_gateway(url: str) -> Any:
    async def gateway(shard: Shard) -> str:
        await anyio.lowlevel.checkpoint()
        return url
    return gateway


async def test_shards_identify_through_the_limiter_spaced_by_its_interval() -> None:
    events = Events()
    limiter = LocalSessionLimiter(Limits(interval=0.4))
    async with Sandbox(config(shard_count=3, identify_interval=0.35), port=0) as sb, \
            anyio.create_task_group() as tg:
        shards = [make_shard(sb, events, shard_id=i, shard_count=3, limiter=limiter)
                  for i in range(3)]
        with anyio.fail_after(8):
            for shard in shards:
                tg.start_soon(shard.connect)
            await events.wait_for(lambda: events.count("SHARD_READY") == 3, timeout=8)
        idents = sb.records("identify")
        assert len(idents) == 3 and not sb.records("identify_rejected")
        gaps = [b.at - a.at for a, b in itertools.pairwise(idents)]
        assert all(g >= 0.35 for g in gaps)
        for shard in shards:
            await shard.shutdown()
    assert not sb.violations


class ReportedLimiter:
    """Grants at once, paces nothing, and notes the op 9 reports it gets."""

    def __init__(self) -> None:
        self.rejected: list[tuple[int, float | None]] = []
        self.reported = anyio.Event()

    @asynccontextmanager
    async def identify(self, shard_id: int) -> AsyncIterator[None]:
        yield

    def identify_rejected(self, shard_id: int, after: float | None = None) -> None:
        self.rejected.append((shard_id, after))
        self.reported.set()


async def test_an_identify_answered_with_op9_is_reported_to_the_limiter() -> None:
    limiter = ReportedLimiter()
    async with Sandbox(config(shard_count=2, identify_interval=10.0), port=0) as sb:
        # The same bucket at once: the sandbox answers shard 1's IDENTIFY with op 9.
        second = make_shard(sb, Events(), shard_id=1, shard_count=2, limiter=limiter)
        async with running(sb, Events(), shard_id=0, shard_count=2, limiter=limiter), \
                anyio.create_task_group() as tg:
            tg.start_soon(second.connect)
            with anyio.fail_after(5):
                await limiter.reported.wait()
            await second.shutdown()
        assert len(sb.records("identify_rejected")) == 1
    ((shard_id, after),) = limiter.rejected
    assert shard_id == 1 and after is not None and 0 <= after < 1.0


async def test_async_with_raises_the_fatal_error_itself() -> None:
    async with Sandbox(config(), port=0) as sb:
        with anyio.fail_after(5), pytest.raises(AuthenticationError):
            async with make_shard(sb, Events(), token="wrong-token"):
                pytest.fail("entered a shard whose token was rejected")


async def test_cancelling_the_task_closes_4000_and_keeps_the_session() -> None:
    events = Events()
    async with Sandbox(config(), port=0) as sb:
        async with anyio.create_task_group() as tg:
            shard = make_shard(sb, events)
            with anyio.fail_after(5):
                await tg.start(shard.connect)
            tg.cancel_scope.cancel()
        await sb.wait_for(lambda: len(sb.records("client_close")) == 1, timeout=3)
        assert sb.records("client_close")[0]["code"] == 4000
        assert shard.state == "closed" and shard.session_id is not None
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(5):
                await tg.start(shard.connect)
            assert events.count("SHARD_RESUMED") == 1
            await shard.shutdown()
    assert not sb.violations


async def test_op7_before_hello_identifies_on_the_connect_url() -> None:
    events = Events()
    before_hello = ScheduledFault(Reconnect(before_hello=True), trigger="connect", once=True)
    async with Sandbox(config(faults=(before_hello,)), port=0) as sb, \
            running(sb, events) as shard:
        assert shard.state == "ready"
        assert paths(sb) == ["connect", "connect"]  # no session yet: no resume URL
        assert len(sb.records("identify")) == 1
    assert not sb.violations


async def test_a_resume_url_on_a_host_we_do_not_trust_gets_an_identify_instead(
        caplog: pytest.LogCaptureFixture) -> None:
    # READY names a resume host that is neither Discord's nor the configured gateway's: the
    # RESUME (and the token in it) never goes there; the shard IDENTIFYs, through the limiter.
    events = Events()
    limiter = CountingLimiter()
    async with Sandbox(config(resume_host="localhost"), port=0) as sb:
        async with running(sb, events, limiter=limiter) as shard:
            assert shard.resume_gateway_url == sb.resume_gateway_url
            await sb.inject(0, "reconnect")
            await events.wait_for(lambda: events.count("SHARD_READY") == 2)
            await sb.inject(0, "reconnect")
            await events.wait_for(lambda: events.count("SHARD_READY") == 3)
        assert paths(sb) == ["connect", "connect", "connect"]
        assert not sb.records("resume")
        assert limiter.entered == [0, 0, 0]
    refusals = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
    assert len(refusals) == 1 and "'localhost'" in refusals[0]  # once, naming the host
    assert TOKEN not in caplog.text


async def test_a_restored_session_on_a_host_we_do_not_trust_is_not_resumed() -> None:
    events = Events()
    limiter = CountingLimiter()
    async with Sandbox(config(), port=0) as sb:
        shard = make_shard(sb, events, limiter=limiter)
        shard.restore_session("forged", "wss://attacker.invalid/", 41)
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(5):
                await tg.start(shard.connect)
            assert shard.session_id not in (None, "forged")
            await shard.shutdown()
        assert paths(sb) == ["connect"] and not sb.records("resume")
        assert limiter.entered == [0]
    assert not sb.violations


async def test_a_shard_stopped_mid_burst_completes_the_closing_handshake_at_once() -> None:
    """Stopped while the gateway is still writing a burst and the bus holds the shard back
    (each event awaited, as under back-pressure): the shard must keep reading until the
    server's close frame arrives, or the socket stays half-closed until the close timeout
    with the session held (and heartbeats missed) on Discord's side."""
    from shardctl.sandbox.blast import Blast

    slow = anyio.Event()

    def raw_output(shard: Shard, emit: Any) -> Any:
        return anyio.sleep(0.02) if slow.is_set() else None

    async with Sandbox(config(guilds_per_shard=2), port=0) as sb:
        async with anyio.create_task_group() as tg:
            shard = make_shard(sb, None, raw_output=raw_output)
            with anyio.fail_after(5):
                await tg.start(shard.connect)
            burst = Blast(sb, 5000)
            tg.start_soon(burst.run)
            await burst.prepared.wait()
            slow.set()
            burst.go()
            stopped_at = anyio.current_time()
            with anyio.fail_after(10):
                await shard.shutdown()
        closes = sb.records("client_close")
        assert [r["code"] for r in closes] == [4009]
        assert closes[0].at - stopped_at < 1.0, "the closing handshake waited for a timeout"
    assert not sb.violations
