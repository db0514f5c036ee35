"""Gateway commands from other processes (issue 15 part 3): ``shardctl.Commands`` and
``shardctl send`` against a running cluster, with the sandbox's record as the judge."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from clusterkit import TOKEN, env_with_runtime, short_dir

from shardctl import CommandRefusedError, Commands
from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.ipc.security import generate_keys, load_client
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHARDS = 4
PRESENCE = {"since": None, "activities": [], "status": "idle", "afk": False}

#: A bot's consumer process: sets presence on every shard, joins one guild's voice channel.
CONSUMER = """
import sys, anyio, orjson, shardctl

endpoint, keys, guild, channel = sys.argv[1:5]

async def main() -> None:
    async with shardctl.Commands(endpoint, keys=keys or None, timeout=10) as commands:
        status = await commands.update_status(
            {"since": None, "activities": [], "status": "idle", "afk": False})
        voice = await commands.update_voice(guild, channel)
    print(orjson.dumps({"status": [r.to_body() for r in status],
                        "voice": voice.to_body()}).decode())

anyio.run(main)
"""


def ops(sb: Sandbox, op: int) -> list[int]:
    """The shards that sent gateway op ``op``, once per frame, sorted."""
    return sorted(r.shard_id for r in sb.records("command")
                  if r.get("op") == op and r.shard_id is not None)


@asynccontextmanager
async def cluster(run_dir: Path, **options: Any) -> AsyncIterator[tuple[Sandbox, Supervisor]]:
    config = SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=0.2,
                           heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)
    async with Sandbox(config) as sb, Supervisor(
            token=TOKEN, api_url=sb.api_url, processes=2, identify_interval=0.2,
            runtime_dir=run_dir, state_file=run_dir / "state.json",
            intents=Intents.default() | Intents.GUILD_MEMBERS, **options) as sup:
        with anyio.fail_after(30):
            await sup.wait_ready()
        yield sb, sup


async def cli(run_dir: Path, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process([sys.executable, "-m", "shardctl.cli", "send", *args],
                                     check=False, env=env_with_runtime(run_dir))
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_a_consumer_process_sets_presence_everywhere_and_joins_voice_on_the_owner(
        ) -> None:
    with short_dir() as base:
        generate_keys(base / "keys")
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with cluster(base / "run", control_endpoint=control,
                           curve_keys=base / "keys") as (sb, sup):
            control = sup.endpoints["control"]
            owner = 2
            guild = sb.world.guilds_for(owner, SHARDS)[0]
            # A worker key reaches the control channel but is no operator: refused.
            async with Commands(control, keys=load_client(base / "keys", "worker"),
                                timeout=5) as commands:
                with pytest.raises(CommandRefusedError, match="operator role"):
                    await commands.update_status(PRESENCE)
                with pytest.raises(CommandRefusedError, match="operator role"):
                    await commands.update_voice(guild.id, guild.voice_channel_id)
            # A consumer key does not even get through the CURVE handshake: no answer.
            async with Commands(control, keys=load_client(base / "keys", "consumer"),
                                timeout=1) as commands:
                with pytest.raises(TimeoutError, match="no answer"):
                    await commands.update_voice(guild.id, guild.voice_channel_id)
            assert ops(sb, 3) == [] and ops(sb, 4) == []

            result = await anyio.run_process(
                [sys.executable, "-c", CONSUMER, control, str(base / "keys"), str(guild.id),
                 str(guild.voice_channel_id)], check=False)
            assert result.returncode == 0, result.stderr.decode()
            body = orjson.loads(result.stdout)
            assert [(r["shard"], r["ok"]) for r in body["status"]] == [
                (shard, True) for shard in range(SHARDS)]
            assert body["voice"] == {**body["voice"], "shard": owner, "ok": True}
            with anyio.fail_after(10):
                await sb.wait_for(lambda: len(ops(sb, 3)) == SHARDS and ops(sb, 4) == [owner])
            assert ops(sb, 3) == list(range(SHARDS))
            assert ops(sb, 4) == [owner]
            assert sup.control_refusals["command"] == 2
        assert not sb.violations


async def test_an_anonymous_peer_is_refused_and_nothing_is_sent() -> None:
    with short_dir() as run_dir:
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with cluster(run_dir, control_endpoint=control,
                           insecure_loopback=True) as (sb, sup):
            control = sup.endpoints["control"]
            guild = sb.world.guilds_for(1, SHARDS)[0]
            async with Commands(control, timeout=5) as commands:
                with pytest.raises(CommandRefusedError, match="operator role"):
                    await commands.update_voice(guild.id, guild.voice_channel_id)
                with pytest.raises(CommandRefusedError, match="operator role"):
                    await commands.fetch_guild_members(guild.id, timeout=1.0)
            code, out, err = await cli(run_dir, "status", "--status", "dnd",
                                       "--control-endpoint", control, "--timeout", "5")
            assert code == 1, (out, err)
            assert "refused" in err and "operator role" in err
            assert ops(sb, 3) == [] and ops(sb, 4) == [] and ops(sb, 8) == []
            assert all(s.state == "ready" for s in sup.status())
        assert not sb.violations


async def test_send_commands_from_the_cli_and_the_outbound_limiter_says_when_to_retry(
        ) -> None:
    with short_dir() as run_dir:
        async with cluster(run_dir) as (sb, sup):
            # The private ipc:// endpoint in the runtime directory: this user is operator.
            code, out, err = await cli(run_dir, "status", "--status", "idle")
            assert code == 0, err
            assert out.splitlines() == [f"shard {s}: ok" for s in range(SHARDS)]
            guild = sb.world.guilds_for(3, SHARDS)[0]
            code, out, err = await cli(run_dir, "voice", "--guild", str(guild.id),
                                       "--channel", str(guild.voice_channel_id), "--json")
            assert code == 0, err
            assert orjson.loads(out) == {"shard": 3, "ok": True, "error": None,
                                         "retry_after": None, "value": None}
            code, out, err = await cli(run_dir, "members", "--guild", str(guild.id))
            assert code == 0, err
            assert out.strip() == f"shard 3: ok, {sb.config.members_per_guild} members"
            assert ops(sb, 4) == [3] and 8 in {r.get("op") for r in sb.records("command")}

            # Presence: 5 per 20 s per shard.  One went out above; four more pass, then the
            # shard's limiter refuses and says when it would take the next.
            endpoint = sup.endpoints["control"]
            async with Commands(endpoint, timeout=10) as commands:
                for _ in range(4):
                    assert all(await commands.update_status(PRESENCE, shard_id=0))
                [limited] = await commands.update_status(PRESENCE, shard_id=0)
            ok, error = limited
            assert not ok and error is not None
            assert error.startswith("rate limited: retry after ")
            assert limited.retry_after is not None and 0 < limited.retry_after <= 20
            code, out, err = await cli(run_dir, "status", "--status", "dnd", "--shard", "0")
            assert code == 1, (out, err)
            assert out.startswith("shard 0: failed: rate limited: retry after ")
            assert ops(sb, 3) == [0] * 5 + [1, 2, 3]
        assert not sb.violations


async def test_send_without_a_supervisor_exits_3() -> None:
    with short_dir() as run_dir:
        code, out, err = await cli(run_dir, "voice", "--guild", "1", "--leave",
                                   "--timeout", "0.5")
        assert code == 3, (out, err)
        assert "no answer from a supervisor" in err and "0.5 s" in err
