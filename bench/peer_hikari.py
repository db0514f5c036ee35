"""hikari's GatewayBot against the sandbox, for ``--peers`` (figures 1 and 6).

All shards started → ``{"ready": n}``; counts ``GuildMessageCreateEvent`` (hikari parses
each payload into its models and cache, its normal work) until ``--expect`` →
``{"count", "first_ns", "last_ns"}``.  hikari reads the bot id from the token's first
segment, so the sandbox runs with :data:`TOKEN`.  It speaks zstd-stream only with
``hikari[zstd]`` installed, else zlib-stream (its default, used here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import hikari

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.sandbox.token"


async def main(args: argparse.Namespace) -> None:
    bot = hikari.GatewayBot(TOKEN, rest_url=args.api_url, banner=None, logs="ERROR",
                            suppress_optimization_warning=True,
                            intents=hikari.Intents.GUILDS | hikari.Intents.GUILD_MESSAGES
                            | hikari.Intents.MESSAGE_CONTENT)
    count = 0
    first_ns = 0
    expect = args.expect

    async def on_message(event: hikari.GuildMessageCreateEvent) -> None:
        nonlocal count, first_ns, expect
        now = time.monotonic_ns()
        if not count:
            first_ns = now
        count += 1
        if expect and count >= expect:
            print(json.dumps({"count": count, "first_ns": first_ns, "last_ns": now}),
                  flush=True)
            expect = 0

    bot.subscribe(hikari.GuildMessageCreateEvent, on_message)
    await bot.start(check_for_updates=False)
    print(json.dumps({"ready": bot.shard_count}), flush=True)
    try:
        await bot.join()
    finally:
        await bot.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--api-url", required=True)
    p.add_argument("--expect", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
