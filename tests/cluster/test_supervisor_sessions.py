"""The supervisor reads one record per shard from the bus: a seq only with its session.

No processes: a supervisor that is not entered, a stand-in for the forwarder's two maps
(the bus's watermark), and the shard statuses a worker's state report would set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from shardctl.cluster.supervisor import ShardStatus, Supervisor

pytestmark = pytest.mark.anyio


@dataclass
class BusProgress:
    """What the supervisor reads of ``EventForwarder``: last seq and session per shard."""

    last_seq: dict[int, int] = field(default_factory=dict)
    last_session: dict[int, tuple[str, str]] = field(default_factory=dict)


def supervisor_with(bus: BusProgress, *statuses: ShardStatus) -> Supervisor:
    sup = Supervisor(token="x")
    sup._forwarder = bus  # type: ignore[assignment]
    sup._status = {s.id: s for s in statuses}
    return sup


async def test_a_new_sessions_ready_is_not_taken_as_forwarded_by_the_old_sessions_seq(
        ) -> None:
    # Shard 0 re-identified: its READY (session "new", seq 1) is reported on the control
    # channel but still queued in the worker; the bus forwarded "old" up to seq 500.
    bus = BusProgress({0: 500}, {0: ("old", "wss://r/")})
    sup = supervisor_with(bus, ShardStatus(0, "ready", session_id="new", seq=1))
    assert not sup._all_forwarded() and not sup._drained()
    bus.last_seq[0], bus.last_session[0] = 1, ("new", "wss://n/")
    assert sup._all_forwarded() and sup._drained()


async def test_a_session_reported_on_the_control_channel_never_takes_the_buss_seq(
        ) -> None:
    # The bus forwarded seq 500 of a stream whose session it does not know; the worker
    # reports session "new" (whose READY never reached the bus).  Pairing them would RESUME
    # "new" at a point of another stream: the shard must IDENTIFY instead.
    bus = BusProgress({0: 500})
    sup = supervisor_with(bus, ShardStatus(0, "ready", session_id="new",
                                           resume_gateway_url="wss://n/", seq=3))
    assert sup._resumable_sessions() == []
