"""A spawned worker dies with its supervisor: the kernel sends SIGTERM when it goes.

A SIGKILLed supervisor cannot tell its workers to stop; without this they would hold their
sessions until the control channel's ``supervisor_timeout`` (10 s), while the next start
wants to RESUME them.  SIGTERM makes the worker close every shard resumably (close 4009,
never 1000/1001) and leave at once.  Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere,
and for remote workers, the control channel's timeout stays the only sign.  The kernel
sends it when the *thread* that spawned us ends: the supervisor spawns from its event loop's
thread, which lives as long as it does.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import Final

log = logging.getLogger(__name__)

#: Set by the supervisor when it spawns us (cluster/workers.py spawn).
PARENT_PID_VARIABLE: Final = "SHARDCTL_PARENT_PID"
_PR_SET_PDEATHSIG: Final = 1


def expected_parent(environ: dict[str, str] | None = None) -> int | None:
    value = (os.environ if environ is None else environ).get(PARENT_PID_VARIABLE, "")
    return int(value) if value.isdigit() else None


def die_with_parent(parent: int | None) -> bool:
    """Ask for SIGTERM when ``parent`` dies; False if it is already gone (the caller exits).

    The check after the request closes the race of a parent that died before it.
    """
    if parent is None:
        return True
    if sys.platform == "linux":
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                log.warning("worker: prctl(PR_SET_PDEATHSIG) failed (errno %d); a dead "
                            "supervisor is noticed by its silence only", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("worker: no prctl here; a dead supervisor is noticed by its silence")
    return os.getppid() == parent


def parent_gone(parent: int | None) -> bool:
    """Whether the process that spawned us has died (we were re-parented)."""
    return parent is not None and os.getppid() != parent
