"""A supervisor that holds many shards without running any: its state as workers report it.

``/metrics`` and ``status`` read only what the supervisor learnt from state reports
(``ShardStatus.observe``, ``EventTotals.observe``) and its slots, so a Supervisor that is
never entered, fed the reports a cluster of 10,000 shards would send, answers as that
cluster would -- without 10,000 sockets.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from shardctl.cluster.supervisor import ShardStatus, Supervisor
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc import control_messages as wire

TYPES = ("READY", "GUILD_CREATE", "MESSAGE_CREATE", "SHARD_DISCONNECT", "SHARD_RESUMED")


def reported_supervisor(shards: int, workers: int = 4, *, seed: int = 14,
                        latency: Callable[[int], float | None] | None = None,
                        state: Callable[[int], str] | None = None) -> Supervisor:
    """``shards`` shards over ``workers`` slots, each reported once with counts of every
    type in :data:`TYPES`; ``latency(shard)`` and ``state(shard)`` override the random ones.
    Worker 0's process was replaced once, so its shards' counts have a base too."""
    rng = random.Random(seed)
    sup = Supervisor(token="sandbox-token", api_url="http://127.0.0.1:9", processes=workers)
    per = -(-shards // workers)
    sup.slots = [WorkerSlot(w, list(range(w * per, min(shards, (w + 1) * per))))
                 for w in range(workers)]
    for slot in sup.slots:
        slot.pid = 1000 + slot.index
        for shard_id in slot.shard_ids:
            counts = {t: rng.randrange(0, 3_000_000) for t in TYPES}
            report = wire.ShardReport(
                shard_id, state(shard_id) if state else rng.choice(("ready", "resuming")),
                session_id=f"{shard_id:032x}", resume_gateway_url="wss://gateway.discord.gg",
                seq=rng.randrange(1, 10**6),
                latency=latency(shard_id) if latency else rng.uniform(0.01, 0.3),
                guilds=rng.randrange(0, 2_500), last_event=1_000.0 - rng.uniform(0, 60),
                counts=counts)
            status = sup._status[shard_id] = ShardStatus(shard_id, worker=slot.index)
            if slot.index == 0:  # an earlier process of this slot counted some already
                sup.event_totals.observe(shard_id, 999, {"READY": 1, "SHARD_DISCONNECT": 2})
            status.observe(report, slot.pid, lambda _url: True)
            sup.event_totals.observe(shard_id, slot.pid, counts)
    return sup
