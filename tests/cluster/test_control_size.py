"""No size cliff on the control channel (issue 12 item 5): large replies arrive whole."""

from __future__ import annotations

import anyio
import pytest
from clusterkit import TOKEN, short_dir

from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_fetch_guild_members_of_a_guild_of_thousands_returns_every_member() -> None:
    # ~330 bytes a member: 4,000 members are a reply of about 1.3 MB, over one message's limit.
    config = SandboxConfig(shard_count=1, max_concurrency=1, identify_interval=0.2,
                           heartbeat_interval_ms=2000, guilds_per_shard=1,
                           members_per_guild=4000)
    with short_dir() as run_dir:
        async with Sandbox(config) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                runtime_dir=run_dir, state_file=run_dir / "state.json",
                intents=Intents.default() | Intents.GUILD_MEMBERS) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            guild = sb.world.guilds_for(0, 1)[0]
            with anyio.fail_after(60):
                reply = await sup.fetch_guild_members(guild.id, timeout=20.0)
            assert reply, reply.error
            assert len(reply.value) == 4000
            assert len({m["user"]["id"] for m in reply.value}) == 4000
            assert not sb.violations
