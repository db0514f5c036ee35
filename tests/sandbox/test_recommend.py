"""The bot grows at runtime: ``recommend_shards`` changes what ``GET /gateway/bot`` says,
guilds go to every session that owns them under its own shard count (as on Discord, where
two shard counts run side by side during a reshard), and ``require`` closes smaller
IDENTIFYs with 4011."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from sandbox_client import RawClient

from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.sandbox.routing import recipients

pytestmark = pytest.mark.anyio
BOT = {"Authorization": "Bot sandbox-token", "User-Agent": "DiscordBot (test, 1)"}


def fast(**kw: Any) -> SandboxConfig:
    return SandboxConfig(**{"heartbeat_interval_ms": 1000, "identify_interval": 0.05,
                            "max_concurrency": 4, "shard_count": 2, **kw})


async def test_gateway_bot_follows_the_recommended_count() -> None:
    async with Sandbox(fast()) as sb, httpx.AsyncClient() as http:
        assert (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).json()["shards"] == 2
        sb.recommend_shards(4)
        assert (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).json()["shards"] == 4
        with pytest.raises(ValueError, match="at least 1"):
            sb.recommend_shards(0)


async def test_a_guilds_event_reaches_its_owner_under_each_shard_count() -> None:
    async with Sandbox(fast()) as sb:
        old = await RawClient.open(sb.gateway_url)
        await old.ready(shard=[1, 2])
        sb.recommend_shards(4)
        new = await RawClient.open(sb.gateway_url)
        await new.ready(shard=[3, 4])
        owned = next(g for g in sb.world.guilds.values() if (g.id >> 22) % 4 == 3)
        other = next(g for g in sb.world.guilds.values() if (g.id >> 22) % 4 == 1)
        for guild in (owned, other):
            await sb.broadcast("MESSAGE_CREATE", {"id": str(guild.id + 7),
                                                  "guild_id": str(guild.id),
                                                  "channel_id": str(guild.text_channel_id)})
        old_got = [(await old.recv_op(0, "MESSAGE_CREATE"))["d"]["guild_id"] for _ in range(2)]
        new_got = (await new.recv_op(0, "MESSAGE_CREATE"))["d"]["guild_id"]
        assert old_got == [str(owned.id), str(other.id)]
        assert new_got == str(owned.id)
        await old.close()
        await new.close()


async def test_required_count_closes_a_smaller_identify_4011_and_spares_running_sessions(
        ) -> None:
    async with Sandbox(fast()) as sb:
        running = await RawClient.open(sb.gateway_url)
        await running.ready(shard=[0, 2])
        sb.recommend_shards(4, require=True)
        late = await RawClient.open(sb.gateway_url)
        await late.hello()
        await late.send(orjson.dumps({"op": 2, "d": {
            "token": "sandbox-token", "intents": 513, "shard": [1, 2],
            "properties": {"os": "linux", "browser": "t", "device": "t"}}}).decode())
        assert await late.closed() == 4011
        ok = await RawClient.open(sb.gateway_url)
        await ok.ready(shard=[1, 4])
        # the session of 2 shards that ran before is left alone
        assert [r.details.get("code") for r in sb.records("server_close")] == [4011]
        await running.close()
        await ok.close()


async def test_newest_routing_gives_a_guild_to_the_new_count_from_its_owners_ready_on(
        ) -> None:
    async with Sandbox(fast(routing="newest")) as sb:
        old0 = await RawClient.open(sb.gateway_url)
        await old0.ready(shard=[0, 2])
        old1 = await RawClient.open(sb.gateway_url)
        await old1.ready(shard=[1, 2])
        sb.recommend_shards(4)
        new = await RawClient.open(sb.gateway_url)
        await new.ready(shard=[3, 4])
        owned = next(g for g in sb.world.guilds.values() if (g.id >> 22) % 4 == 3)
        orphan = next(g for g in sb.world.guilds.values() if (g.id >> 22) % 4 == 1)
        for guild in (owned, orphan):
            await sb.broadcast("MESSAGE_CREATE", {"id": str(guild.id + 7),
                                                  "guild_id": str(guild.id),
                                                  "channel_id": str(guild.text_channel_id)})
        # [3, 4] is READY: its guild goes there alone; [1, 4] is not: the old owner keeps it
        assert (await new.recv_op(0, "MESSAGE_CREATE"))["d"]["guild_id"] == str(owned.id)
        assert (await old1.recv_op(0, "MESSAGE_CREATE"))["d"]["guild_id"] == str(orphan.id)
        assert [r.details.get("t") for r in sb.records("dispatch")
                if r.details.get("t") == "MESSAGE_CREATE"] == ["MESSAGE_CREATE"] * 2
        # the new count's sessions end: its guild falls back to the old owner
        await new.close()
        await sb.wait_for(lambda: not any(s.num_shards == 4 for s in sb.started_sessions(
            sb.now())))
        await sb.broadcast("MESSAGE_CREATE", {"id": "9", "guild_id": str(owned.id),
                                              "channel_id": str(owned.text_channel_id)})
        assert (await old1.recv_op(0, "MESSAGE_CREATE"))["d"]["id"] == "9"
        await old0.close()
        await old1.close()


@dataclass(frozen=True)
class Owner:
    shard_id: int
    num_shards: int
    created_at: float


def test_newest_means_the_count_introduced_last_whether_it_is_larger_or_smaller() -> None:
    old = [Owner(k, 4, 10.0 + k) for k in range(4)]
    down = [Owner(0, 2, 50.0)]  # a reshard 4 -> 2: only shard 0 of 2 READY so far
    guild_on = {k: k << 22 for k in range(4)}  # guild k: shard k of 4, shard k % 2 of 2
    sessions = old + down
    assert recipients(sessions, guild_on[2], "newest") == [down[0]]
    assert recipients(sessions, guild_on[3], "newest") == [old[3]]  # [1, 2] not READY
    assert recipients(sessions, guild_on[3], "every") == [old[3]]
    assert recipients(sessions, guild_on[2], "every") == [old[2], down[0]]
    assert recipients(sessions, None, "newest") == [down[0]]  # no guild: shard 0
    # an old shard IDENTIFYing again does not make the old count the newest
    again = [Owner(1, 4, 60.0), *old[:1], *old[2:], *down]
    assert recipients(again, guild_on[0], "newest") == [down[0]]
    assert recipients([], guild_on[0], "newest") == []
