"""``python -m shardctl.worker --control ENDPOINT [--index N]``: how the supervisor starts us."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import anyio

from shardctl.worker.process import run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.worker")
    parser.add_argument("--control", required=True, help="the supervisor's control endpoint")
    parser.add_argument("--index", type=int, default=None, help="worker slot index")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group; the supervisor alone decides how we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("SHARDCTL_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s worker[{args.index}] %(levelname)s %(name)s: %(message)s")
    return anyio.run(run_worker, args.control, args.index, backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
