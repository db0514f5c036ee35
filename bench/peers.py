"""``--peers``: discord.py's AutoShardedClient (and hikari's GatewayBot, when installed)
against the same sandbox stream, for figures 1 (zlib-stream) and 2; their ratios are
printed beside ours.  A peer that is not installed is reported as skipped, never a failure.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from typing import Any

import anyio

from bench.common import Figure, child, log
from bench.startup import BIG, INTERVAL, MAX_CONCURRENCY
from bench.throughput import SHARDS, blast, sandbox_config
from shardctl.sandbox import Sandbox, SandboxConfig

#: discord.py identifies one shard at a time: 256 shards would take a minute at 0.25 s.
STARTUP_SHARDS = 64


async def discordpy_throughput(per_shard: int) -> dict[str, Any]:
    expect = SHARDS * per_shard
    async with Sandbox(sandbox_config()) as sb, \
            child("peer_discordpy", "--api-url", sb.api_url, "--expect", str(expect)) as peer:
        await peer.expect("ready", 120.0)
        await anyio.sleep(0.5)
        return await blast(sb, per_shard, [peer.pid], lambda: peer.expect("count", 600.0))


async def discordpy_startup(shards: int) -> dict[str, float]:
    cfg = SandboxConfig(shard_count=shards, max_concurrency=MAX_CONCURRENCY,
                        identify_interval=INTERVAL, guilds_per_shard=1, members_per_guild=5,
                        record_dispatches=False, session_start_total=100_000)
    async with Sandbox(cfg) as sb, \
            child("peer_discordpy", "--api-url", sb.api_url, "--interval",
                  str(INTERVAL)) as peer:
        await peer.expect("ready", 600.0)
        identifies, readies = sb.records("identify"), sb.records("ready")
        violations = len(sb.records("identify_rejected"))
    first, last = min(r.at for r in identifies), max(r.at for r in readies)
    ident_at = {r.shard_id: r.at for r in identifies}
    rtt = statistics.median(r.at - ident_at[r.shard_id] for r in readies)
    ideal = (math.ceil(shards / MAX_CONCURRENCY) - 1) * INTERVAL + rtt
    return {"span": last - first, "ideal": ideal, "violations": violations}


def _ours(figures: list[Figure], name: str) -> str:
    for f in figures:
        if f.name == name and f.ratio is not None:
            return f"ours {f.ratio:.2f}x"
    return "ours not run"


async def run(quick: bool, names: list[str], ours: list[Figure]) -> list[Figure]:
    out: list[Figure] = []
    per_shard = 2000 if quick else 5000
    if importlib.util.find_spec("discord") is None:
        out.append(Figure("peers discord.py", None, "", target="skipped (not installed)"))
    else:
        if "throughput" in names:
            log(f"peers: discord.py throughput, {SHARDS} x {per_shard} events (zlib-stream)")
            got = await discordpy_throughput(per_shard)
            log(f"  discord.py: {got['events_s']:.0f} ev/s, {got['cpu_us']:.1f} µs/event")
            ref = next((f for f in ours if f.name == "1 cpu/event zlib"), None)
            out.append(Figure("peer discord.py cpu/event zlib", round(got["cpu_us"], 2), "µs",
                              ref.reference if ref else None,
                              f"informational ({_ours(ours, '1 cpu/event zlib')})",
                              extra=got))
        if "startup" in names:
            log(f"peers: discord.py startup, {STARTUP_SHARDS} shards")
            st = await discordpy_startup(STARTUP_SHARDS)
            out.append(Figure(f"peer discord.py startup pace ({STARTUP_SHARDS})",
                              round(st["span"], 3), "s", round(st["ideal"], 3),
                              f"informational ({_ours(ours, f'2 startup pace, {BIG.name}')})",
                              extra=st))
    out.append(Figure("peers hikari", None, "", target="skipped" if
                      importlib.util.find_spec("hikari") is None else
                      "skipped (installed, not wired up yet)"))
    return out
