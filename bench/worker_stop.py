"""Workers of many shards: their start-up, and their stop as the supervisor sees it.

``python -m bench.worker_stop [SHARDS] [WORKERS] [SANDBOX_PROCESSES]`` (default 2,500, 1 and
2: one worker of the scale figure's 10,000 in 4) runs a supervisor in this process against
a sandbox fleet, and prints: seconds until every shard is READY, the supervisor's CPU
seconds until then and its peak RSS, then, for a graceful stop, how long the stop took and
the longest any worker went unheard by the supervisor (the silence its liveness check
judges, against the beat interval).  Not a figure of ``scripts/bench``: a measurement for
the workers' stop and start-up paths.
"""

from __future__ import annotations

import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import anyio

from shardctl.cluster.supervisor import Supervisor
from shardctl.sandbox.config import SandboxConfig
from shardctl.sandbox.fleet import fleet

BEAT = 0.25
SAMPLE = 0.02


async def main(shards: int, workers: int, members: int) -> None:
    config = SandboxConfig(shard_count=shards, max_concurrency=min(256, max(1, shards // 4)),
                           identify_interval=0.25, guilds_per_shard=1, session_ttl=300.0,
                           session_start_total=100 * shards)
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sc-") as d:
        run_dir = Path(d)
        async with fleet(config, members) as f, Supervisor(
                token=config.token, api_url=f.api_url, processes=workers, identify_interval=0.25,
                runtime_dir=run_dir, state_file=run_dir / "state.json",
                beat_interval=BEAT, liveness_timeout=120.0) as sup:
            t0, cpu0 = time.monotonic(), time.process_time()
            with anyio.fail_after(600):
                await sup.wait_ready()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{shards} shards READY in {time.monotonic() - t0:.1f} s; supervisor CPU "
                  f"{time.process_time() - cpu0:.1f} s, peak RSS {peak:.0f} MB", flush=True)
            await anyio.sleep(3.0)
            silence, done = 0.0, False

            async def watch() -> None:
                nonlocal silence
                while not done:
                    await anyio.sleep(SAMPLE)
                    now = anyio.current_time()
                    silence = max([silence, *(now - s.last_beat for s in sup.slots if s.alive)])

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                t0 = time.monotonic()
                await sup.stop()
                done = True
            print(f"stop {time.monotonic() - t0:.2f} s; longest silence of a worker "
                  f"{silence:.2f} s (beat interval {BEAT} s)", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    argv = sys.argv[1:]
    values = [int(a) for a in argv[:3]] + [2500, 1, 2][len(argv[:3]):]
    shards, workers, members = values
    anyio.run(main, shards, workers, members, backend="asyncio")
