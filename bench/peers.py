"""``--peers``: discord.py, hikari and @discordjs/ws against the same sandbox streams.

Figure 1 (saturated blast, zlib-stream and zstd-stream) and figure 6 (steady loads), each
peer alone in one process, its CPU read from /proc like ours; figure 2's startup pace for
discord.py.  Rows are informational: the peer's CPU per event against our whole pipeline's
in the same run.  A peer that is not installed, or cannot speak a stream, is reported as
skipped with the reason, never a failure.  @discordjs/ws is installed with ``npm ci`` into a
cache directory keyed by the manifest of tests/sandbox/discordjs (the same directory the
tests use; $SHARDCTL_TEST_CACHE or ~/.cache/shardctl-tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import shutil
import statistics
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench import steady
from bench.common import INTENTS, ROOT, TOKEN, Child, Figure, child, log
from bench.peer_hikari import TOKEN as HIKARI_TOKEN
from bench.startup import BIG, INTERVAL, MAX_CONCURRENCY
from bench.throughput import SHARDS, blast, sandbox_config
from shardctl.sandbox import Sandbox, SandboxConfig

#: discord.py identifies one shard at a time: 256 shards would take a minute at 0.25 s.
STARTUP_SHARDS = 64
NODE_FIXTURE = ROOT / "tests" / "sandbox" / "discordjs"
STREAMS = ("zlib-stream", "zstd-stream")

Launch = Callable[[Sandbox, int, str], AbstractAsyncContextManager[Child]]


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    token: str
    streams: tuple[str, ...]
    #: why it cannot run at all ("" when it can), and why not for a stream it lacks
    missing: str
    no_stream: str
    launch: Launch


def discordpy(sb: Sandbox, expect: int, compress: str) -> AbstractAsyncContextManager[Child]:
    return child("peer_discordpy", "--api-url", sb.api_url, "--expect", str(expect),
                 f"--compress={compress}")


def hikari(sb: Sandbox, expect: int, compress: str) -> AbstractAsyncContextManager[Child]:
    return child("peer_hikari", "--api-url", sb.api_url, "--expect", str(expect))


def node_client() -> Path | str:
    """The directory holding node_modules/@discordjs/ws, or why there is none."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node/npm not installed"
    manifest = (NODE_FIXTURE / "package.json").read_bytes() + \
        (NODE_FIXTURE / "package-lock.json").read_bytes()
    base = Path(os.environ.get("SHARDCTL_TEST_CACHE",
                               Path.home() / ".cache" / "shardctl-tests"))
    target = base / f"discordjs-ws-{hashlib.sha256(manifest).hexdigest()[:12]}"
    if not (target / "node_modules" / "@discordjs" / "ws").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(NODE_FIXTURE / name, target / name)
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
                                cwd=target, capture_output=True, text=True, timeout=180,
                                check=False)
        if result.returncode != 0:
            return f"npm ci failed: {result.stderr.strip().splitlines()[-1:]}"
    shutil.copy(ROOT / "bench" / "peer_discordjs.js", target / "peer_discordjs.js")
    return target


@asynccontextmanager
async def discordjs(sb: Sandbox, expect: int, compress: str) -> AsyncIterator[Child]:
    target = node_client()
    assert isinstance(target, Path)
    process = await anyio.open_process(
        ["node", str(target / "peer_discordjs.js"), sb.api_url.removesuffix("/v10"),
         str(INTENTS), str(expect)], stderr=None, stdin=subprocess.DEVNULL,
        env={**os.environ, "SANDBOX_TOKEN": TOKEN})
    proc = Child(process)
    try:
        yield proc
    finally:
        await proc.stop()


def peers() -> list[Peer]:
    node = node_client()
    return [
        Peer("discord.py", TOKEN, STREAMS, "" if importlib.util.find_spec("discord")
             else "not installed", "", discordpy),
        Peer("hikari", HIKARI_TOKEN, ("zlib-stream",), "" if importlib.util.find_spec(
            "hikari") else "not installed", "needs hikari[zstd] (backports.zstd)", hikari),
        Peer("@discordjs/ws", TOKEN, ("zlib-stream",), "" if isinstance(node, Path)
             else node, "speaks zlib-stream only", discordjs),
    ]


async def saturated(peer: Peer, compress: str, per_shard: int) -> dict[str, Any]:
    expect = SHARDS * per_shard
    cfg = dataclasses.replace(sandbox_config(), token=peer.token)
    async with Sandbox(cfg) as sb, peer.launch(sb, expect, compress) as proc:
        await proc.expect("ready", 180.0)
        await anyio.sleep(0.5)
        return await blast(sb, per_shard, [proc.pid], lambda: proc.expect("count", 600.0))


