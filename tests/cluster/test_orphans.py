"""A crashed run's workers: recognised by pid and start time, waited for, then ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import anyio
import anyio.abc
import pytest

from shardctl.cluster.orphans import start_time, still_running, wait_gone
from shardctl.cluster.sessions import WorkerMark

pytestmark = pytest.mark.anyio

#: a process that looks like a worker (its command line names shardctl.worker) and runs
#: until its stdin closes
FAKE_WORKER = [sys.executable, "-c", "import sys; sys.stdin.read()", "shardctl.worker"]


async def fake_worker() -> tuple[anyio.abc.Process, WorkerMark]:
    process = await anyio.open_process(FAKE_WORKER, stdin=subprocess.PIPE)
    started = start_time(process.pid)
    assert started is not None
    return process, WorkerMark(process.pid, started, (0, 1))


def test_a_process_is_named_by_pid_and_start_time() -> None:
    assert start_time(os.getpid()) == start_time(os.getpid()) is not None
    assert start_time(2**22 + 12345) is None  # above pid_max: never a process


async def test_only_the_same_worker_holding_our_shards_is_still_running() -> None:
    process, mark = await fake_worker()
    try:
        assert still_running([mark], [1, 5]) == [mark]
        assert still_running([mark], [5]) == []  # another instance's shards
        assert still_running([WorkerMark(mark.pid, "1", (0,))], [0]) == []  # a reused pid
        me = WorkerMark(os.getpid(), start_time(os.getpid()) or "", (0,))
        assert still_running([me], [0]) == []  # not a worker at all
    finally:
        process.kill()
        await process.wait()


async def test_a_worker_that_leaves_by_itself_gets_no_signal() -> None:
    process, mark = await fake_worker()
    sent: list[tuple[int, int]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: wait_gone([mark], send=lambda pid, sig: sent.append((pid, sig))))
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.fail_after(10):
            await process.wait()
    assert sent == []


async def test_a_straggler_is_terminated_after_the_grace() -> None:
    process, mark = await fake_worker()
    try:
        with anyio.fail_after(10):
            await wait_gone([mark], grace=0.2)
            assert await process.wait() == -signal.SIGTERM
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
