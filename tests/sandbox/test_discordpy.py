"""The sandbox against a client nobody here wrote: discord.py's AutoShardedClient.

If discord.py and the sandbox disagree, the protocol doc decides who is right.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import discord
import discord.http
import pytest
from cli_sandbox import REAL_CLIENT_WORLD, TOKEN, cli_sandbox, stop

from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class PacedClient(discord.AutoShardedClient):
    """discord.py's documented hook for identify pacing, tuned to the sandbox's interval."""

    def __init__(self, interval: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval = interval

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await asyncio.sleep(self.interval)


async def test_autosharded_client_readies_and_resumes_after_op7_and_op9(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="discord")
    cfg = SandboxConfig(shard_count=2, heartbeat_interval_ms=1500, identify_interval=0.5,
                        dispatch_rate=5.0)
    async with Sandbox(cfg) as sb:
        # discord.py has no base-URL option; Route.BASE is the class attribute every REST
        # call is built from (its own _set_api_version rewrites it the same way).
        monkeypatch.setattr(discord.http.Route, "BASE", sb.api_url)
        # No shard_count: discord.py then asks GET /gateway/bot for both the shard count
        # and the gateway URL (with a fixed count it would use its built-in URL).
        client = PacedClient(cfg.identify_interval + 0.1, intents=discord.Intents.default())
        seen: list[int | None] = []

        @client.event
        async def on_shard_resumed(shard_id: int) -> None:
            seen.append(shard_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(client.start, cfg.token)
            with anyio.fail_after(15):
                await sb.wait_for(lambda: len(sb.records("ready")) == 2)
                await sb.wait_for(client.is_ready)
            assert client.shard_count == 2
            assert sorted(r.shard_id for r in sb.records("ready")) == [0, 1]
            assert {g.id for g in client.guilds} == set(sb.world.guilds)

            await sb.inject(0, "reconnect")
            with anyio.fail_after(10):
                await sb.wait_for(lambda: bool(sb.records("resumed", 0)))
                await sb.wait_for(lambda: seen == [0])
                # the client keeps heartbeating on the new socket
                await sb.wait_for(lambda: any(
                    r.conn == sb.records("resumed", 0)[0].conn
                    for r in sb.records("heartbeat", 0)))
            # op 9 d:true → RESUME too; a server op 1 is answered at once (checklist 12, 33)
            await sb.inject(1, ("invalid_session", True))
            await sb.inject(0, "request_heartbeat")
            with anyio.fail_after(10):
                await sb.wait_for(lambda: bool(sb.records("resumed", 1)))
                await sb.wait_for(lambda: any(r["requested"] for r in sb.records("heartbeat", 0)))
            await client.close()
            tg.cancel_scope.cancel()

    resume = sb.records("resume", 0)[0]
    assert resume["path"] == "resume"  # RESUME went to resume_gateway_url
    closes = sb.records("client_close", 0)
    assert closes and closes[0]["code"] not in (1000, 1001)  # session kept across op 7
    assert len(sb.records("identify")) == 2  # resumes, not new sessions
    assert all(r["path"] == "resume" for r in sb.records("resume"))
    assert sb.violations == []
    # discord.py's gateway, shard and state code parsed everything without complaint
    # (discord.client only warns about optional voice packages here)
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith(("discord.gateway", "discord.shard", "discord.state",
                                  "discord.http"))
            and r.levelno >= logging.WARNING] == []


async def test_autosharded_client_with_an_activity_against_the_cli_sandbox(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """discord.py with ``activity=`` and no status: its IDENTIFY presence is the legacy
    ``game`` with ``status: null`` (Discord accepts it), beside hikari and @discordjs/ws
    against ``shardctl sandbox``."""
    async with cli_sandbox(tmp_path, *REAL_CLIENT_WORLD) as sb:
        monkeypatch.setattr(discord.http.Route, "BASE", sb.api_url)
        # shards 0 and 1 are in different buckets (max_concurrency 2): no pause between
        client = PacedClient(0.0, intents=discord.Intents.default(),
                             activity=discord.Game("sandbox"))
        ready: set[int] = set()
        resumed: set[int] = set()
        messages: Counter[int] = Counter()
        progress = anyio.Event()

        def check() -> None:
            if ready == {0, 1} and 0 in resumed and all(messages[s] >= 2 for s in (0, 1)):
                progress.set()

        @client.event
        async def on_shard_ready(shard_id: int) -> None:
            ready.add(shard_id)
            check()

        @client.event
        async def on_shard_resumed(shard_id: int) -> None:
            resumed.add(shard_id)
            check()

        @client.event
        async def on_message(message: discord.Message) -> None:
            assert message.guild is not None
            messages[message.guild.shard_id] += 1
            check()

        async with anyio.create_task_group() as tg:
            tg.start_soon(client.start, TOKEN)
            try:
                with anyio.fail_after(30):
                    await progress.wait()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await client.close()
                tg.cancel_scope.cancel()
        await stop(sb.process)

        assert sb.records("violation") == [], sb.log()
        assert sorted(r["shard_id"] for r in sb.records("identify")) == [0, 1]
        assert all(r["details"]["path"] == "resume" for r in sb.records("resume"))
        assert any(r["shard_id"] == 0 for r in sb.records("resumed"))
        assert {"presence_legacy_game", "presence_null_status"} <= {
            r["details"]["rule"] for r in sb.records("note")}
