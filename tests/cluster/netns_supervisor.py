"""The supervisor host of test_remote_workers: the sandbox and a CURVE supervisor, in one process.

Run inside the supervisor's network namespace::

    python netns_supervisor.py HOST KEYS RUN_DIR

Speaks JSON lines on stdout.  It prints ``{"phase": "ready", ...}`` once every shard is READY
on the two remote workers, then reads ``victim PID`` on stdin (the test has killed that
worker's host), dispatches more messages, waits until every shard is READY again on another
worker and prints ``{"phase": "moved", ...}``, then stops the cluster.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson

from shardctl.cluster.supervisor import Supervisor
from shardctl.sandbox import Sandbox, SandboxConfig

SHARDS = 4
CONTROL_PORT = 7700
MESSAGES = 10
TOKEN = "netns-token"


def emit(**fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(fields, option=orjson.OPT_NON_STR_KEYS) + b"\n")
    sys.stdout.flush()


async def push(sb: Sandbox, sent: Counter[tuple[int, int]], start: int) -> None:
    for i in range(start, start + MESSAGES):
        for shard_id in range(SHARDS):
            guild = sb.world.guilds_for(shard_id, SHARDS)[0]
            d = {"id": str(10_000 + i), "guild_id": str(guild.id),
                 "channel_id": str(guild.text_channel_id), "content": f"m{i}"}
            for seq in await sb.dispatch(shard_id, "MESSAGE_CREATE", d):
                sent[(shard_id, seq)] += 1


async def main(host: str, keys: Path, run_dir: Path) -> None:
    config = SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=5.0,
                           heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=120.0,
                           token=TOKEN)
    seen: Counter[tuple[int, int]] = Counter()
    sent: Counter[tuple[int, int]] = Counter()
    changed = [anyio.Event()]
    async with Sandbox(config, host=host, port=0) as sb, Supervisor(
            token=TOKEN, api_url=sb.api_url, allow_http_api=True, processes=0, remote_workers=2,
            identify_interval=5.0, runtime_dir=run_dir, state_file=run_dir / "state.json",
            control_endpoint=f"tcp://{host}:{CONTROL_PORT}", curve_keys=keys,
            beat_interval=0.5, liveness_timeout=3.0) as sup, anyio.create_task_group() as tg:

        async def collect() -> None:
            async for event in sup.events("MESSAGE_CREATE"):
                assert event.seq is not None
                seen[(event.shard, event.seq)] += 1
                changed[0].set()
                changed[0] = anyio.Event()

        tg.start_soon(collect)
        emit(phase="started", endpoints=sup.endpoints)
        with anyio.fail_after(60):
            await sup.wait_ready()
        await push(sb, sent, 0)
        emit(phase="ready", identifies=len(sb.records("identify")),
             shards={s.id: s.pid for s in sup.status()})
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        victim = int(line.split()[1])
        await push(sb, sent, MESSAGES)
        with anyio.fail_after(60):
            await sup.wait_until(lambda shards: all(
                s.state == "ready" and s.pid is not None and s.pid != victim for s in shards))
        with anyio.move_on_after(20):
            while seen != sent:
                await changed[0].wait()
        emit(phase="moved", identifies=len(sb.records("identify")),
             resumes={i: len(sb.records("resumed", i)) for i in range(SHARDS)},
             shards={s.id: s.pid for s in sup.status()},
             violations=[repr(v) for v in sb.violations],
             missing=sorted(set(sent) - set(seen)), duplicates=sum(seen.values()) - len(seen),
             events=len(seen), expected=len(sent))
        tg.cancel_scope.cancel()
    emit(phase="done")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), backend="asyncio")
