"""The body of a ``status`` reply on the control channel: what ``shardctl status`` prints.

One row per shard and a summary, built in the supervisor from its latest worker reports.
Ages are computed here, from the supervisor's clock, so the asking peer's clock never
matters.  Session ids are left out: the reply is for people, and a session is half of
what a RESUME needs.  A peer without credentials (insecure loopback tcp: any local user)
gets :func:`redacted_status_body`: states and counts, nothing that helps an attack -- no
pids (signal targets), seqs, latencies, ages or error texts.

At 10,000 shards a body is 1.3 MB of JSON: the supervisor copies what it needs on its loop
(:class:`StatusSnapshot`, a few milliseconds) and builds and encodes the body in a thread
(:meth:`StatusSnapshot.frames`; cluster/status_answers.py), so the loop never waits on it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import starmap
from typing import TYPE_CHECKING, Any, Final, overload

from shardctl.ipc.control import encode_parts

if TYPE_CHECKING:
    from shardctl.cluster.supervisor import ShardStatus
    from shardctl.cluster.workers import WorkerSlot

#: The state every shard must reach for the cluster to count as ready (also ``/readyz``).
READY: Final = "ready"


def shard_row(status: ShardStatus, now: float) -> dict[str, Any]:
    return {
        "id": status.id, "worker": status.worker, "pid": status.pid, "state": status.state,
        "latency_ms": None if status.latency is None else round(status.latency * 1000, 1),
        "seq": status.seq, "guilds": status.guilds,
        "last_event_age": (None if status.last_event is None
                           else round(max(0.0, now - status.last_event), 3)),
        "error": status.error,
    }


def summary(shards: Sequence[ShardStatus]) -> dict[str, Any]:
    states = Counter(s.state for s in shards)
    latencies = [s.latency for s in shards if s.latency is not None]
    return {
        "shards": len(shards), "ready": states.get(READY, 0),
        "all_ready": bool(shards) and states.get(READY, 0) == len(shards),
        "states": dict(sorted(states.items())),
        "mean_latency_ms": (round(sum(latencies) / len(latencies) * 1000, 1)
                            if latencies else None),
    }


def limiter_section(margins: Mapping[int, float], rejections: Mapping[int, int],
                    total: int) -> dict[str, Any]:
    """Per identify bucket: the margin its gaps get on top of the interval now, and how
    many of its IDENTIFYs Discord answered with op 9 (``total``: all buckets, ever)."""
    return {
        "buckets": [{"bucket": b, "margin_ms": round(m * 1000, 1), "op9": rejections.get(b, 0)}
                    for b, m in sorted(margins.items())],
        "op9": total,
    }


def status_body(shards: Sequence[ShardStatus], slots: Sequence[WorkerSlot],
                now: float | None = None, *,
                limiter: Mapping[str, Any] | None = None,
                operation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``limiter``: :func:`limiter_section` of the built-in limiter (none with a shared one);
    ``operation``: a drain or restart's progress (cluster/rolling.py), running or last."""
    now = time.time() if now is None else now
    body = {
        "shards": [shard_row(s, now) for s in shards],
        "workers": [{"index": w.index, "pid": w.pid, "restarts": w.restarts,
                     "shards": len(w.shard_ids)} for w in slots],
        "summary": {**summary(shards), "workers": len(slots)},
    }
    if limiter is not None:
        body["limiter"] = dict(limiter)
    if operation is not None:
        body["operation"] = dict(operation)
    return body


def redacted_status_body(shards: Sequence[ShardStatus], slots: Sequence[WorkerSlot]
                         ) -> dict[str, Any]:
    """States and counts only, for peers without credentials (module docstring)."""
    full = summary(shards)
    return {
        "redacted": True,
        "shards": [{"id": s.id, "worker": s.worker, "state": s.state} for s in shards],
        "workers": [{"index": w.index, "shards": len(w.shard_ids)} for w in slots],
        "summary": {"shards": full["shards"], "ready": full["ready"],
                    "all_ready": full["all_ready"], "states": full["states"],
                    "workers": len(slots)},
    }


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything a ``status`` reply says, copied on the loop: ``rows`` from
    :meth:`~shardctl.cluster.supervisor.Supervisor.status_rows`, ``workers`` copies of the
    slots; ``limiter`` and ``operation`` only for a full body, ``redacted`` for anyone else."""

    rows: Sequence[tuple[Any, ...]]
    workers: Sequence[WorkerSlot]
    now: float
    limiter: Mapping[str, Any] | None = None
    operation: Mapping[str, Any] | None = None
    redacted: bool = False

    def body(self) -> dict[str, Any]:
        """The reply's body; reads nothing but the snapshot (any thread)."""
        from shardctl.cluster.supervisor import ShardStatus  # it imports this module

        shards = _Rebuilt(self.rows, ShardStatus)
        if self.redacted:
            return redacted_status_body(shards, self.workers)
        return status_body(shards, self.workers, self.now, limiter=self.limiter,
                           operation=self.operation)

    def frames(self) -> list[list[bytes]]:
        """The reply as control messages (in parts when long), for ``send_parts``."""
        return encode_parts("status", self.body())


class _Rebuilt(Sequence["ShardStatus"]):
    """Rows as records, each rebuilt when read and dropped right after.

    10,000 records alive at once would outlive the garbage collector's young generations
    and hasten a full collection, which stops every thread, the event loop's too; a row
    of plain values is not even tracked.
    """

    def __init__(self, rows: Sequence[tuple[Any, ...]],
                 make: Callable[..., ShardStatus]) -> None:
        self._rows, self._make = rows, make

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[ShardStatus]:
        return starmap(self._make, self._rows)

    @overload
    def __getitem__(self, index: int) -> ShardStatus: ...
    @overload
    def __getitem__(self, index: slice) -> list[ShardStatus]: ...

    def __getitem__(self, index: int | slice) -> ShardStatus | list[ShardStatus]:
        if isinstance(index, slice):
            return list(starmap(self._make, self._rows[index]))
        return self._make(*self._rows[index])
