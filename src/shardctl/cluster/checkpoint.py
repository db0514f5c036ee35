"""The continuous session checkpoint: the state file kept current while the cluster runs.

A graceful stop saves the sessions; a SIGKILL, an OOM kill or a power cut does not.  This
task writes them at most once per ``interval`` and only when they changed, so a start after
a crash RESUMEs every shard from its last forwarded seq give or take one interval (Discord
replays the rest; consumers tell those replays apart, README "Restarts").  It knows nothing
of where the sessions come from: ``snapshot`` returns them (any value with ``==``), ``write``
stores one, in a worker thread (an fsync takes milliseconds the event loop must not wait).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Final, Generic, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The default and the contract: a crash loses at most about this much of the seq record.
INTERVAL: Final = 1.0


class Checkpointer(Generic[T]):
    """``await tg.start(Checkpointer(snapshot, write).run)``; :meth:`close` before the last
    save of a stop, so no checkpoint lands after it."""

    def __init__(self, snapshot: Callable[[], T], write: Callable[[T], None], *,
                 interval: float = INTERVAL) -> None:
        self._snapshot = snapshot
        self._write = write
        self.interval = interval
        self._last: T | None = None
        self._lock = anyio.Lock()
        self._closed = False
        #: checkpoints written (tests, metrics)
        self.writes = 0
        self._failed = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while not self._closed:
            await anyio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> bool:
        """Write the snapshot now if it changed since the last write; whether it wrote."""
        async with self._lock:
            if self._closed:
                return False
            snap = self._snapshot()
            if snap == self._last:
                return False
            try:
                await anyio.to_thread.run_sync(self._write, snap)
            except OSError as exc:
                if not self._failed:  # once per failure spell, not once a second
                    log.error("supervisor: could not write the session checkpoint: %s", exc)
                self._failed = True
                return False
            if self._failed:
                log.info("supervisor: the session checkpoint is written again")
            self._failed = False
            self._last = snap
            self.writes += 1
            return True

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No checkpoint is taken or written inside (a reshard changing what it saves)."""
        async with self._lock:
            yield

    async def close(self) -> None:
        """No more checkpoints; waits for one being written."""
        async with self._lock:
            self._closed = True
