"""Worker processes: spawning, watching, and respawning them.

A worker is a separate OS process (``python -m shardctl.worker``) that connects back to the
supervisor's control endpoint.  The supervisor watches two things: the process itself (exit)
and its liveness beats on the control channel; a worker that stops beating (frozen,
SIGSTOPped, deadlocked) is killed so that the exit path respawns it.

Only the process spawned for a slot may take it: each spawn draws a fresh secret and writes
it, as one line, to the child's stdin (a pipe closed right after; never argv or the
environment, which other local users can read in ``/proc``).  The worker registers with it
and the supervisor compares it once.  The child's environment is ours minus every token
variable: the token reaches a worker only in its assignment.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import anyio.abc

from shardctl.cluster.restarts import RestartPolicy

log = logging.getLogger(__name__)

#: Environment variables a worker never inherits: the token, or where to find it.
TOKEN_VARIABLES: Final = ("DISCORD_TOKEN",)
TOKEN_PREFIXES: Final = ("SHARDCTL_TOKEN",)


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
    #: The current process's per-spawn secret (hex) until it registers with it.
    secret: str | None = field(default=None, repr=False)
    #: A reshard's new set before the switch (cluster/reshard.py): its shards are not the
    #: cluster's yet, its state reports and events go to the reshard.
    staged: bool = False
    #: A set replaced by a reshard: stopped, never respawned, holds no shards.
    retired: bool = False
    #: State reports received from the current process (a reshard waits for a fresh one).
    reports: int = 0

    def take(self, secret: object) -> bool:
        """Whether ``secret`` is this slot's, which it then stops being (one registration)."""
        if self.secret is None or not isinstance(secret, str):
            return False
        if not hmac.compare_digest(secret.encode("utf-8", "surrogatepass"),
                                   self.secret.encode()):
            return False
        self.secret = None
        return True

    @property
    def alive(self) -> bool:
        if self.remote:
            return self.peer is not None
        return self.process is not None and self.process.returncode is None


#: Tells a worker who spawned it: it asks the kernel for SIGTERM when that process dies
#: (worker/parent.py), and notices if it already has.
PARENT_PID_VARIABLE: Final = "SHARDCTL_PARENT_PID"  # read by worker/parent.py


def worker_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Ours, minus the token variables, plus unbuffered output."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in TOKEN_VARIABLES and not k.startswith(TOKEN_PREFIXES)}
    # Workers log to the supervisor's stderr; unbuffered so a crash loses no lines.
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def spawn(slot: WorkerSlot, command: Sequence[str], *, now: float) -> None:
    slot.secret = secret = secrets.token_hex(32)
    slot.process = await anyio.open_process(list(command), stdin=subprocess.PIPE, stdout=None,
                                            stderr=None, env={
                                                **worker_environment(),
                                                PARENT_PID_VARIABLE: str(os.getpid())})
    slot.pid = slot.process.pid
    slot.peer = None
    slot.last_beat = now
    slot.generation += 1
    stdin = slot.process.stdin
    assert stdin is not None
    try:
        # 65 bytes into an empty pipe: never blocks.
        await stdin.send(f"{secret}\n".encode())
    except (BrokenPipeError, ConnectionResetError, anyio.BrokenResourceError):
        log.warning("worker %d (pid %d) exited before reading its secret", slot.index,
                    slot.pid)  # its exit is seen by whoever waits for it
    finally:
        await stdin.aclose()
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
