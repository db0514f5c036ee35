"""`shardctl run --stream` as a real process against the sandbox and a real nats-server.

Every proof here counts (shard, seq) of MESSAGE_CREATE: what the sandbox sent (its blasts'
ranges), what the stream stores, what consumers printed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest
from streamkit import (
    env_with_runtime,
    run_args,
    sandbox_config,
    short_dir,
    start_run,
    terminate,
)

from shardctl.sandbox import Blast, Sandbox
from shardctl.stream.consumer import StreamConsumer
from shardctl.stream.server import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def blasted(blast: Blast) -> set[tuple[int, int]]:
    return {(shard, seq) for shard, (first, last) in blast.sent.items()
            for seq in range(first, last + 1)}


async def blast(sb: Sandbox, per_shard: int) -> set[tuple[int, int]]:
    b = Blast(sb, per_shard)
    async with anyio.create_task_group() as tg:
        tg.start_soon(b.run)
        await b.prepared.wait()
        b.go()
    return blasted(b)


async def stored(url: str, wanted: set[tuple[int, int]], *, within: float = 60
                 ) -> Counter[tuple[int, int]]:
    """Every MESSAGE_CREATE the stream holds, counted, once ``wanted`` are all there."""
    seen: Counter[tuple[int, int]] = Counter()
    durable = f"check{anyio.current_time():.0f}".replace(".", "")
    async with StreamConsumer(url, durable, types=["MESSAGE_CREATE"]) as events:
        with anyio.fail_after(within):
            async for event in events:
                assert event.seq is not None
                seen[(event.shard, event.seq)] += 1
                await events.ack(event)
                if not events.pending and wanted <= seen.keys():
                    break
    return seen


async def all_ready(sb: Sandbox, shards: int) -> None:
    await sb.wait_for(lambda: len(sb.records("ready")) >= shards, timeout=60)


async def test_every_event_goes_into_the_stream_once(nats_server: NatsServer,
                                                      tmp_path: Path) -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb:
            process = await start_run(run_args(sb, run_dir / "state.json", nats_server.url),
                                      env_with_runtime(run_dir), tmp_path / "run.log")
            try:
                with anyio.fail_after(60):
                    await all_ready(sb, 4)
                sent = await blast(sb, 500)
                seen = await stored(nats_server.url, sent)
            finally:
                await terminate(process)
        assert set(seen) == sent
        assert max(seen.values()) == 1
