"""Injected and scheduled faults (checklist "provoke" items 12, 13, 32, 33, 36, 50)."""

from __future__ import annotations

import zlib
from typing import Any

import anyio
import orjson
import pytest
from sandbox_client import RawClient
from websockets.exceptions import InvalidStatus

from shardctl.gateway.intents import Intents
from shardctl.sandbox import (
    Close,
    CorruptFrame,
    GuildOutage,
    NotJson,
    Reconnect,
    RequestHeartbeat,
    Sandbox,
    SandboxConfig,
    ScheduledFault,
)

pytestmark = pytest.mark.anyio


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0,
                            "guilds_per_shard": 1, **kw})


async def ready(sb: Sandbox, **kw: Any) -> tuple[RawClient, str]:
    c = await RawClient.open(sb.gateway_url)
    r = await c.ready(**kw)
    await c.recv_op(0, "GUILD_CREATE")
    return c, r["d"]["session_id"]


async def test_op7_then_close_4000_when_the_client_stays() -> None:
    async with Sandbox(fast(reconnect_close_after=0.2)) as sb:
        c, sid = await ready(sb)
        assert await sb.inject(0, "reconnect") == 1
        assert await c.recv() == {"op": 7, "d": None, "s": None, "t": None}
        assert await c.closed() == 4000
        assert [v.rule for v in sb.violations] == ["reconnect_ignored"]
        r = await RawClient.open(sb.resume_gateway_url)  # the session stays resumable
        await r.hello()
        await r.resume(sid, 2)
        await r.recv_op(0, "RESUMED")
        await r.close()


async def test_op7_obeyed_by_closing_is_no_violation() -> None:
    async with Sandbox(fast(reconnect_close_after=2.0)) as sb:
        c, _ = await ready(sb)
        await sb.inject(0, Reconnect())
        await c.recv_op(7)
        await c.close(4000)
        await sb.wait_for(lambda: bool(sb.records("client_close")))
        assert sb.violations == []


async def test_invalid_session_false_ends_the_session_and_true_keeps_it() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await ready(sb)
        await sb.inject(0, ("invalid_session", True))
        assert await c.recv() == {"op": 9, "d": True, "s": None, "t": None}
        await c.resume(sid, 2)  # same socket is fine after op 9
        await c.recv_op(0, "RESUMED")
        await sb.inject(0, ("invalid_session", False))
        assert (await c.recv_op(9))["d"] is False
        await c.resume(sid, 3)
        assert (await c.recv_op(9))["d"] is False  # the session is gone
        await c.identify()
        await c.recv_op(0, "READY")
        await c.close()


async def test_drop_aborts_tcp_and_keeps_the_session() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await ready(sb)
        await sb.inject(0, "drop")
        assert await c.closed() == 1006
        r = await RawClient.open(sb.resume_gateway_url)
        await r.hello()
        await r.resume(sid, 2)
        await r.recv_op(0, "RESUMED")
        await r.close()


async def test_zombie_stops_acks_but_keeps_the_socket() -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready(sb)
        await sb.inject(0, ("zombie", True))
        await c.send({"op": 1, "d": 2})
        with anyio.move_on_after(0.2) as scope:
            await c.recv()
        assert scope.cancelled_caught  # no ACK came
        await sb.inject(0, ("zombie", False))
        await c.heartbeat()
        await c.close()


async def test_close_with_a_code() -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready(sb)
        await sb.inject(0, Close(4009))
        assert await c.closed() == 4009


@pytest.mark.parametrize(("code", "resumable"), [
    (4000, True), (4008, True), (4006, True), (1011, True),  # §7 "Resume" rows, and unknowns
    (4001, False), (4007, False), (4009, False), (4004, False),  # re-identify, stop
])
async def test_a_server_close_keeps_the_session_exactly_when_the_client_should_resume(
        code: int, resumable: bool) -> None:
    # The sandbox and the client decide from one set (gateway/closecodes.py): a client told
    # to RESUME after a close must find its session, and one told to IDENTIFY must not.
    async with Sandbox(fast()) as sb:
        c, sid = await ready(sb)
        await sb.inject(0, Close(code))
        assert await c.closed() == code
        r = await RawClient.open(sb.resume_gateway_url)
        await r.hello()
        await r.resume(sid, 2)
        if resumable:
            await r.recv_op(0, "RESUMED")
        else:
            assert (await r.recv_op(9))["d"] is False
        await r.close()


async def test_server_heartbeat_request_is_recorded_and_answered() -> None:
    async with Sandbox(fast(heartbeat_request_grace=0.5)) as sb:
        c, _ = await ready(sb)
        await sb.inject(0, RequestHeartbeat())
        assert await c.recv() == {"op": 1, "d": None, "s": None, "t": None}
        await c.heartbeat()
        assert sb.records("heartbeat")[-1]["requested"] is True
        await sb.inject(0, "request_heartbeat")
        await c.recv_op(1)
        await sb.wait_for(lambda: bool(sb.violations), timeout=2)
        assert [v.rule for v in sb.violations] == ["heartbeat_request_ignored"]
        await c.close()


