"""When a client frame counts as arrived: as a busy server reads it, and with arrival jitter."""

from __future__ import annotations

import random
import time

import anyio
import pytest
from sandbox_client import RawClient
from websockets.asyncio.server import ServerConnection

from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.sandbox.connection import StampedServerConnection

pytestmark = pytest.mark.anyio

#: A sleep's usual lateness on a busy 2-core machine.
SLACK = 0.03


async def test_an_identify_is_stamped_when_the_busy_loop_reads_it() -> None:
    async with Sandbox(SandboxConfig(identify_interval=0.2)) as sb:
        client = await RawClient.open(sb.gateway_url)
        await client.hello()
        sent = anyio.current_time()
        await client.identify()
        # This loop (the sandbox's too) is busy elsewhere: the point of the test.
        time.sleep(0.05)  # noqa: ASYNC251
        await client.recv_op(0, "READY")
        (identify,) = sb.records("identify")
        await client.close()
    assert identify.at >= sent + 0.05


@pytest.mark.parametrize(("stamp", "kind"), [("loop", ServerConnection),
                                              ("kernel", StampedServerConnection)])
async def test_kernel_receive_stamps_are_an_option(stamp: str, kind: type[object]) -> None:
    async with Sandbox(SandboxConfig(arrival_stamp=stamp)) as sb:
        client = await RawClient.open(sb.gateway_url)
        await client.hello()
        (conn,) = sb.connections
        assert type(conn.ws) is kind
        await client.close()


async def test_arrival_jitter_reads_each_frame_a_seeded_random_time_late() -> None:
    jitter, shards, seed = 0.04, 6, 5
    cfg = SandboxConfig(shard_count=shards, max_concurrency=shards, arrival_jitter_ms=40,
                        seed=seed)
    delays = []
    async with Sandbox(cfg) as sb:
        for shard in range(shards):  # one frame at a time: the draws go in this order
            client = await RawClient.open(sb.gateway_url)
            await client.hello()
            sent = anyio.current_time()
            await client.identify(shard=[shard, shards])
            await client.recv_op(0, "READY")
            delays.append(sb.records("identify", shard)[0].at - sent)
            await client.close()
    rng = random.Random(seed)
    draws = [rng.uniform(0, jitter) for _ in range(shards)]
    for delay, draw in zip(delays, draws, strict=True):
        assert draw <= delay <= draw + SLACK, (delays, draws)
    assert max(delays) - min(delays) >= jitter / 4  # not one fixed delay


def test_bad_stamping_settings_are_refused() -> None:
    for bad in ({"arrival_stamp": "wall"}, {"arrival_jitter_ms": -1.0},
                {"arrival_jitter_ms": float("nan")}, {"arrival_jitter_ms": float("inf")}):
        with pytest.raises(ValueError, match="arrival"):
            SandboxConfig(**bad)  # type: ignore[arg-type]
