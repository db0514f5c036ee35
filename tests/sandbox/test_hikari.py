"""hikari's GatewayBot against ``shardctl sandbox`` (issue 13): the sandbox must accept a
widely used client that Discord accepts, legacy presence shape and all.

hikari runs in this process (asyncio); the sandbox is the CLI in a child process, judged by
its ``--record`` file once it has stopped.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import anyio
import hikari
import pytest
from cli_sandbox import REAL_CLIENT_WORLD, cli_sandbox, stop

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(90)]

#: hikari reads the bot id from the token's first segment, as in a real token.
TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.sandbox.token"
SANDBOX = ("--token", TOKEN, *REAL_CLIENT_WORLD)


async def test_hikari_readies_two_shards_receives_dispatches_and_resumes_after_op7(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hikari")
    async with cli_sandbox(tmp_path, *SANDBOX) as sb:
        bot = hikari.GatewayBot(TOKEN, rest_url=sb.api_url, banner=None, logs=None,
                                suppress_optimization_warning=True,
                                intents=hikari.Intents.GUILDS | hikari.Intents.GUILD_MESSAGES)
        ready: set[int] = set()
        resumed: set[int] = set()
        messages: Counter[int] = Counter()
        progress = anyio.Event()

        def done() -> bool:
            return ready == {0, 1} and 0 in resumed and all(messages[s] >= 2 for s in (0, 1))

        async def on_event(event: hikari.Event) -> None:
            if isinstance(event, hikari.ShardReadyEvent):
                ready.add(event.shard.id)
            elif isinstance(event, hikari.ShardResumedEvent):
                resumed.add(event.shard.id)
            elif isinstance(event, hikari.GuildMessageCreateEvent):
                messages[event.shard.id] += 1
            if done():
                progress.set()

        for kind in (hikari.ShardReadyEvent, hikari.ShardResumedEvent,
                     hikari.GuildMessageCreateEvent):
            bot.subscribe(kind, on_event)
        try:
            with anyio.fail_after(30):
                await bot.start(check_for_updates=False)
                await progress.wait()
            assert bot.shard_count == 2
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await bot.close()
        await stop(sb.process)

        assert sb.records("violation") == [], sb.log()
        assert sorted(r["shard_id"] for r in sb.records("identify")) == [0, 1]
        resumes = sb.records("resume")
        assert resumes and all(r["details"]["path"] == "resume" for r in resumes)
        assert any(r["shard_id"] == 0 for r in sb.records("resumed"))
        # the legacy presence reached the sandbox and was noted, not refused
        assert {"presence_legacy_game", "presence_without_activities"} <= {
            r["details"]["rule"] for r in sb.records("note")}
    # hikari parsed every payload without complaint
    assert [r.getMessage() for r in caplog.records
            if r.name.startswith("hikari") and r.levelno >= logging.WARNING] == []