async def test_scheduled_op7_before_hello() -> None:
    cfg = fast(faults=(ScheduledFault(Reconnect(before_hello=True), trigger="connect"),),
               reconnect_close_after=0.2)
    async with Sandbox(cfg) as sb:
        c = await RawClient.open(sb.gateway_url)
        assert (await c.recv())["op"] == 7  # instead of HELLO
        assert await c.closed() == 4000
        c2 = await RawClient.open(sb.gateway_url)  # once=True: the next socket is normal
        await c2.hello()
        await c2.close()


async def test_scheduled_fault_after_ready_on_one_shard() -> None:
    cfg = fast(shard_count=2, faults=(ScheduledFault(Close(4000), after=0.1, shard_id=1),))
    async with Sandbox(cfg) as sb:
        a, _ = await ready(sb, shard=[0, 2])
        b, _ = await ready(sb, shard=[1, 2])
        assert await b.closed() == 4000
        await a.heartbeat()
        await a.close()


async def test_guild_outage_sends_unavailable_delete_then_create() -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready(sb)
        gid = next(iter(sb.world.guilds))
        await sb.inject(0, GuildOutage(gid, duration=0.1))
        down = await c.recv_op(0)
        assert down["t"] == "GUILD_DELETE" and down["d"] == {"id": str(gid), "unavailable": True}
        await c.send({"op": 1, "d": down["s"]})
        back = await c.recv_op(0)
        assert back["t"] == "GUILD_CREATE" and back["d"]["id"] == str(gid)
        await c.close()


async def test_inject_without_a_connection_raises_lookup_error() -> None:
    async with Sandbox(fast()) as sb:
        with pytest.raises(LookupError):
            await sb.inject(3, "reconnect")


async def test_down_guilds_get_guild_delete_then_guild_create() -> None:
    async with Sandbox(fast(guilds_per_shard=2, down_guilds=1, down_duration=0.1)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready()
        first, second = await c.recv_op(0), await c.recv_op(0)
        assert first["t"] == "GUILD_DELETE" and first["d"]["unavailable"] is True
        assert second["t"] == "GUILD_CREATE"
        back = await c.recv_op(0)
        assert back["t"] == "GUILD_CREATE" and back["d"]["id"] == first["d"]["id"]
        await c.close()


async def test_disabling_an_intent_closes_its_sessions_4003_then_4014() -> None:
    members = int(Intents.GUILDS | Intents.GUILD_MEMBERS)
    async with Sandbox(fast()) as sb:
        a, _ = await ready(sb, intents=members)
        b, _ = await ready(sb, intents=1)
        assert await sb.disable_intents(int(Intents.GUILD_MEMBERS)) == 1
        assert await a.closed() == 4003
        await b.heartbeat()  # untouched
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        await c.identify(intents=members)
        assert await c.closed() == 4014
        await b.close()


async def test_corrupt_frame_breaks_the_clients_inflater() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url, compress="zlib-stream")
        await c.ready()
        await c.recv_op(0, "GUILD_CREATE")
        await sb.inject(0, "corrupt_frame")
        with pytest.raises(zlib.error):
            await c.recv()
        await c.close(4000)
        assert [r.details["fault"] for r in sb.records("fault")] == [CorruptFrame()]


async def test_not_json_is_compressed_like_any_payload() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url, compress="zlib-stream")
        await c.ready()
        await c.recv_op(0, "GUILD_CREATE")
        await sb.inject(0, NotJson())
        with pytest.raises(orjson.JSONDecodeError):
            await c.recv()  # inflates fine; the payload is what is broken
        await c.close(4000)


async def test_refuse_connections_drops_sockets_and_refuses_upgrades_for_a_while() -> None:
    async with Sandbox(fast()) as sb:
        c, sid = await ready(sb)
        await sb.inject(None, ("refuse_connections", 0.5))
        assert await c.closed() == 1006  # dropped: no close frame
        with pytest.raises(InvalidStatus) as refused:
            await RawClient.open(sb.resume_gateway_url)
        assert refused.value.response.status_code == 503
        assert len(sb.records("connection_refused")) == 1
        await anyio.sleep(0.5)  # the outage's own duration, not a poll
        r = await RawClient.open(sb.resume_gateway_url)  # back, and the session survived
        await r.hello()
        await r.resume(sid, 2)
        await r.recv_op(0, "RESUMED")
        await r.close()


def test_the_new_faults_parse_from_every_spelling() -> None:
    from shardctl.sandbox import RefuseConnections, parse_fault
    from shardctl.sandbox.faults import parse_scheduled

    assert parse_fault("corrupt_frame") == CorruptFrame()
    assert parse_fault("not_json") == NotJson()
    assert parse_fault(("refuse_connections", 2)) == RefuseConnections(2.0)
    assert parse_scheduled("refuse_connections:1.5@10").fault == RefuseConnections(1.5)
    assert parse_scheduled("corrupt_frame@3/1").shard_id == 1
