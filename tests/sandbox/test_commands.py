"""Op 8 / 4 / 31 / 43 answers, intent filtering and guild routing (§11, §12, checklist 43-49)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sandbox_client import RawClient

from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio
ALL = int(Intents.all())


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0,
                            "guilds_per_shard": 1, **kw})


async def ready(sb: Sandbox, intents: int = ALL, **kw: Any) -> tuple[RawClient, list[str]]:
    c = await RawClient.open(sb.gateway_url)
    r = await c.ready(intents=intents, **kw)
    guilds = [g["id"] for g in r["d"]["guilds"]]
    for _ in guilds:
        await c.recv_op(0, "GUILD_CREATE")
    return c, guilds


async def test_all_members_come_in_1000_member_chunks_with_the_nonce() -> None:
    async with Sandbox(fast(members_per_guild=2500)) as sb:
        c, (gid,) = await ready(sb)
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0,
                                     "nonce": "n-1", "presences": True}})
        chunks = [(await c.recv_op(0, "GUILD_MEMBERS_CHUNK"))["d"] for _ in range(3)]
        assert [ch["chunk_index"] for ch in chunks] == [0, 1, 2]
        assert {ch["chunk_count"] for ch in chunks} == {3}
        assert {ch["nonce"] for ch in chunks} == {"n-1"}
        assert [len(ch["members"]) for ch in chunks] == [1000, 1000, 500]
        assert all(len(ch["presences"]) == len(ch["members"]) for ch in chunks)
        # the second all-members request for the guild within 30 s
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0, "nonce": "n-2"}})
        limited = await c.recv_op(0)
        assert limited["t"] == "RATE_LIMITED"
        assert limited["d"]["opcode"] == 8 and 0 < limited["d"]["retry_after"] <= 30
        assert limited["d"]["meta"] == {"guild_id": gid, "nonce": "n-2"}
        await c.heartbeat()  # no close
        await c.close()


async def test_all_members_without_guild_members_intent_gets_no_reply() -> None:
    async with Sandbox(fast()) as sb:
        c, (gid,) = await ready(sb, intents=ALL & ~int(Intents.GUILD_MEMBERS))
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 0}})
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "member0000", "limit": 5,
                                     "presences": True}})
        chunk = (await c.recv_op(0))["d"]  # the first answer is the prefix query's
        assert [m["user"]["username"] for m in chunk["members"]] == [
            f"member0000{i}" for i in range(1, 6)]
        assert "presences" in chunk
        await c.close()


async def test_presences_need_the_presence_intent_and_long_nonce_is_dropped() -> None:
    async with Sandbox(fast()) as sb:
        c, (gid,) = await ready(sb, intents=ALL & ~int(Intents.GUILD_PRESENCES))
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "", "limit": 3,
                                     "presences": True, "nonce": "x" * 33}})
        chunk = (await c.recv_op(0, "GUILD_MEMBERS_CHUNK"))["d"]
        assert "presences" not in chunk and "nonce" not in chunk
        assert len(chunk["members"]) == 3
        await c.close()


async def test_user_ids_report_not_found_with_small_ids_as_numbers() -> None:
    async with Sandbox(fast()) as sb:
        c, (gid,) = await ready(sb)
        me = str(sb.config.bot_user_id)
        await c.send({"op": 8, "d": {"guild_id": gid, "user_ids": [me, "123",
                                                                   "999999999999999999"],
                                     "nonce": "u"}})
        chunk = (await c.recv_op(0, "GUILD_MEMBERS_CHUNK"))["d"]
        assert [m["user"]["id"] for m in chunk["members"]] == [me]
        assert chunk["not_found"] == [123, "999999999999999999"]
        assert chunk["chunk_count"] == 1 and chunk["nonce"] == "u"
        await c.close()


async def test_zero_matches_is_one_empty_chunk_and_other_guilds_get_silence() -> None:
    async with Sandbox(fast(shard_count=2)) as sb:
        c, (gid,) = await ready(sb, shard=[0, 2])
        other = next(str(g) for g in sb.world.guilds if str(g) != gid)
        await c.send({"op": 8, "d": {"guild_id": other, "query": "", "limit": 1}})
        await c.send({"op": 8, "d": {"guild_id": gid, "query": "zzz", "limit": 1}})
        chunk = (await c.recv_op(0, "GUILD_MEMBERS_CHUNK"))["d"]
        assert chunk["guild_id"] == gid
        assert chunk["members"] == [] and chunk["chunk_index"] == 0 and chunk["chunk_count"] == 1
        await c.close()


@pytest.mark.parametrize("d", [
    {"query": "", "limit": 0},
    {"guild_id": "1", "query": "a", "limit": 1, "user_ids": ["1"]},
    {"guild_id": "1"},
    {"guild_id": "1", "user_ids": [str(i) for i in range(101)]},
])
async def test_malformed_member_requests_close_4001(d: dict[str, Any]) -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready(sb)
        await c.send({"op": 8, "d": d})
        assert await c.closed() == 4001


async def test_voice_join_gets_state_then_server_update_and_full_channels_nothing() -> None:
    async with Sandbox(fast()) as sb:
        c, (gid,) = await ready(sb)
        guild = sb.world.guilds[int(gid)]
        await c.send({"op": 4, "d": {"guild_id": gid, "channel_id": str(guild.voice_channel_id),
                                     "self_mute": False, "self_deaf": True}})
        state, server = await c.recv_op(0), await c.recv_op(0)
        assert state["t"] == "VOICE_STATE_UPDATE" and state["d"]["session_id"]
        assert state["d"]["self_deaf"] is True
        assert server["t"] == "VOICE_SERVER_UPDATE" and server["d"]["guild_id"] == gid
        await c.send({"op": 4, "d": {"guild_id": gid, "self_mute": False, "self_deaf": False}})
        assert await c.closed() == 4001  # missing channel_id
    async with Sandbox(fast(full_voice_channels=True)) as sb:
        c, (gid,) = await ready(sb)
        await c.send({"op": 4, "d": {"guild_id": gid, "channel_id": "5", "self_mute": False,
                                     "self_deaf": False}})
        await c.heartbeat()  # the ACK is the next thing: no voice events
        await c.close()


async def test_soundboard_and_channel_info_requests() -> None:
    async with Sandbox(fast()) as sb:
        c, (gid,) = await ready(sb)
        await c.send({"op": 31, "d": {"guild_ids": [gid]}})
        sounds = await c.recv_op(0)
        assert sounds["t"] == "SOUNDBOARD_SOUNDS" and sounds["d"]["guild_id"] == gid
        await c.send({"op": 43, "d": {"guild_id": gid, "fields": ["status"]}})
        info = await c.recv_op(0)
        assert info["t"] == "CHANNEL_INFO"
        assert all(set(ch) == {"id", "status"} for ch in info["d"]["channels"])
        await c.close()


async def test_dispatches_are_filtered_by_intents_and_content_is_stripped() -> None:
    async with Sandbox(fast()) as sb:
        guild_msg_only = int(Intents.GUILDS | Intents.GUILD_MESSAGES)
        c, (gid,) = await ready(sb, intents=guild_msg_only)
        msg = {"id": "1", "channel_id": "2", "guild_id": gid, "content": "secret",
               "embeds": [{"title": "x"}], "author": {"id": "42"}}
        assert await sb.dispatch(0, "TYPING_START", {"guild_id": gid}) == []
        assert await sb.dispatch(0, "MESSAGE_CREATE", {**msg, "guild_id": None}) == []  # DM
        (seq,) = await sb.dispatch(0, "MESSAGE_CREATE", msg)
        frame = await c.recv_op(0, "MESSAGE_CREATE")
        assert frame["s"] == seq and frame["d"]["content"] == "" and frame["d"]["embeds"] == []
        mention = {**msg, "mentions": [{"id": str(sb.config.bot_user_id)}]}
        await sb.dispatch(0, "MESSAGE_CREATE", mention)
        assert (await c.recv_op(0, "MESSAGE_CREATE"))["d"]["content"] == "secret"
        own = {"guild_id": gid, "user": {"id": str(sb.config.bot_user_id)}}
        assert len(await sb.dispatch(0, "GUILD_MEMBER_UPDATE", own)) == 1
        await c.close()


async def test_broadcast_routes_by_each_sessions_own_shard_pair() -> None:
    async with Sandbox(fast(shard_count=2)) as sb:
        a, _ = await ready(sb, shard=[0, 2])
        b, (gb,) = await ready(sb, shard=[1, 2])
        dup, _ = await ready(sb, shard=[1, 2])  # duplicate [k, N] is allowed
        whole, _ = await ready(sb, shard=[0, 1])  # a different N too
        routed = await sb.broadcast("GUILD_UPDATE", {"guild_id": gb, "id": gb})
        assert len(routed) == 3  # b, dup, whole
        no_guild = await sb.broadcast("USER_UPDATE", {"id": "1"})
        assert len(no_guild) == 2  # shard 0 of 2 and shard 0 of 1
        for x in (a, b, dup, whole):
            await x.close()


async def test_traffic_generator_sends_realistic_guild_messages_to_the_right_shard() -> None:
    async with Sandbox(fast(shard_count=2, guilds_per_shard=2, dispatch_rate=50,
                            dispatch_total=5)) as sb:
        c, guilds = await ready(sb, shard=[1, 2])
        frames = [await c.recv_op(0, "MESSAGE_CREATE") for _ in range(5)]
        assert [f["s"] for f in frames] == list(range(4, 9))
        assert all(f["d"]["guild_id"] in guilds for f in frames)
        assert all((int(f["d"]["guild_id"]) >> 22) % 2 == 1 for f in frames)
        assert all(1200 < len(orjson.dumps(f)) < 2000 for f in frames)  # ~1.5 KB each
        await c.heartbeat()
        await c.close()