async def steady_load(peer: Peer, regime: steady.Regime, seconds: float) -> dict[str, Any]:
    cfg = dataclasses.replace(steady.sandbox_config(regime), token=peer.token)
    async with Sandbox(cfg) as sb, \
            peer.launch(sb, regime.total(seconds), "zlib-stream") as proc:
        await proc.expect("ready", 300.0)
        return await steady.paced(sb, regime, seconds, [proc.pid],
                                  lambda: proc.expect("count", seconds + 120.0))


def ours(figures: list[Figure], prefix: str) -> Figure | None:
    return next((f for f in figures if f.name.startswith(prefix)), None)


def row(name: str, got: dict[str, Any] | None, mine: Figure | None, reason: str = ""
        ) -> Figure:
    """The peer's CPU per event beside our pipeline's (reference), or why it was skipped."""
    if got is None:
        return Figure(name, None, "", target=f"skipped ({reason})")
    value = round(got["cpu_us"], 1)
    if mine is None or not mine.value:
        return Figure(name, value, "µs", None, "informational (ours not run)", extra=got)
    return Figure(name, value, "µs", mine.value,
                  f"informational (ours: {float(mine.value) / value:.2f}x the peer's)",
                  extra=got)


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


async def guarded(name: str, work: Any) -> tuple[dict[str, Any] | None, str]:
    """One peer run; a peer that breaks is a skipped row with the error, not a crash."""
    try:
        return await work, ""
    except Exception as exc:  # a peer that breaks is reported, not raised
        log(f"  {name}: failed: {type(exc).__name__}: {exc}")
        return None, f"failed: {type(exc).__name__}: {str(exc)[:60]}"


async def run_saturated(quick: bool, ours_figs: list[Figure]) -> list[Figure]:
    out: list[Figure] = []
    per_shard = 2000 if quick else 5000
    for peer in peers():
        for stream in STREAMS:
            short = stream.split("-")[0]
            name = f"peer {peer.name} cpu/event {short} (saturated)"
            if peer.missing or stream not in peer.streams:
                out.append(row(name, None, None, peer.missing or peer.no_stream))
                continue
            log(f"peers: {peer.name} saturated {stream}, {SHARDS} x {per_shard} events")
            got, why = await guarded(peer.name, saturated(peer, stream, per_shard))
            if got:
                log(f"  {peer.name}: {got['events_s']:.0f} ev/s, {got['cpu_us']:.1f} µs/event")
            out.append(row(name, got, ours(ours_figs, f"1 cpu/event {short}"), why))
    return out


async def run_steady(quick: bool, ours_figs: list[Figure]) -> list[Figure]:
    out: list[Figure] = []
    seconds = 2.5 if quick else 10.0
    for peer in peers():
        for regime in steady.REGIMES:
            name = f"peer {peer.name} cpu/event {regime.name} (steady)"
            if peer.missing:
                out.append(row(name, None, None, peer.missing))
                continue
            log(f"peers: {peer.name} steady {regime.name} for {seconds:g} s")
            got, why = await guarded(peer.name, steady_load(peer, regime, seconds))
            if got:
                log(f"  {peer.name}: {got['cpu_us']:.1f} µs/event, "
                    f"{got['count']}/{got['sent']} received")
            out.append(row(name, got, ours(ours_figs, f"6 {regime.name} cpu/event"), why))
    return out


async def run(quick: bool, names: list[str], ours_figs: list[Figure]) -> list[Figure]:
    out: list[Figure] = []
    if "throughput" in names:
        out += await run_saturated(quick, ours_figs)
    if "steady" in names:
        out += await run_steady(quick, ours_figs)
    if "startup" in names:
        if importlib.util.find_spec("discord") is None:
            out.append(Figure("peer discord.py startup pace", None, "",
                              target="skipped (not installed)"))
        else:
            log(f"peers: discord.py startup, {STARTUP_SHARDS} shards")
            st = await discordpy_startup(STARTUP_SHARDS)
            mine = ours(ours_figs, f"2 startup pace, {BIG.name}")
            out.append(Figure(f"peer discord.py startup pace ({STARTUP_SHARDS})",
                              round(st["span"], 3), "s", round(st["ideal"], 3),
                              f"informational (ours {mine.ratio:.2f}x)" if mine and mine.ratio
                              else "informational (ours not run)", extra=st))
    return out
