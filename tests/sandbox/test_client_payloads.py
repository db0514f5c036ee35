"""The sandbox accepts what real clients send and Discord accepts (issue 13, part 2).

Each frame below is what a library's payload builder produces, written out from its source
(discord.py 2.x ``gateway.py``, hikari 2.x ``impl/shard.py``, @discordjs/ws 2.x
``WebSocketShard``, twilight-model ``gateway/payload/outgoing``, JDA ``WebSocketClient`` and
``PresenceImpl``).  Discord accepts all of them; legacy or unknown fields it ignores become a
``note`` in the sandbox's record, never a violation or a close.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sandbox_client import PROPS, TOKEN, RawClient

from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio

ALL = 53608447


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0,
                            "guilds_per_shard": 1, **kw})


def notes(sb: Sandbox) -> list[str]:
    return [r["rule"] for r in sb.records("note")]


async def identify_and_ready(sb: Sandbox, d: dict[str, Any]) -> RawClient:
    c = await RawClient.open(sb.gateway_url)
    await c.hello()
    await c.send({"op": 2, "d": d})
    await c.recv_op(0, "READY")
    return c


#: hikari 2.7 ``GatewayShardImpl._connect``: presence in the legacy ``game`` shape, no
#: ``activities``; an undocumented ``capabilities`` field.
HIKARI_IDENTIFY: dict[str, Any] = {
    "token": TOKEN, "compress": False, "large_threshold": 250,
    "properties": {"os": "Linux 64bit", "browser": "hikari (2.7.0, aiohttp 3.12.15)",
                   "device": "hikari 2.7.0"},
    "shard": [0, 1], "intents": 513, "capabilities": 0,
    "presence": {"since": None, "afk": False, "game": None, "status": "online"},
}


async def test_hikaris_identify_with_a_legacy_game_presence_gets_ready() -> None:
    async with Sandbox(fast()) as sb:
        c = await identify_and_ready(sb, HIKARI_IDENTIFY)
        await c.close()
        assert sb.violations == []
        assert len(sb.records("identify")) == 1
        assert set(notes(sb)) == {"identify_unknown_key", "presence_legacy_game",
                                  "presence_without_activities"}


def props(lib: str) -> dict[str, str]:
    return {"os": "linux", "browser": lib, "device": lib}


#: One IDENTIFY per library, as its builder writes it, and the notes the sandbox records.
IDENTIFIES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("hikari with an activity", {
        **HIKARI_IDENTIFY,
        "presence": {"since": 1700000000000, "afk": False, "status": "idle",
                     "game": {"name": "x", "state": None, "type": 0, "url": None}}},
     {"identify_unknown_key", "presence_legacy_game", "presence_without_activities"}),
    # discord.py 2.x Client(activity=Game("x")) without a status: status null, legacy game,
    # compress true; Game.to_dict adds keys bots may not set.
    ("discord.py", {
        "token": TOKEN, "properties": props("discord.py"), "compress": True,
        "large_threshold": 250, "shard": [0, 1], "intents": 513,
        "presence": {"status": None, "since": 0, "afk": False,
                     "game": {"type": 0, "name": "x", "timestamps": {}, "platform": None,
                              "assets": {}}}},
     {"presence_null_status", "presence_legacy_game", "presence_without_activities",
      "activity_ignored_key"}),
    ("@discordjs/ws", {
        "token": TOKEN, "properties": props("@discordjs/ws 2.0.4"), "intents": 513,
        "compress": False, "shard": [0, 1]}, set()),
    # twilight-model: every Option serialised, presence and shard null when unset; its
    # Activity always carries created_at.
    ("twilight without presence", {
        "compress": False, "intents": 513, "large_threshold": 250, "presence": None,
        "properties": props("twilight.rs"), "shard": None, "token": TOKEN}, set()),
    ("twilight with presence", {
        "compress": False, "intents": 513, "large_threshold": 250,
        "presence": {"activities": [{"created_at": None, "type": 4, "name": "Custom Status",
                                     "state": "s"}],
                     "afk": False, "since": None, "status": "online"},
        "properties": props("twilight.rs"), "shard": [0, 1], "token": TOKEN},
     {"activity_ignored_key"}),
    ("JDA 5", {
        "presence": {"afk": False, "since": 1700000000000, "activities": [],
                     "status": "online"},
        "token": TOKEN, "properties": {"os": "Linux", "browser": "JDA", "device": "JDA"},
        "large_threshold": 250, "intents": 513, "shard": [0, 1]}, set()),
    # JDA 3 / Javacord: $-prefixed properties with $referrer keys, a top-level v.
    ("JDA 3", {
        "presence": {"afk": False, "since": 1700000000000, "game": None,
                     "status": "online"},
        "token": TOKEN, "v": 10, "large_threshold": 250, "intents": 513,
        "properties": {"$os": "Linux", "$browser": "JDA", "$device": "JDA",
                       "$referring_domain": "", "$referrer": ""}},
     {"identify_unknown_key", "properties_legacy_keys", "properties_unknown_key",
      "presence_legacy_game", "presence_without_activities"}),
]


@pytest.mark.parametrize(("d", "expected"), [(d, n) for _, d, n in IDENTIFIES],
                         ids=[name for name, _, _ in IDENTIFIES])
async def test_each_clients_identify_gets_ready_with_notes_not_violations(
        d: dict[str, Any], expected: set[str]) -> None:
    async with Sandbox(fast()) as sb:
        c = await identify_and_ready(sb, d)
        await c.close()
        assert sb.violations == []
        assert set(notes(sb)) == expected


async def ready_on_guild(sb: Sandbox) -> tuple[RawClient, str]:
    c = await RawClient.open(sb.gateway_url)
    r = await c.ready(intents=ALL)
    (gid,) = [g["id"] for g in r["d"]["guilds"]]
    await c.recv_op(0, "GUILD_CREATE")
    return c, gid


async def test_presence_updates_of_discordpy_and_hikari_are_accepted() -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready_on_guild(sb)
        # discord.py change_presence(): since defaults to the float 0.0
        await c.send({"op": 3, "d": {"activities": [], "afk": False, "since": 0.0,
                                     "status": "online"}})
        # hikari update_presence(activity=...): the legacy game key again
        await c.send({"op": 3, "d": {"since": None, "afk": False, "status": "dnd",
                                     "game": {"name": "x", "state": None, "type": 2,
                                              "url": None}}})
        await c.heartbeat()  # both handled: the socket is still open
        await c.close()
        assert sb.violations == []
        assert len(sb.records("command")) == 2
        assert set(notes(sb)) == {"presence_legacy_game", "presence_without_activities"}


async def test_hikaris_voice_leave_without_self_flags_is_served() -> None:
    async with Sandbox(fast()) as sb:
        c, gid = await ready_on_guild(sb)
        await c.send({"op": 4, "d": {"guild_id": gid, "channel_id": None}})
        state = (await c.recv_op(0, "VOICE_STATE_UPDATE"))["d"]
        assert state["channel_id"] is None
        assert state["self_mute"] is False and state["self_deaf"] is False
        await c.close()
        assert sb.violations == []
        assert notes(sb) == ["voice_default_self_flags"]


async def test_member_requests_by_id_of_hikari_discordpy_and_twilight_are_served() -> None:
    async with Sandbox(fast()) as sb:
        c, gid = await ready_on_guild(sb)
        me = str(sb.config.bot_user_id)
        for d in (
            # hikari request_guild_members(guild, users=[...]): its query/limit defaults too
            {"guild_id": gid, "query": "", "limit": 0, "user_ids": [me]},
            # discord.py request_chunks: int ids, a limit beside user_ids
            {"guild_id": int(gid), "presences": False, "limit": 1, "user_ids": [int(me)]},
            # twilight RequestGuildMembers::builder(..).user_id(..): one id, no limit
            {"guild_id": gid, "user_ids": me},
        ):
            await c.send({"op": 8, "d": d})
            chunk = (await c.recv_op(0, "GUILD_MEMBERS_CHUNK"))["d"]
            assert [m["user"]["id"] for m in chunk["members"]] == [me]
        await c.close()
        assert sb.violations == []
        assert notes(sb) == ["members_default_query_with_user_ids"]


async def test_resume_with_extra_keys_resumes_with_a_note() -> None:
    async with Sandbox(fast()) as sb:
        c, _ = await ready_on_guild(sb)
        sid, seq = sb.records("ready")[0]["session_id"], c.last_seq
        await c.close(4000)
        c2 = await RawClient.open(sb.resume_gateway_url)
        await c2.hello()
        # catnip's RESUME repeated IDENTIFY's compress and properties
        await c2.send({"op": 6, "d": {"token": TOKEN, "session_id": sid, "seq": seq,
                                      "compress": False, "properties": PROPS}})
        await c2.recv_op(0, "RESUMED")
        await c2.close()
        assert sb.violations == []
        assert notes(sb) == ["resume_unknown_key"]


@pytest.mark.parametrize(("op", "d"), [
    # Discord is strict on what it reads: lenient keys never excuse a malformed value.
    (3, {"since": None, "afk": False, "status": "away", "activities": []}),
    (3, {"since": "yesterday", "afk": False, "status": "online", "activities": []}),
    (3, {"since": None, "afk": False, "status": "online"} | {"game": {"name": 5, "type": 0}}),
    (3, {"since": None, "afk": False, "status": "online", "game": {"name": "x", "type": 6}}),
    (3, {"since": None, "afk": False, "status": "online", "activities": None}),
    (3, {"since": None, "afk": "no", "status": "online", "activities": []}),
    (3, {"afk": False, "status": "online", "activities": []}),
    (3, {"since": None, "afk": False, "status": "online",
         "activities": [{"name": "x", "type": 0, "url": 5}]}),
    (4, {"guild_id": "GID", "self_mute": False, "self_deaf": False}),
    (4, {"guild_id": "GID", "channel_id": None, "self_mute": "yes"}),
    (8, {"guild_id": "GID", "query": "a", "limit": 1, "user_ids": ["1"]}),
    (8, {"guild_id": "GID", "query": "", "limit": 5, "user_ids": ["1"]}),
    (8, {"guild_id": ["GID"], "query": "", "limit": 0}),
])
async def test_malformed_values_still_close_4001(op: int, d: dict[str, Any]) -> None:
    async with Sandbox(fast()) as sb:
        c, gid = await ready_on_guild(sb)
        raw = orjson.dumps({"op": op, "d": d}).decode().replace("GID", gid)
        await c.send(raw)
        assert await c.closed() == 4001
        assert len(sb.violations) == 1
