"""A supervisor in its own process (so its CPU and RSS are its own, not the sandbox's).

Prints ``{"pid", "workers", "events"}`` once every shard is READY, then runs until SIGTERM,
when it stops the cluster like ``shardctl run`` does (sessions kept resumable).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import anyio

from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.heap import freeze_startup_heap


async def main(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    compression = None if args.compression == "none" else args.compression
    stream = None
    if args.stream:
        from shardctl.stream.settings import StreamSettings, parse_servers

        stream = StreamSettings(parse_servers(args.stream))
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with Supervisor(token="sandbox-token", api_url=args.api_url,
                              processes=args.processes,
                              identify_interval=args.identify_interval,
                              compression=compression, intents=Intents(args.intents),
                              runtime_dir=run_dir, state_file=run_dir / "state.json",
                              events_batch_window_ms=args.batch_window_ms,
                              publish_window_ms=args.publish_window_ms,
                              stream=stream) as sup, anyio.create_task_group() as tg:
            metrics = None
            if args.metrics:
                from shardctl.cluster.metrics import serve_metrics

                metrics = await tg.start(serve_metrics, sup, 0)
            await sup.wait_ready()
            print(json.dumps({"pid": os.getpid(),
                              "workers": [s.pid for s in sup.slots],
                              "events": sup.endpoints["events"],
                              "events_batch": sup.endpoints["events_batch"],
                              "control": sup.endpoints["control"],
                              "metrics": metrics}), flush=True)
            async for _ in signals:
                break
            tg.cancel_scope.cancel()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--api-url", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--identify-interval", type=float, default=0.25)
    p.add_argument("--compression", default="zlib-stream")
    p.add_argument("--intents", type=int, required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--batch-window-ms", type=float, default=0.0,
                   help="--events-batch-window-ms")
    p.add_argument("--publish-window-ms", type=float, default=0.0, help="--publish-window-ms")
    p.add_argument("--stream", default="", help="also into this NATS JetStream (--stream)")
    p.add_argument("--metrics", action="store_true",
                   help="serve /metrics on a free loopback port (printed as \"metrics\")")
    p.add_argument("--nice", type=int, default=0,
                   help="lower this process's priority (and its workers') by this much")
    return p.parse_args()


if __name__ == "__main__":
    freeze_startup_heap()  # as `shardctl run` does
    args = parse()
    os.nice(args.nice)
    try:
        anyio.run(main, args)
    except KeyboardInterrupt:
        sys.exit(0)
