"""The reference loop of figures 1 and 6: what a bot must do, in one process.

N sockets to the sandbox (websockets, like the worker), each message inflated with the same
inflater the worker uses and parsed whole (orjson), ``d`` included, as a bot reads it.  It
heartbeats so the sandbox keeps it, prints ``{"ready": n}`` once every shard is READY and
has its guilds, then ``{"count", "first_ns", "last_ns"}`` after ``--expect`` MESSAGE_CREATE.
CPU is read by the parent from /proc, exactly like the cluster's.
"""

from __future__ import annotations

import argparse
import json
import time

import anyio
import orjson
from websockets.asyncio.client import ClientConnection, connect

from shardctl.gateway.inflate import new_inflater


class Shard:
    def __init__(self, ws: ClientConnection, compress: str) -> None:
        self.ws = ws
        self.inflater = new_inflater(compress)
        self.seq: int | None = None

    async def recv(self) -> bytes:
        inflater = self.inflater
        while True:
            message = await self.ws.recv()
            if isinstance(message, str):
                return message.encode()
            assert inflater is not None
            payload = inflater.feed(message)
            if payload is not None:
                return payload

    async def beat(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            await self.ws.send(json.dumps({"op": 1, "d": self.seq}))


async def open_shard(url: str, compress: str, shard_id: int, count: int, *, intents: int,
                     tg: anyio.abc.TaskGroup) -> Shard:
    ws = await connect(f"{url}?v=10&encoding=json&compress={compress}", compression=None,
                       max_size=64 * 2**20, ping_interval=None)
    shard = Shard(ws, compress)
    hello = orjson.loads(await shard.recv())
    tg.start_soon(shard.beat, hello["d"]["heartbeat_interval"] / 1000)
    await ws.send(json.dumps({"op": 2, "d": {
        "token": "sandbox-token", "intents": intents, "shard": [shard_id, count],
        "properties": {"os": "linux", "browser": "bench", "device": "bench"}}}))
    guilds = None
    while guilds != 0:
        frame = orjson.loads(await shard.recv())
        shard.seq = frame.get("s") or shard.seq
        if frame.get("t") == "READY":
            guilds = len(frame["d"]["guilds"])
        elif frame.get("t") == "GUILD_CREATE" and guilds is not None:
            guilds -= 1
    return shard


async def main(args: argparse.Namespace) -> None:
    count = 0
    first_ns = last_ns = 0
    async with anyio.create_task_group() as tg:
        shards = []
        for i in range(args.shards):
            shards.append(await open_shard(args.url, args.compress, i, args.shards,
                                           intents=args.intents, tg=tg))
        print(json.dumps({"ready": len(shards)}), flush=True)
        done = anyio.Event()

        async def pump(shard: Shard) -> None:
            nonlocal count, first_ns, last_ns
            recv, mono, loads = shard.recv, time.monotonic_ns, orjson.loads
            while True:
                obj = loads(await recv())
                s, t = obj.get("s"), obj.get("t")
                if s is not None:
                    shard.seq = s
                if t == "MESSAGE_CREATE":
                    last_ns = mono()
                    if not count:
                        first_ns = last_ns
                    count += 1
                    if count >= args.expect:
                        done.set()

        for shard in shards:
            tg.start_soon(pump, shard)
        await done.wait()
        print(json.dumps({"count": count, "first_ns": first_ns, "last_ns": last_ns}),
              flush=True)
        tg.cancel_scope.cancel()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--compress", default="zlib-stream")
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--intents", type=int, required=True)
    return p.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse())
