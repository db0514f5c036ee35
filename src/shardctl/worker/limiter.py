"""The session limiter: who may IDENTIFY when (protocol §9, DESIGN.md §6).

Discord allows one IDENTIFY per identify bucket (``shard_id % max_concurrency``) every 5 s;
a faster one gets op 9.  :class:`SessionLimiter` is the interface the Shard uses for every
IDENTIFY (never for a RESUME, which takes no session start); :class:`LocalSessionLimiter` is
the in-process implementation, and the cluster's ZeroMQ client implements the same Protocol
so that the limit holds across processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio

from shardctl.gateway.limits import DEFAULT_LIMITS, Limits
from shardctl.gateway.pacing import BucketMargins

__all__ = ["LocalSessionLimiter", "RejectionAware", "SessionLimiter"]


@runtime_checkable
class SessionLimiter(Protocol):
    """``async with limiter.identify(shard_id): send IDENTIFY``.

    Entering waits for the shard's bucket slot; the slot counts as used once entered, even
    if the send then fails: when in doubt, be slower, never faster than Discord allows.
    """

    def identify(self, shard_id: int) -> AbstractAsyncContextManager[None]: ...


@runtime_checkable
class RejectionAware(Protocol):
    """A session limiter that wants to hear when Discord answered an IDENTIFY it granted with
    op 9 (too soon by Discord's clock), ``after`` seconds after it was sent, so it can pace
    that bucket more carefully.  Optional: the Shard calls it when the limiter has it."""

    def identify_rejected(self, shard_id: int, after: float | None = None) -> None: ...


class LocalSessionLimiter:
    """Per-bucket FIFO, one grant per bucket per ``limits.interval`` seconds, in one process.

    ``limits`` (:class:`~shardctl.gateway.limits.Limits`, the cluster's value) gives the
    pace and the margin; no session-start budget is kept here, so ``limits`` must not name
    one (a budget needs the cluster's limiter).

    The bucket is held for the body of the ``async with`` (the IDENTIFY send) and the next
    grant comes ``interval`` plus the bucket's margin after the body ends, so two IDENTIFYs
    of one bucket leave the process at least that far apart whatever the send took.  The
    margin (:mod:`shardctl.gateway.pacing`) covers a gateway that reads an IDENTIFY late;
    an op 9 the Shard reports (:meth:`identify_rejected`) widens every bucket's margin.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *,
                 clock: Callable[[], float] = anyio.current_time) -> None:
        if limits.has_budget:
            raise ValueError("LocalSessionLimiter keeps no session-start budget: pass Limits "
                             "without remaining, total and reset_after (the cluster's limiter "
                             "enforces one)")
        self.limits = limits
        self.max_concurrency = limits.max_concurrency
        self.interval = limits.interval
        self.margins = BucketMargins(limits.margin)
        self._clock = clock
        self._locks: dict[int, anyio.Lock] = {}  # anyio.Lock wakes waiters in FIFO order
        self._next_free: dict[int, float] = {}

    def __repr__(self) -> str:
        return (f"<LocalSessionLimiter max_concurrency={self.max_concurrency} "
                f"interval={self.interval:g}>")

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def identify(self, shard_id: int) -> AbstractAsyncContextManager[None]:
        return self._identify(self.bucket(shard_id))

    def identify_rejected(self, shard_id: int, after: float | None = None) -> None:
        """Discord answered the bucket's IDENTIFY with op 9: its next gaps are wider (from
        the one being waited out); the slot stays spent."""
        bucket = self.bucket(shard_id)
        before = self._gap(bucket)
        self._next_free.setdefault(bucket, self._clock())
        if self.margins.widen(bucket):  # every bucket's gaps, the ones being waited out too
            wider = self._gap(bucket) - before
            for waited in self._next_free:
                self._next_free[waited] += wider

    def _gap(self, bucket: int) -> float:
        return self.interval + self.margins.margin(bucket, self.interval)

    @asynccontextmanager
    async def _identify(self, bucket: int) -> AsyncIterator[None]:
        lock = self._locks.setdefault(bucket, anyio.Lock())
        async with lock:
            # Judged on our clock, which the loop's sleep may only approximate (a custom clock,
            # or a timer that fires a hair early): sleep again until it says the slot is here.
            while (wait := self._next_free.get(bucket, float("-inf")) - self._clock()) > 0:  # noqa: ASYNC110
                await anyio.sleep(wait)
            self.margins.granted_clean(bucket)
            # Consumed from here on, even if the body fails or is cancelled.
            self._next_free[bucket] = self._clock() + self._gap(bucket)
            try:
                yield
            finally:
                self._next_free[bucket] = max(self._next_free[bucket],
                                              self._clock() + self._gap(bucket))
