"""A worker process for the multi-process limiter tests: N real Shards, one LimiterClient.

Run by path: ``python limiter_worker.py LIMITER_ENDPOINT GATEWAY_URL SHARD_COUNT ID...``.
Driven by lines on stdin, answered on stdout:

- at start it opens the limiter client, builds its shards and prints ``up``;
- ``go``: every shard connects; their IDENTIFYs wait at a gate, ahead of the limiter;
- ``open``: the gate opens and the shards ask the limiter for their slots;
- end of stdin, SIGTERM or SIGINT: the shards shut down and the process exits 0.

The two steps keep what the tests measure (the pace the limiter keeps across processes)
apart from interpreter start-up and from the burst of all shards connecting at once.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import anyio.abc

from shardctl.gateway.intents import Intents
from shardctl.ipc.limiter import LimiterClient
from shardctl.worker.limiter import RejectionAware, SessionLimiter
from shardctl.worker.shard import Shard

TOKEN = "sandbox-token"
INTENTS = int(Intents.GUILDS)


class Gated:
    """A session limiter that lets no request through to ``inner`` before ``gate`` is set."""

    def __init__(self, inner: SessionLimiter, gate: anyio.Event) -> None:
        self._inner, self._gate = inner, gate

    def identify(self, shard_id: int) -> AbstractAsyncContextManager[None]:
        return self._identify(shard_id)

    @asynccontextmanager
    async def _identify(self, shard_id: int) -> AsyncIterator[None]:
        await self._gate.wait()
        async with self._inner.identify(shard_id):
            yield

    def identify_rejected(self, shard_id: int, after: float | None = None) -> None:
        if isinstance(self._inner, RejectionAware):
            self._inner.identify_rejected(shard_id, after)


def _say(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


async def _commands(go: anyio.Event, gate: anyio.Event, stop: anyio.CancelScope) -> None:
    while line := await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
        {"go": go, "open": gate}[line.strip()].set()
    stop.cancel()


async def _signals(stop: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.cancel()
            return


async def _run(shards: list[Shard], go: anyio.Event) -> None:
    await go.wait()
    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as starting:
            for shard in shards:
                starting.start_soon(tg.start, shard.connect)
        _say("ready")
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for shard in shards:
                    await shard.shutdown()


async def main(endpoint: str, gateway: str, shard_count: int, ids: list[int]) -> None:
    go, gate = anyio.Event(), anyio.Event()
    async with LimiterClient(endpoint, ping_interval=0.5) as client:
        limiter = Gated(client, gate)
        shards = [
            Shard(id=i, token=TOKEN, total_shard_count=shard_count, gateway=gateway,
                  output=None, intents=INTENTS, transport_compression="zlib-stream",
                  session_limiter=limiter)
            for i in ids
        ]
        with anyio.CancelScope() as stop:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_commands, go, gate, stop)
                tg.start_soon(_signals, stop)
                _say("up")
                await _run(shards, go)


if __name__ == "__main__":
    # The test process plays Discord, which never shares CPUs with the bot: on a small
    # machine the workers must not starve it, or its clock reads IDENTIFYs late.
    os.nice(10)
    endpoint_arg, gateway_arg, count_arg, *id_args = sys.argv[1:]
    anyio.run(main, endpoint_arg, gateway_arg, int(count_arg), [int(a) for a in id_args])
