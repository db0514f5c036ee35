"""Gateway commands over NATS request-reply (`run --stream-commands`): a consumer process
with ``shardctl.StreamCommands`` and ``shardctl send --stream``, the sandbox's record as
the judge."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from streamkit import TOKEN, short_dir

from shardctl import StreamCommands
from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.stream.server import NatsServer
from shardctl.stream.settings import StreamSettings

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SHARDS = 4

#: A bot's consumer process: sets presence on every shard, joins one guild's voice channel.
CONSUMER = """
import sys, anyio, orjson, shardctl

url, guild, channel = sys.argv[1:4]

async def main() -> None:
    async with shardctl.StreamCommands(url, timeout=10) as commands:
        status = await commands.update_status(
            {"since": None, "activities": [], "status": "idle", "afk": False})
        voice = await commands.update_voice(guild, channel)
    print(orjson.dumps({"status": [r.to_body() for r in status],
                        "voice": voice.to_body()}).decode())

anyio.run(main)
"""


def ops(sb: Sandbox, op: int) -> list[int]:
    return sorted(r.shard_id for r in sb.records("command")
                  if r.get("op") == op and r.shard_id is not None)


@asynccontextmanager
async def cluster(run_dir: Path, url: str, *, commands: bool
                  ) -> AsyncIterator[tuple[Sandbox, Supervisor]]:
    config = SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=0.05,
                           heartbeat_interval_ms=5000, guilds_per_shard=2, session_ttl=60.0)
    async with Sandbox(config) as sb, Supervisor(
            token=TOKEN, api_url=sb.api_url, processes=2, identify_interval=0.05,
            runtime_dir=run_dir, state_file=run_dir / "state.json",
            intents=Intents.default() | Intents.GUILD_MEMBERS,
            stream=StreamSettings((url,), commands=commands)) as sup:
        with anyio.fail_after(30):
            await sup.wait_ready()
        yield sb, sup


async def send(*args: str) -> tuple[int, str, str]:
    result = await anyio.run_process([sys.executable, "-m", "shardctl.cli", "send", *args],
                                     check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_a_consumer_process_sets_presence_everywhere_and_joins_voice_on_the_owner(
        nats_server: NatsServer) -> None:
    with short_dir() as run_dir:
        async with cluster(run_dir, nats_server.url, commands=True) as (sb, _):
            owner = 2
            guild = sb.world.guilds_for(owner, SHARDS)[0]
            result = await anyio.run_process(
                [sys.executable, "-c", CONSUMER, nats_server.url, str(guild.id),
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

            other = sb.world.guilds_for(1, SHARDS)[0]
            code, out, err = await send("members", "--stream", nats_server.url,
                                        "--guild", str(other.id))
            assert code == 0, err
            assert out.strip() == f"shard 1: ok, {sb.config.members_per_guild} members"
        assert not sb.violations


async def test_without_stream_commands_nothing_answers_and_nothing_is_sent(
        nats_server: NatsServer) -> None:
    with short_dir() as run_dir:
        async with cluster(run_dir, nats_server.url, commands=False) as (sb, _):
            guild = sb.world.guilds_for(0, SHARDS)[0]
            async with StreamCommands(nats_server.url, timeout=2) as commands:
                with pytest.raises(TimeoutError, match="--stream-commands"):
                    await commands.update_voice(guild.id, guild.voice_channel_id)
            code, _, err = await send("status", "--stream", nats_server.url, "--status",
                                      "idle", "--timeout", "2")
            assert code == 3, err
            assert ops(sb, 3) == [] and ops(sb, 4) == []


async def test_a_bad_request_is_refused_with_a_reason(nats_server: NatsServer) -> None:
    import nats

    with short_dir() as run_dir:
        async with cluster(run_dir, nats_server.url, commands=True) as (sb, sup):
            nc = await nats.connect(nats_server.url)
            try:
                answers: list[dict[str, Any]] = []
                for data in (b"junk", b"[]", orjson.dumps({"name": "shutdown", "args": {}}),
                             orjson.dumps({"name": "update_voice",
                                           "args": {"guild_id": True}})):
                    reply = await nc.request("shardctl-commands", data, timeout=5)
                    answers.append(orjson.loads(reply.data))
            finally:
                await nc.close()
            assert all(a["ok"] is False and a["error"] for a in answers), answers
            assert "unknown command" in answers[2]["error"]
            assert ops(sb, 4) == []
            assert sup.control_refusals["command"] == 2



async def test_send_to_a_nats_nobody_runs_exits_3() -> None:
    from shardctl.ports import unused_port

    code, _, err = await send("status", "--stream", f"nats://127.0.0.1:{unused_port()}",
                              "--status", "idle", "--timeout", "1")
    assert code == 3, err
    assert "cannot reach NATS" in err and "Traceback" not in err
