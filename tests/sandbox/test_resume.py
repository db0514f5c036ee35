"""RESUME, replay and session lifetime (protocol §5, §15; checklist 28-31, 35)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from sandbox_client import RawClient

from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio
MSG = {"id": "1", "channel_id": "2", "content": "hi", "author": {"id": "3"}}


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0,
                            "guilds_per_shard": 1, **kw})


async def start(sb: Sandbox) -> tuple[RawClient, str]:
    c = await RawClient.open(sb.gateway_url)
    ready = await c.ready(intents=1 << 12)  # DIRECT_MESSAGES: DM MESSAGE_CREATE arrives
    await c.recv_op(0, "GUILD_CREATE")
    return c, ready["d"]["session_id"]


async def resume(sb: Sandbox, session_id: str, seq: int | None,
                 url: str | None = None) -> RawClient:
    r = await RawClient.open(url or sb.resume_gateway_url)
    await r.hello()
    await r.resume(session_id, seq)
    return r


async def test_resume_replays_missed_dispatches_in_order_then_resumed() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        assert c.last_seq == 2
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        seqs = [s for _ in range(3) for s in await sb.dispatch(0, "MESSAGE_CREATE", MSG)]
        assert seqs == [3, 4, 5]
        r = await resume(sb, sid, 2)
        frames = [await r.recv() for _ in range(4)]
        assert [(f["s"], f["t"]) for f in frames] == [
            (3, "MESSAGE_CREATE"), (4, "MESSAGE_CREATE"), (5, "MESSAGE_CREATE"), (6, "RESUMED")]
        assert await sb.dispatch(0, "MESSAGE_CREATE", MSG) == [7]
        assert (await r.recv())["s"] == 7
        rec = sb.records("resume")[0]
        assert rec["path"] == "resume" and rec["seq"] == 2
        assert sb.records("resumed")[0]["replayed"] == 3
        sent = [d["seq"] for d in sb.records("dispatch") if d["session_id"] == sid]
        assert sorted(set(sent)) == list(range(1, 8))
        await r.close()
        assert sb.violations == []


async def test_resume_with_a_seq_in_the_middle_replays_only_newer() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        for _ in range(3):
            await sb.dispatch(0, "MESSAGE_CREATE", MSG)
        for _ in range(3):
            await c.recv()
        c.ws.transport.abort()  # a TCP drop keeps the session
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        assert sb.records("client_close")[0]["code"] == 1006
        r = await resume(sb, sid, 4)
        assert [(await r.recv())["s"] for _ in range(2)] == [5, 6]
        await r.close()


@pytest.mark.parametrize("code", [1000, 1001])
async def test_client_close_1000_or_1001_kills_the_session(code: int) -> None:
    async with Sandbox(fast(op9_idle_timeout=0.2)) as sb:
        c, sid = await start(sb)
        await c.close(code)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await resume(sb, sid, 2)
        assert await r.recv_op(9) == {"op": 9, "d": False, "s": None, "t": None}
        assert await r.closed() == 4003  # idle after op 9


async def test_unknown_and_expired_sessions_get_op9_false() -> None:
    async with Sandbox(fast(session_ttl=0.2)) as sb:
        r = await resume(sb, "nope", 1)
        assert (await r.recv_op(9))["d"] is False
        await r.close()
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        await anyio.sleep(0.3)  # outlive the 0.2 s session TTL
        r = await resume(sb, sid, 2)
        assert (await r.recv_op(9))["d"] is False
        await r.close()


async def test_seq_beyond_last_sent_closes_4007() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await resume(sb, sid, 99)
        assert await r.closed() == 4007
    async with Sandbox(fast(resume_seq_ahead_op9=True)) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await resume(sb, sid, 99)
        assert (await r.recv_op(9))["d"] is False
        await r.close()


async def test_seq_older_than_the_replay_buffer_gets_op9_false() -> None:
    async with Sandbox(fast(replay_buffer=2)) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        for _ in range(3):
            await sb.dispatch(0, "MESSAGE_CREATE", MSG)
        r = await resume(sb, sid, 2)
        assert (await r.recv_op(9))["d"] is False
        await r.close()


async def test_resume_on_connect_url_is_accepted_with_a_warning() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await resume(sb, sid, 2, url=sb.gateway_url)
        assert (await r.recv_op(0, "RESUMED"))["s"] == 3
        assert sb.records("resume")[0]["path"] == "connect"
        assert any(w["rule"] == "resume_on_connect_url" for w in sb.records("warning"))
        await r.close()


async def test_resume_while_old_socket_is_open_takes_over_and_closes_old_4000() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        r = await resume(sb, sid, 2)
        assert (await r.recv_op(0, "RESUMED"))["s"] == 3
        assert await c.closed() == 4000
        assert await sb.dispatch(0, "MESSAGE_CREATE", MSG) == [4]
        assert (await r.recv())["s"] == 4
        await r.close()


async def test_resume_with_different_query_values_is_logged() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await RawClient.open(sb.resume_gateway_url, compress="zlib-stream")
        await r.hello()
        await r.resume(sid, 2)
        assert (await r.recv_op(0, "RESUMED"))["s"] == 3  # only compress differs: logged
        assert any(w["rule"] == "resume_query_mismatch" for w in sb.records("warning"))
        await r.close()


async def test_after_op9_a_resume_on_the_same_socket_is_accepted() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await start(sb)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        r = await resume(sb, "unknown", 1)
        assert (await r.recv_op(9))["d"] is False
        await r.resume(sid, 2)
        assert (await r.recv_op(0, "RESUMED"))["s"] == 3
        await r.close()
