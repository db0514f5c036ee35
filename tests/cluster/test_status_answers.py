"""``status`` answers built from a snapshot in a thread: the same body, a bounded queue."""

from __future__ import annotations

import threading

import anyio
import orjson
import pytest
from statekit import reported_supervisor

from shardctl.cluster.status_answers import MAX_WAITING, StatusAnswers
from shardctl.cluster.status_report import StatusSnapshot, redacted_status_body, status_body
from shardctl.ipc.control import Reassembler, decode

pytestmark = [pytest.mark.anyio]

OPERATION = {"name": "drain", "state": "running", "phases": {"1": "stopping"}}
LIMITER = {"buckets": [{"bucket": 0, "margin_ms": 15.0, "op9": 0}], "op9": 0}


def test_a_snapshot_answers_what_the_supervisor_s_records_say() -> None:
    sup = reported_supervisor(300)
    sup._status[7].error = "Authentication failed"
    rows = sup.status_rows()
    full = StatusSnapshot(rows, sup.slots, 1_030.0, limiter=LIMITER, operation=OPERATION)
    assert full.body() == status_body(sup.status(), sup.slots, 1_030.0, limiter=LIMITER,
                                      operation=OPERATION)
    redacted = StatusSnapshot(rows, sup.slots, 1_030.0, redacted=True)
    assert redacted.body() == redacted_status_body(sup.status(), sup.slots)


def test_a_long_answer_s_parts_join_into_its_body() -> None:
    sup = reported_supervisor(10_000)
    snap = StatusSnapshot(sup.status_rows(), sup.slots, 1_030.0)
    parts = snap.frames()
    assert len(parts) > 1  # 1.3 MB: in parts (ipc/control.py)
    joined = None
    reassembler = Reassembler()
    for frames in parts:
        joined = reassembler.feed(b"peer", decode(frames))
    assert joined is not None and joined.kind == "status"
    assert joined.body == orjson.loads(orjson.dumps(snap.body()))


def test_the_snapshot_is_a_copy_a_later_report_does_not_change() -> None:
    sup = reported_supervisor(10)
    snap = sup._status_snapshot(True)
    before = snap.body()
    sup._status[3].state, sup._status[3].seq = "reconnecting", 10**9
    sup.slots[0].restarts += 1
    sup.slots[0].shard_ids.append(99)
    assert snap.body() == before


class Control:
    """The ControlServer's non-blocking send, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, list[list[bytes]]]] = []

    def send_parts(self, peer: bytes, kind: str, parts: list[list[bytes]]) -> bool:
        self.sent.append((peer, kind, parts))
        return True


class HeldSnapshot:
    """A snapshot whose frames wait for ``release`` (a render under way)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def frames(self) -> list[list[bytes]]:
        assert self.release.wait(30), "never released"
        return [[b"SC1", b"status", b"{}"]]


async def test_answers_past_the_waiting_bound_are_dropped_and_counted() -> None:
    release = threading.Event()
    snapshots: list[bool] = []

    def take(full: bool) -> HeldSnapshot:
        snapshots.append(full)
        return HeldSnapshot(release)

    answers = StatusAnswers(take)  # type: ignore[arg-type]
    control = Control()
    async with anyio.create_task_group() as tg:
        for i in range(MAX_WAITING + 3):
            answers.answer(tg, control, f"peer{i}".encode(), full=i % 2 == 0)  # type: ignore[arg-type]
        assert answers.dropped == 3
        await anyio.wait_all_tasks_blocked()
        assert snapshots == [True]  # one render at a time; the others wait without a copy
        release.set()
    assert [peer for peer, _, _ in control.sent] == [f"peer{i}".encode()
                                                     for i in range(MAX_WAITING)]
    assert snapshots == [i % 2 == 0 for i in range(MAX_WAITING)]
    async with anyio.create_task_group() as tg:  # the queue drained: answered again
        answers.answer(tg, control, b"later", full=True)  # type: ignore[arg-type]
    assert control.sent[-1][0] == b"later" and answers.dropped == 3


def test_dropped_status_requests_count_as_refused_for_rate() -> None:
    sup = reported_supervisor(4)
    before = sup.control_refusals["rate"]
    sup._status_answers.dropped += 2
    assert sup.control_refusals["rate"] == before + 2
