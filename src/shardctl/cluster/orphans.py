"""Workers of a supervisor that died: gone before this start opens their shards again.

A SIGKILLed supervisor cannot stop its workers.  On Linux they get SIGTERM from the kernel
(``PR_SET_PDEATHSIG``, worker/__main__.py) and close their shards resumably within a second
or so; elsewhere they notice the silent control channel after ``supervisor_timeout``.  Until
then they hold the sessions the next start wants to RESUME: two connections on one session,
which Discord settles by closing one of them mid-stream.  So the state file names the
workers (pid and start time, :class:`~shardctl.cluster.sessions.WorkerMark`) and a start
waits for those still running, then terminates the stragglers.  Only Linux is covered: the
start time comes from ``/proc``; without it no mark is written.  Remote workers are no
children of ours: they rely on the control channel's timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import anyio

from shardctl.cluster.sessions import WorkerMark

log = logging.getLogger(__name__)

#: How long an old worker gets to close its shards by itself, and again after SIGTERM.
GRACE: Final = 15.0
POLL: Final = 0.05


def start_time(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22):
    with the pid it names one process for good.  None off Linux or when it is gone (or a
    zombie, which holds no socket)."""
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return None  # a zombie holds no socket: gone for our purpose
    return fields[19].decode()


def _is_worker(pid: int, proc: Path) -> bool:
    try:
        return b"shardctl.worker" in (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


def still_running(marks: Iterable[WorkerMark], shard_ids: Iterable[int],
                  proc: Path = Path("/proc")) -> list[WorkerMark]:
    """The marked workers holding any of ``shard_ids`` that are still the same process."""
    wanted = set(shard_ids)
    return [m for m in marks if wanted.intersection(m.shards)
            and start_time(m.pid, proc) == m.started and _is_worker(m.pid, proc)]


async def wait_gone(marks: list[WorkerMark], *, grace: float = GRACE,
                    proc: Path = Path("/proc"),
                    send: Callable[[int, int], None] = os.kill) -> None:
    """Wait for ``marks`` to exit; SIGTERM (closes resumably), then SIGKILL, stragglers."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        left = [m for m in marks if start_time(m.pid, proc) == m.started]
        if not left:
            return
        if sig is None:
            log.info("supervisor: waiting for %d workers of a previous run to close their "
                     "shards", len(left))
        for mark in left:
            if sig is None:
                break
            log.warning("supervisor: worker pid %d of a previous run still holds shards %s; "
                        "sending %s", mark.pid, list(mark.shards), sig.name)
            with contextlib.suppress(ProcessLookupError):
                send(mark.pid, sig)
        with anyio.move_on_after(grace):
            for mark in left:
                await _exited(mark, proc)


async def _exited(mark: WorkerMark, proc: Path) -> None:
    """Returns once ``mark`` has exited: a pidfd turns readable then (not our child, so
    no wait()); polled where there are no pidfds."""
    try:
        fd = os.pidfd_open(mark.pid)
    except ProcessLookupError:
        return
    except (OSError, AttributeError):
        # no event exists for another process's exit here
        while start_time(mark.pid, proc) == mark.started:  # noqa: ASYNC110
            await anyio.sleep(POLL)
        return
    try:
        if start_time(mark.pid, proc) == mark.started:  # not a reused pid
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)
