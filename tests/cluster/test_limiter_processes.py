"""Clients in separate processes share one limiter; killing one costs the others nothing.

The service runs in the test process; each client is a real process with its own
LimiterClient.  Grant times come from the service's own record.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.gateway.limits import Limits

pytestmark = pytest.mark.anyio

INTERVAL = 0.2
PROBE = 0.05
SLACK = 0.08

CLIENT = """
import sys, anyio
from shardctl.ipc.limiter import LimiterClient

endpoint, client_id, mode, *shards = sys.argv[1:]

async def main() -> None:
    async with LimiterClient(endpoint, client_id=client_id, ping_interval=0.05) as client:
        async def one(shard: int) -> None:
            async with client.identify(shard):
                if mode == "hold":  # holds the grant (never sends, never releases)
                    await anyio.sleep_forever()
        async with anyio.create_task_group() as tg:
            for shard in shards:
                tg.start_soon(one, int(shard))

anyio.run(main)
"""


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="slp-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


@asynccontextmanager
async def client_process(endpoint: str, client_id: str, mode: str, shards: list[int]
                         ) -> AsyncIterator[Process]:
    process = await anyio.open_process(
        [sys.executable, "-c", CLIENT, endpoint, client_id, mode, *map(str, shards)],
        stdin=None, stdout=None, stderr=None,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.fail_after(5):
            await process.wait()


async def test_killing_a_holder_and_a_waiter_costs_the_others_no_slot(endpoint: str) -> None:
    # hold_limit is long: only noticing the dead holder can free its bucket in time.
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={},
                                   hold_limit=30.0, probe_interval=PROBE)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        with anyio.fail_after(8):
            async with client_process(endpoint, "holder", "hold", [0]) as holder:
                await server.wait_for(lambda: len(server.grants()) == 1)
                async with client_process(endpoint, "waiter", "normal", [1, 2, 3]) as waiter:
                    await server.wait_for(lambda: len(server.scheduler) == 3)
                    async with client_process(endpoint, "survivor", "normal",
                                              [4, 5, 6, 7]):
                        await server.wait_for(lambda: len(server.scheduler) == 7)
                        # The holder blocks the bucket; the waiter's requests are next.
                        killed_at = anyio.current_time()
                        holder.kill()
                        waiter.kill()
                        await server.wait_for(lambda: len(server.grants()) == 5)
        tg.cancel_scope.cancel()

    grants = server.grants()
    assert [g.client for g in grants] == ["holder"] + ["survivor"] * 4
    assert [g.shard_id for g in grants[1:]] == [4, 5, 6, 7]
    drops = {e.client for e in server.record if e.kind == "drop"}
    assert {"holder", "waiter"} <= drops
    # The dead holder's IDENTIFY, if any, left before it died: the next grant one interval
    # after that was noticed (a probe), and none went to the dead waiter.
    first = grants[1].at - killed_at
    assert INTERVAL <= first < INTERVAL + PROBE + SLACK, first
    pace = [b.at - a.at for a, b in itertools.pairwise(grants[1:])]
    assert all(INTERVAL <= gap < INTERVAL + SLACK for gap in pace), pace


async def test_processes_share_one_pace(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL, max_concurrency=2),
                                   last_grants={})
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        with anyio.fail_after(8):
            async with (client_process(endpoint, "one", "normal", [0, 1, 2, 3]),
                        client_process(endpoint, "two", "normal", [4, 5, 6, 7])):
                await server.wait_for(lambda: len(server.grants()) == 8)
        tg.cancel_scope.cancel()
    grants = server.grants()
    assert sorted(g.shard_id or 0 for g in grants) == list(range(8))
    for bucket in (0, 1):
        ats = [g.at for g in grants if g.bucket == bucket]
        assert all(b - a >= INTERVAL for a, b in itertools.pairwise(ats)), ats
