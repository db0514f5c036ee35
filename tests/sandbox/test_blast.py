"""Blast: a pre-compressed stream that decodes, in order, with the socket's own context."""

from __future__ import annotations

import anyio
import pytest
from sandbox_client import RawClient

from shardctl.gateway.intents import Intents
from shardctl.sandbox import Blast, Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio

INTENTS = int(Intents.GUILDS | Intents.GUILD_MESSAGES | Intents.MESSAGE_CONTENT)


@pytest.mark.parametrize("compress", ["zlib-stream", "zstd-stream", None])
async def test_blast_sends_numbered_messages_that_decode_after_ready(compress: str | None
                                                                      ) -> None:
    cfg = SandboxConfig(shard_count=2, guilds_per_shard=2, heartbeat_interval_ms=5000,
                        identify_interval=0.0, max_concurrency=2)
    async with Sandbox(cfg) as sb:
        clients = []
        for shard in range(2):
            c = await RawClient.open(sb.gateway_url, compress=compress)
            await c.ready(shard=[shard, 2], intents=INTENTS)
            for _ in range(2):
                await c.recv_op(0, "GUILD_CREATE")
            clients.append(c)
        blast = Blast(sb, 300)
        async with anyio.create_task_group() as tg:
            tg.start_soon(blast.run)
            await blast.prepared.wait()
            assert set(blast.sent) == {0, 1}
            blast.go()
            for shard, c in enumerate(clients):
                first, last = blast.sent[shard]
                seqs = []
                for _ in range(300):
                    frame = await c.recv()
                    assert frame["t"] == "MESSAGE_CREATE" and frame["d"]["content"]
                    seqs.append(frame["s"])
                assert seqs == list(range(first, last + 1))
                # The context stays usable for what the socket sends afterwards.
                assert (await c.heartbeat())["op"] == 11
        assert blast.done.is_set() and not sb.violations
        assert [r["last"] - r["first"] + 1 for r in sb.records("blast")] == [300, 300]
        for c in clients:
            await c.close()
