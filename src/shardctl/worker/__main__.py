"""``python -m shardctl.worker --control ENDPOINT [--index N]``: how the supervisor starts us.

With ``--index`` the first line on stdin is the per-spawn secret (64 hex digits) that
proves to the supervisor that this process is the one it spawned for that slot
(cluster/workers.py); stdin is a pipe the supervisor closes right after it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path

import anyio

from shardctl import logformat
from shardctl.heap import freeze_startup_heap
from shardctl.ipc.security import load_client
from shardctl.worker.parent import die_with_parent, expected_parent
from shardctl.worker.process import EXIT_SUPERVISOR_LOST, run_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shardctl.worker")
    parser.add_argument("--control", required=True, help="the supervisor's control endpoint")
    parser.add_argument("--index", type=int, default=None, help="worker slot index")
    parser.add_argument("--keys", type=Path, default=None,
                        help="CURVE key directory (its clients/worker keypair is used)")
    args = parser.parse_args(argv)
    secret = None
    if args.index is not None:
        secret = sys.stdin.readline().strip()
        if not re.fullmatch(r"[0-9a-f]{64}", secret):
            parser.error("--index needs the supervisor's per-spawn secret as the first line "
                         "of stdin (workers are started by `shardctl run`)")
    parent = expected_parent() if args.index is not None else None
    if not die_with_parent(parent):
        return EXIT_SUPERVISOR_LOST  # it died before we could ask to follow it
    curve = load_client(args.keys, "worker") if args.keys is not None else None
    # Ctrl-C reaches the whole process group; the supervisor alone decides how we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The supervisor's --log-level/--log-format reach us as SHARDCTL_LOG_LEVEL/_FORMAT.
    logformat.configure(os.environ.get("SHARDCTL_LOG_LEVEL", "INFO"),
                        logformat.format_from_env(), process=f"worker[{args.index}]")
    freeze_startup_heap()
    return anyio.run(run_worker, args.control, args.index, curve, secret, parent,
                     backend="asyncio")


if __name__ == "__main__":
    sys.exit(main())
