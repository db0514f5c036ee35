"""``python -m shardctl.worker --control ENDPOINT [--index N]``: how the supervisor starts us."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import anyio

from shardctl import logformat
from shardctl.heap import freeze_startup_heap
from shardctl.ipc.security import load_client
from shardctl.worker.process import run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.worker")
    parser.add_argument("--control", required=True, help="the supervisor's control endpoint")
    parser.add_argument("--index", type=int, default=None, help="worker slot index")
    parser.add_argument("--keys", type=Path, default=None,
                        help="CURVE key directory (its clients/worker keypair is used)")
    args = parser.parse_args(argv)
    curve = load_client(args.keys, "worker") if args.keys is not None else None
    # Ctrl-C reaches the whole process group; the supervisor alone decides how we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The supervisor's --log-level/--log-format reach us as SHARDCTL_LOG_LEVEL/_FORMAT.
    logformat.configure(os.environ.get("SHARDCTL_LOG_LEVEL", "INFO"),
                        logformat.format_from_env(), process=f"worker[{args.index}]")
    freeze_startup_heap()
    return anyio.run(run_worker, args.control, args.index, curve, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
