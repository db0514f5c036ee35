"""``python -m shardctl.worker`` with a ticking task in its event loop, for the stop tests.

Run by path: ``python ticking_worker.py STALLS_FILE <the worker's own arguments>``.  The
ticker sleeps :data:`TICK` seconds at a time; every gap between two of its turns that took
more than :data:`RECORDED` seconds of the loop thread's CPU is written to ``STALLS_FILE`` at
exit, as JSON ``[[monotonic time at the gap's end, cpu seconds, wall seconds], ...]``.

CPU time, not wall time: on a machine shared with other processes a runnable worker also
waits for a core, which no code of ours can help; the CPU the loop thread spent between two
turns of the ticker is the work it ran without giving the loop back (a beat waits as long).
``time.monotonic`` is the machine's clock, so the test compares it with its own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

import shardctl.worker.__main__ as worker_main
from shardctl.worker.process import run_worker

TICK: Final = 0.005
RECORDED: Final = 0.005


async def _tick(stalls: list[tuple[float, float, float]]) -> None:
    while True:
        wall, cpu = time.monotonic(), time.thread_time()
        await anyio.sleep(TICK)
        spent = time.thread_time() - cpu
        if spent > RECORDED:
            now = time.monotonic()
            stalls.append((now, spent, now - wall))


def main(argv: list[str]) -> int:
    path = Path(argv[0])
    stalls: list[tuple[float, float, float]] = []

    async def run_with_ticker(*args: Any) -> int:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_tick, stalls)
            code = await run_worker(*args)
            tg.cancel_scope.cancel()
        return code

    # __main__ calls it by its module-level name: run it beside the ticker instead
    setattr(worker_main, "run_worker", run_with_ticker)  # noqa: B010
    try:
        return worker_main.main(argv[1:])
    finally:
        path.write_bytes(orjson.dumps(stalls))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
