"""discord.py's AutoShardedClient against the sandbox, for ``--peers`` (figures 1 and 2).

``throughput``: all shards READY → ``{"ready": n}``; counts ``on_message`` until
``--expect`` → ``{"count", "first_ns", "last_ns"}``.  ``startup``: runs until stopped (the
parent reads the sandbox's records).  discord.py has no base-URL option: ``Route.BASE`` is
the class attribute its REST calls are built from.  Identify pacing is its documented
``before_identify_hook`` (one shard at a time; the default sleeps 5 s) set to the interval.
discord.py asks for zstd-stream whenever ``zstandard`` is importable; ``--compress
zlib-stream`` hides that module from it first, so it asks for zlib-stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

if "--compress=zlib-stream" in sys.argv:  # before discord.utils picks its decompressor
    sys.modules["zstandard"] = None  # type: ignore[assignment]

import discord
import discord.http


class Client(discord.AutoShardedClient):
    def __init__(self, args: argparse.Namespace, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.args = args
        self.count = 0
        self.first_ns = self.last_ns = 0
        self.done = asyncio.Event()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial:
            await asyncio.sleep(self.args.interval)

    async def on_ready(self) -> None:
        print(json.dumps({"ready": self.shard_count}), flush=True)

    async def on_message(self, message: discord.Message) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
        self.last_ns = now
        self.count += 1
        if self.args.expect and self.count >= self.args.expect:
            print(json.dumps({"count": self.count, "first_ns": self.first_ns,
                              "last_ns": self.last_ns}), flush=True)
            self.args.expect = 0


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    discord.http.Route.BASE = args.api_url
    intents = discord.Intents.default()
    intents.message_content = True
    client = Client(args, intents=intents)
    await client.start("sandbox-token")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--api-url", required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--compress", choices=["zlib-stream", "zstd-stream"],
                   default="zstd-stream")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
