"""The body of a ``status`` reply on the control channel: what ``shardctl status`` prints.

One row per shard and a summary, built in the supervisor from its latest worker reports.
Ages are computed here, from the supervisor's clock, so the asking peer's clock never
matters.  Session ids are left out: the reply is for people, and a session is half of
what a RESUME needs.  A peer without credentials (insecure loopback tcp: any local user)
gets :func:`redacted_status_body`: states and counts, nothing that helps an attack -- no
pids (signal targets), seqs, latencies, ages or error texts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

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
