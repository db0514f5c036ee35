"""Worker processes: spawning, watching, and respawning them.

A worker is a separate OS process (``python -m shardctl.worker``) that connects back to the
supervisor's control endpoint.  The supervisor watches two things: the process itself (exit)
and its liveness beats on the control channel; a worker that stops beating (frozen,
SIGSTOPped, deadlocked) is killed so that the exit path respawns it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from shardctl.cluster.restarts import RestartPolicy

log = logging.getLogger(__name__)


def worker_command(control_endpoint: str, index: int, keys: Path | None = None) -> list[str]:
    """``keys``: a CURVE key directory whose ``worker`` client keypair the worker uses."""
    command = [sys.executable, "-m", "shardctl.worker", "--control", control_endpoint,
               "--index", str(index)]
    return [*command, "--keys", str(keys)] if keys is not None else command


@dataclass(slots=True)
class WorkerSlot:
    """One planned worker: its shards and whatever process currently runs them."""

    index: int
    shard_ids: list[int]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    process: anyio.abc.Process | None = None
    #: The ZeroMQ identity of the live process's control socket, once it registered.
    peer: bytes | None = None
    pid: int | None = None
    last_beat: float = 0.0
    restarts: int = 0
    #: Set while the process is being replaced, so its exit is not counted twice.
    generation: int = 0
    #: Run by a worker on another host that registers itself (shardctl.cluster.remote); the
    #: supervisor spawns no process for it and knows it alive while it is registered.
    remote: bool = False

    @property
    def alive(self) -> bool:
        if self.remote:
            return self.peer is not None
        return self.process is not None and self.process.returncode is None


async def spawn(slot: WorkerSlot, command: Sequence[str], *, now: float) -> None:
    env = dict(os.environ)
    # Workers log to the supervisor's stderr; unbuffered so a crash loses no lines.
    env["PYTHONUNBUFFERED"] = "1"
    slot.process = await anyio.open_process(list(command), stdin=None, stdout=None, stderr=None,
                                            env=env)
    slot.pid = slot.process.pid
    slot.peer = None
    slot.last_beat = now
    slot.generation += 1
    log.info("worker %d started (pid %d, shards %s)", slot.index, slot.pid,
             _ranges(slot.shard_ids))


def kill(slot: WorkerSlot) -> None:
    """SIGKILL: also ends a SIGSTOPped process, which SIGTERM would not."""
    if slot.process is not None and slot.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            slot.process.send_signal(signal.SIGKILL)


def _ranges(ids: Sequence[int]) -> str:
    if not ids:
        return "none"
    return ",".join(str(i) for i in ids[:8]) + (f",... ({len(ids)})" if len(ids) > 8 else "")
