"""HELLO, IDENTIFY → READY, heartbeats and the close codes of checklist 5-21."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
from sandbox_client import PROPS, RawClient

from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio


def fast(**kw: Any) -> SandboxConfig:
    base: dict[str, Any] = {"heartbeat_interval_ms": 1000, "identify_interval": 0.05}
    return SandboxConfig(**{**base, **kw})


async def test_hello_is_first_with_all_four_keys() -> None:
    async with Sandbox(fast(heartbeat_interval_ms=1234)) as sb:
        c = await RawClient.open(sb.gateway_url)
        frame = await c.recv()
        assert set(frame) == {"op", "d", "s", "t"}
        assert frame["op"] == 10 and frame["s"] is None and frame["t"] is None
        assert frame["d"]["heartbeat_interval"] == 1234
        await c.close()


async def test_identify_gets_ready_then_one_guild_create_per_shard_guild() -> None:
    async with Sandbox(fast(shard_count=2, guilds_per_shard=3)) as sb:
        c = await RawClient.open(sb.gateway_url)
        ready = await c.ready(shard=[1, 2])
        d = ready["d"]
        assert ready["s"] == 1
        assert {"v", "user", "guilds", "session_id", "resume_gateway_url", "shard",
                "application"} <= set(d)
        assert d["v"] == 10 and d["shard"] == [1, 2]
        assert d["resume_gateway_url"] == sb.resume_gateway_url
        assert set(d["application"]) >= {"id", "flags"}
        ids = [g["id"] for g in d["guilds"]]
        assert len(ids) == 3 and all(g["unavailable"] for g in d["guilds"])
        assert all((int(i) >> 22) % 2 == 1 for i in ids)
        creates = [await c.recv() for _ in ids]
        assert [f["t"] for f in creates] == ["GUILD_CREATE"] * 3
        assert [f["s"] for f in creates] == [2, 3, 4]
        assert sorted(f["d"]["id"] for f in creates) == sorted(ids)
        await c.close()
        rec = sb.records("identify")[0]
        assert rec["path"] == "connect" and rec["shard"] == [1, 2]


async def test_ready_without_shard_has_no_echo_and_legacy_properties_pass() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        await c.send({"op": 2, "d": {"token": "sandbox-token", "intents": 1, "properties": {
            "$os": "linux", "$browser": "x", "$device": "x"}}})
        ready = await c.recv_op(0, "READY")
        assert "shard" not in ready["d"]
        await c.close()


async def test_every_heartbeat_gets_one_ack_even_before_identify() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        for _ in range(3):
            await c.send({"op": 1, "d": None})
        acks = [await c.recv() for _ in range(3)]
        assert acks == [{"op": 11, "d": None, "s": None, "t": None}] * 3
        await c.close()
        assert len(sb.records("heartbeat")) == 3


async def test_missing_the_heartbeat_deadline_closes_4000_and_keeps_the_session() -> None:
    async with Sandbox(fast(heartbeat_interval_ms=400)) as sb:
        c = await RawClient.open(sb.gateway_url)
        ready = await c.ready()
        assert await c.closed() == 4000
        closed = sb.records("server_close")[0]
        assert closed["code"] == 4000
        hello_at = sb.records("hello")[0].at
        assert closed.at - hello_at >= 0.5  # 400 ms + 25 %
        assert [v.rule for v in sb.violations] == ["heartbeat_late"]
        r = await RawClient.open(sb.resume_gateway_url)
        await r.hello()
        await r.resume(ready["d"]["session_id"], 1)
        assert (await r.recv_op(0))["t"] in ("GUILD_CREATE", "RESUMED")
        await r.close()


async def test_beat_d_must_be_int_or_null() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        await c.send({"op": 1, "d": "7"})
        assert await c.closed() == 4001


async def close_code_after(sb: Sandbox, frame: Any, *, identify_first: bool = False) -> int | None:
    c = await RawClient.open(sb.gateway_url)
    await c.hello()
    if identify_first:
        await c.identify()
        await c.recv_op(0, "READY")
    await c.send(frame)
    return await c.closed()


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", 4002),
    ("[1, 2]", 4002),
    ('{"d": null}', 4001),
    ('{"op": "1", "d": null}', 4001),
    ('{"op": 1}', 4001),
    ('{"op": 5, "d": null}', 4001),
    ('{"op": 7, "d": null}', 4001),
    ('{"op": 11, "d": null}', 4001),
    ('{"op": 3, "d": {"since": null, "activities": [], "status": "online", "afk": false}}', 4003),
    ('{"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}}', 4003),
])
async def test_bad_frames_close_with_the_documented_code(frame: str, code: int) -> None:
    async with Sandbox(fast()) as sb:
        assert await close_code_after(sb, frame) == code
        assert sb.violations and sb.records("server_close")[0]["code"] == code


async def test_4096_bytes_pass_and_4097_close_4002() -> None:
    async with Sandbox(fast()) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        base = b'{"op":1,"d":null,"pad":""}'
        ok = base[:-2] + b"x" * (4096 - len(base)) + b'"}'
        assert len(ok) == 4096
        await c.send(ok.decode())
        assert (await c.recv())["op"] == 11
        too_big = base[:-2] + b"x" * (4097 - len(base)) + b'"}'
        await c.send(too_big.decode())
        assert await c.closed() == 4002


def identify(**d: Any) -> str:
    body = {"token": "sandbox-token", "intents": 513, "properties": PROPS, **d}
    return orjson.dumps({"op": 2, "d": {k: v for k, v in body.items() if v is not ...}}).decode()


@pytest.mark.parametrize(("frame", "code"), [
    (identify(token="nope"), 4004),
    (identify(intents=1 << 17), 4013),
    (identify(intents=-1), 4013),
    (identify(intents="513"), 4013),
    (identify(intents=...), 4013),
    (identify(shard=[2, 2]), 4010),
    (identify(shard=[0]), 4010),
    (identify(shard=[0, 0]), 4010),
    (identify(large_threshold=251), 4001),
    (identify(properties=...), 4001),
    (identify(token=...), 4001),
    (identify(presence={"status": "online"}), 4001),
])
async def test_identify_rejections(frame: str, code: int) -> None:
    async with Sandbox(fast()) as sb:
        assert await close_code_after(sb, frame) == code
        assert not sb.records("identify")


async def test_privileged_intent_not_enabled_closes_4014() -> None:
    async with Sandbox(fast(privileged_intents=int(Intents.GUILD_MEMBERS))) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready(intents=int(Intents.GUILD_MEMBERS))  # enabled → accepted
        await c.close()
    async with Sandbox(fast(privileged_intents=0)) as sb:
        assert await close_code_after(sb, identify(intents=int(Intents.MESSAGE_CONTENT))) == 4014


async def test_lenient_mode_accepts_undefined_intent_bits() -> None:
    async with Sandbox(fast(strict=False)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready(intents=1 << 17 | 1)
        await c.close()


async def test_shard_count_not_a_multiple_closes_4010_and_too_many_guilds_4011() -> None:
    async with Sandbox(fast(required_shard_multiple=4)) as sb:
        assert await close_code_after(sb, identify(shard=[0, 6])) == 4010
    async with Sandbox(fast(guilds_per_shard=3, max_guilds_per_shard=2)) as sb:
        assert await close_code_after(sb, identify()) == 4011


async def test_second_identify_and_resume_on_authenticated_socket_close_4005() -> None:
    async with Sandbox(fast()) as sb:
        assert await close_code_after(sb, identify(), identify_first=True) == 4005
    async with Sandbox(fast()) as sb:
        resume = {"op": 6, "d": {"token": "sandbox-token", "session_id": "x", "seq": 1}}
        assert await close_code_after(sb, resume, identify_first=True) == 4005


async def test_unsupported_version_closes_4012_before_hello() -> None:
    async with Sandbox(fast()) as sb:
        for v in ("9", "abc", None):
            c = await RawClient.open(sb.gateway_url, v=v)
            assert await c.closed() == 4012
            assert c.messages == 0
    async with Sandbox(fast(hello_before_version_close=True)) as sb:
        c = await RawClient.open(sb.gateway_url, v="9")
        assert await c.closed() == 4012
        assert c.messages == 1


async def test_compressed_streams_decode_across_messages() -> None:
    async with Sandbox(fast(guilds_per_shard=3, identify_interval=0)) as sb:
        for mode in ("zlib-stream", "zstd-stream"):
            c = await RawClient.open(sb.gateway_url, compress=mode)
            await c.ready()
            for _ in range(3):
                assert (await c.recv())["t"] == "GUILD_CREATE"
            await c.heartbeat()
            assert c.binary == c.messages >= 5
            await c.close()


async def test_zlib_split_mode_spreads_payloads_over_several_messages() -> None:
    async with Sandbox(fast(zlib_split=3)) as sb:
        c = await RawClient.open(sb.gateway_url, compress="zlib-stream")
        await c.ready()
        await c.recv_op(0, "GUILD_CREATE")
        assert c.messages > 3  # HELLO, READY, GUILD_CREATE took more than one message each
        await c.close()


async def test_payload_compression_sends_big_payloads_as_binary_zlib_only() -> None:
    async with Sandbox(fast(guilds_per_shard=1)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready(compress=True)
        assert c.binary == 1  # READY compressed; HELLO was text
        await c.heartbeat()
        assert c.binary == 2  # GUILD_CREATE (>1 KiB) compressed, the ACK (small) is text
        await c.close()
    async with Sandbox(fast(guilds_per_shard=1)) as sb:
        c = await RawClient.open(sb.gateway_url, compress="zlib-stream")  # fresh sandbox
        await c.ready(compress=True)  # transport compression wins
        await c.recv_op(0, "GUILD_CREATE")
        await c.close()


async def test_after_wait_for_condition_helper_times_out() -> None:
    async with Sandbox(fast()) as sb:
        with pytest.raises(TimeoutError):
            await sb.wait_for(lambda: False, timeout=0.05)
        with anyio.fail_after(1):
            await sb.wait_for(lambda: True)


async def test_leaving_the_context_closes_every_socket_and_the_port() -> None:
    async with Sandbox(fast(identify_interval=0)) as sb:
        clients = [await RawClient.open(sb.gateway_url) for _ in range(3)]
        await clients[0].ready()
        await clients[1].hello()
        url = sb.gateway_url
    for c in clients:
        assert await c.closed() == 1001  # going away, with a close frame
    with pytest.raises(OSError):
        await RawClient.open(url)


async def test_a_dispatch_before_ready_is_numbered_is_not_part_of_the_session() -> None:
    # IDENTIFY creates the session, then READY waits for the socket's send lock; a dispatch
    # in between once took s = 1 ahead of READY and was never sent (the socket was not
    # attached yet): lost.  Discord sends nothing before READY.
    async with Sandbox(fast(guilds_per_shard=1)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.hello()
        (conn,) = sb.connections
        async with conn.lock:  # READY cannot be sent until we let go
            await c.identify(intents=int(Intents.GUILDS | Intents.GUILD_MESSAGES))
            await sb.wait_for(lambda: len(sb.records("identify")) == 1, timeout=5)
            guild = sb.world.guilds_for(0, 1)[0]
            seqs = await sb.dispatch(0, "MESSAGE_CREATE", {
                "id": "1", "guild_id": str(guild.id), "channel_id": str(guild.text_channel_id),
                "content": "too early"})
        assert seqs == []
        ready = await c.recv_op(0, "READY")
        assert ready["s"] == 1
        seqs = await sb.dispatch(0, "MESSAGE_CREATE", {
            "id": "2", "guild_id": str(guild.id), "channel_id": str(guild.text_channel_id),
            "content": "after READY"})
        assert seqs == [3]  # after READY (1) and the guild's GUILD_CREATE (2)
        await c.close()


async def test_a_dispatch_queued_behind_an_ending_op_9_is_not_part_of_the_session() -> None:
    # Op 9 (not resumable) ends the session.  A dispatch that waited behind it for the
    # socket once took an s anyway and went out after the op 9, in a session nobody could
    # resume: the sandbox called it sent, no client could receive it (a chaos test "loss").
    async with Sandbox(fast(guilds_per_shard=1)) as sb:
        c = await RawClient.open(sb.gateway_url)
        await c.ready(intents=int(Intents.GUILDS | Intents.GUILD_MESSAGES))
        await c.recv_op(0, "GUILD_CREATE")
        (conn,) = sb.connections
        guild = sb.world.guilds_for(0, 1)[0]
        seqs: list[int] = []

        async def message() -> None:
            seqs.extend(await sb.dispatch(0, "MESSAGE_CREATE", {
                "id": "1", "guild_id": str(guild.id), "channel_id": str(guild.text_channel_id),
                "content": "behind the op 9"}))

        # Both queue up behind us for the socket, the op 9 first.
        async with anyio.create_task_group() as tg, conn.lock:
            tg.start_soon(sb.inject, 0, ("invalid_session", False))
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(message)
            await anyio.wait_all_tasks_blocked()
        assert seqs == []
        assert not [r for r in sb.records("dispatch") if r.get("t") == "MESSAGE_CREATE"]
        frame = await c.recv()
        assert (frame["op"], frame["d"]) == (9, False)
        await c.close()
