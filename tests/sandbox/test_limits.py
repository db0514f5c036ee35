"""Identify pacing, session budget / token reset, the 120/60 frame limit, presence limit."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from sandbox_client import RawClient

from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio
BOT = {"Authorization": "Bot sandbox-token"}
PRESENCE = {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}}


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0.3, **kw})


async def test_identify_too_fast_in_one_bucket_gets_op9_false_and_a_pacing_violation() -> None:
    async with Sandbox(fast(shard_count=4, max_concurrency=2, identify_interval=0.6)) as sb:
        a, b, c = [await RawClient.open(sb.gateway_url) for _ in range(3)]
        await a.ready(shard=[0, 4])
        await b.ready(shard=[1, 4])  # other bucket: fine at once
        await c.hello()
        await c.identify(shard=[2, 4])  # bucket 0 again
        assert await c.recv_op(9) == {"op": 9, "d": False, "s": None, "t": None}
        assert [v.rule for v in sb.violations] == ["identify_pacing"]
        rejected = sb.records("identify_rejected")[0]
        assert rejected["bucket"] == 0 and rejected["gap"] < 0.6
        assert sb.budget.remaining(sb.now()) == 998
        # §6 Sandbox: after op 9 the same socket may IDENTIFY again (no 4005).
        await anyio.sleep(0.6)  # waiting out the bucket's real 0.6 s window is the point
        await c.identify(shard=[2, 4])
        assert (await c.recv_op(0, "READY"))["d"]["shard"] == [2, 4]
        gaps = sb.pacer.history[0]
        assert gaps[1] - gaps[0] >= 0.6
        # 0.6 s after op 9 is sooner than the advised 1-5 s: logged, not failed
        assert [w["rule"] for w in sb.records("warning")] == ["reidentify_too_soon"]
        assert [v.rule for v in sb.violations] == ["identify_pacing"]
        for x in (a, b, c):
            await x.close()


async def test_delayed_op9_and_idle_after_op9_closes_4003() -> None:
    cfg = fast(identify_interval=5.0, op9_delay=0.2, op9_idle_timeout=0.3)
    async with Sandbox(cfg) as sb:
        a = await RawClient.open(sb.gateway_url)
        await a.ready()
        b = await RawClient.open(sb.gateway_url)
        await b.hello()
        await b.identify()
        op9 = await b.recv_op(9)
        delay = sb.records("invalid_session")[0].at - sb.records("identify_rejected")[0].at
        assert op9["d"] is False and delay >= 0.2
        assert await b.closed() == 4003
        await a.close()


async def test_going_past_total_resets_the_token() -> None:
    async with Sandbox(fast(session_start_total=1, identify_interval=0)) as sb:
        a = await RawClient.open(sb.gateway_url)
        await a.ready()
        b = await RawClient.open(sb.gateway_url)
        await b.hello()
        await b.identify()
        assert await b.closed() == 4003
        assert await a.closed() == 4003
        assert sb.records("owner_emailed")
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        await c.identify()
        assert await c.closed() == 4004
        async with httpx.AsyncClient() as http:
            assert (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).status_code == 401


async def test_121st_frame_in_the_window_closes_4008_and_heartbeats_count() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        for _ in range(120):
            await c.send({"op": 1, "d": None})
        for _ in range(120):
            assert (await c.recv())["op"] == 11
        await c.send({"op": 1, "d": None})
        assert await c.closed() == 4008
        assert [v.rule for v in sb.violations] == ["frame_rate"]


async def test_frame_counter_is_per_connection() -> None:
    async with Sandbox(fast(frame_limit=5)) as sb:
        for _ in range(2):
            c = await RawClient.open(sb.gateway_url)
            await c.hello()
            for _ in range(5):
                await c.heartbeat()
            await c.close()
        assert sb.violations == []


async def test_sixth_presence_update_in_20s_closes_4008_in_strict_mode() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready()
        for _ in range(6):
            await c.send(PRESENCE)
        assert await c.closed() == 4008
        assert [v.rule for v in sb.violations] == ["presence_rate"]


async def test_sixth_presence_update_is_dropped_and_logged_when_lenient() -> None:
    async with Sandbox(fast(strict=False)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready()
        for _ in range(6):
            await c.send(PRESENCE)
        await c.heartbeat()  # still open
        assert [v.rule for v in sb.violations] == ["presence_rate"]
        await c.close()


@pytest.mark.parametrize("status", ["online", "dnd", "idle", "invisible", "offline"])
async def test_each_status_is_accepted(status: str) -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready()
        await c.send({"op": 3, "d": {**PRESENCE["d"], "status": status,  # type: ignore[dict-item]
                                     "activities": [{"name": "x", "type": 4, "state": "s"}]}})
        await c.heartbeat()
        await c.close()
        assert sb.violations == []


async def test_bad_presence_closes_4001() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready()
        await c.send({"op": 3, "d": {**PRESENCE["d"], "status": "away"}})  # type: ignore[dict-item]
        assert await c.closed() == 4001


async def test_retrying_in_a_loop_after_a_fatal_close_is_a_violation() -> None:
    async with Sandbox(fast()) as sb:
        for expected in (4004, 4004, 4004):
            c = await RawClient.open(sb.gateway_url)
            await c.hello()
            await c.identify(token="wrong")
            assert await c.closed() == expected
        rules = [v.rule for v in sb.violations]
        assert rules.count("authentication_failed") == 3
        assert rules.count("retry_after_fatal_close") == 1


async def test_identify_rounds_out_of_order_are_logged() -> None:
    async with Sandbox(fast(shard_count=4, max_concurrency=2, identify_interval=0)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready(shard=[3, 4])  # round 2 before shards 0 and 1
        assert [w["rule"] for w in sb.records("warning")] == ["identify_out_of_order"]
        await c.close()
        assert sb.violations == []
