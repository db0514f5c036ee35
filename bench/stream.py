"""Figure 7: the durable stream's cost -- events/s and CPU per event with ``--stream``
beside the default bus alone.

The same blast as figure 1 (16 shards in 2 workers, pre-compressed MESSAGE_CREATE) runs
twice: the bus alone, read by a consumer process; then the bus plus ``--stream`` into a
local ``nats-server -js`` (file storage, one replica).  With the stream the run ends when
the consumer has every event *and* the stream has acknowledged every one (the supervisor's
durable seq reached the end: what "forwarded" means then); CPU counts the nats-server
process too.  Needs the nats extra (``pip install 'shardctl[nats]'``); skipped without it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.common import Figure, child, cluster, log, wait_subscribed
from bench.throughput import SHARDS, blast, sandbox_config
from shardctl.sandbox import Sandbox

WORKERS = 2


async def stored(url: str) -> int:
    """MESSAGE_CREATE held by the stream (its per-subject counts)."""
    import nats

    nc = await nats.connect(servers=[url])
    try:
        info = await nc.jetstream().stream_info("SHARDCTL",
                                                subjects_filter="shardctl.MESSAGE_CREATE.>")
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def run_one(per_shard: int, url: str | None, nats_pid: int | None) -> dict[str, Any]:
    expect = SHARDS * per_shard
    async with Sandbox(sandbox_config()) as sb, \
            cluster(sb, processes=WORKERS, identify_interval=0.05, stream=url) as c, \
            child("consumer_proc", *c.consumer_args(), "--expect", str(expect),
                  "--idle", "30", "--stay") as consumer:
        await wait_subscribed(sb, consumer)
        await anyio.sleep(0.5)  # let the READY burst's garbage settle

        seen: dict[str, int] = {}

        async def finished() -> dict[str, Any]:
            report = await consumer.expect("count", 300.0)
            if url is not None:
                with anyio.fail_after(300):
                    # another process's progress: nothing to await but its answer
                    while (count := await stored(url)) < expect:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                report["last_ns"] = time.monotonic_ns()
                seen["stored"] = count
            return report

        pids = [*c.pids, consumer.pid, *([nats_pid] if nats_pid else [])]
        result = await blast(sb, per_shard, pids, finished)
        result["lost"] = expect - result["count"]
        if url is not None:
            result["stream_lost"] = expect - seen["stored"]
        return result


def split(got: dict[str, Any]) -> str:
    per = got["cpu_us_per_process"]
    names = ["supervisor", *(f"worker {i}" for i in range(WORKERS)), "consumer", "nats-server"]
    return ", ".join(f"{n} {v}" for n, v in zip(names, per, strict=False))


async def run(quick: bool) -> list[Figure]:
    try:
        import nats  # noqa: F401
    except ImportError:
        log("stream: skipped (pip install 'shardctl[nats]')")
        return []
    from shardctl.stream.server import NatsServer

    per_shard = 1000 if quick else 5000
    log(f"stream: bus alone, {SHARDS} x {per_shard} events")
    bus = await run_one(per_shard, None, None)
    log(f"  bus: {bus['events_s']:.0f} ev/s, {bus['cpu_us']:.2f} µs/event ({split(bus)})")
    with tempfile.TemporaryDirectory(prefix="scb-nats-") as store:
        server = NatsServer(Path(store))
        await anyio.to_thread.run_sync(server.start)
        try:
            assert server.process is not None
            log(f"stream: bus + --stream, {SHARDS} x {per_shard} events")
            got = await run_one(per_shard, server.url, server.process.pid)
        finally:
            server.stop()
    log(f"  stream: {got['events_s']:.0f} ev/s, {got['cpu_us']:.2f} µs/event ({split(got)})")
    return [
        Figure("7 stream throughput (bus + --stream)", round(got["events_s"]), "events/s",
               round(bus["events_s"]), "informational (reference: the bus alone)",
               extra={"stream": got, "bus": bus}),
        Figure(f"7 stream cpu/event ({split(got)})", round(got["cpu_us"], 2), "µs",
               round(bus["cpu_us"], 2), "informational (reference: the bus alone)"),
        Figure("7 stream supervisor cpu/event", got["cpu_us_per_process"][0], "µs",
               bus["cpu_us_per_process"][0], "informational (reference: the bus alone)"),
        Figure("7 stream events lost", max(got["lost"], got["stream_lost"]), "events", None,
               "0 (bus and stream)", 0, compare="value"),
    ]
