"""Who may take a worker slot (cluster/registration.py) and what others are told
(cluster/status_report.py): a secret or a worker key, never a pid; no pids for strangers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.cluster.registration import slot_for
from shardctl.cluster.status_report import redacted_status_body, status_body
from shardctl.cluster.supervisor import ShardStatus
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc.security import Role

SECRET = "5e" * 32


def cluster() -> list[WorkerSlot]:
    local = WorkerSlot(0, [0, 1], pid=4242, secret=SECRET)
    busy_remote = WorkerSlot(1, [2], remote=True, peer=b"\0remote-1", pid=77)
    free_remote = WorkerSlot(2, [3], remote=True)
    return [local, busy_remote, free_remote]


def test_a_spawned_slot_is_taken_with_its_secret_once() -> None:
    slots = cluster()
    assert slot_for(slots, {"worker": 0, "secret": SECRET}, b"p1", Role.OPERATOR,
                    curve=False) == (slots[0], "")
    slot, why = slot_for(slots, {"worker": 0, "secret": SECRET}, b"p2", Role.OPERATOR,
                         curve=False)
    assert slot is None and "already used" in why


@pytest.mark.parametrize("body", [
    {"worker": 0, "pid": 4242},                    # issue 12 item 1: a pid is public
    {"worker": 0},
    {"worker": 0, "secret": "00" * 32},
    {"worker": 0, "secret": SECRET.upper()},
    {"worker": 0, "secret": SECRET[:-2]},
    {"worker": 1, "secret": SECRET},               # a remote slot is not taken by index
    {"worker": True, "secret": SECRET},
    {"worker": 9, "secret": SECRET},
    {"worker": "0", "secret": SECRET},
])
def test_anything_but_the_secret_takes_no_spawned_slot(body: dict[str, object]) -> None:
    slots = cluster()
    assert slot_for(slots, body, b"p", Role.OPERATOR, curve=False)[0] is None
    assert slots[0].secret == SECRET  # a wrong guess does not use the secret up


@pytest.mark.parametrize("role", [None, Role.OPERATOR, Role.CONSUMER, Role.SUPERVISOR])
def test_with_curve_only_the_worker_role_registers(role: Role | None) -> None:
    slots = cluster()
    slot, why = slot_for(slots, {"worker": 0, "secret": SECRET}, b"p", role, curve=True)
    assert slot is None and "cannot register as a worker" in why
    assert slot_for(slots, {"worker": None}, b"p", role, curve=True)[0] is None
    assert slot_for(slots, {"worker": 0, "secret": SECRET}, b"p", Role.WORKER,
                    curve=True)[0] is slots[0]


def test_a_remote_slot_goes_to_a_worker_key_only_while_it_is_free() -> None:
    slots = cluster()
    assert slot_for(slots, {"worker": None}, b"p", Role.OPERATOR, curve=False)[0] is None
    assert slot_for(slots, {"worker": None}, b"p", None, curve=False)[0] is None
    slot, _ = slot_for(slots, {"worker": None}, b"w1", Role.WORKER, curve=True)
    assert slot is slots[2]
    slot.peer = b"w1"
    assert slot_for(slots, {"worker": None}, b"w2", Role.WORKER, curve=True) == (
        None, "no remote slot is free")
    assert slot_for(slots, {"worker": None}, b"w1", Role.WORKER, curve=True)[0] is slot


@given(st.dictionaries(st.sampled_from(["worker", "secret", "pid"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=70)))
def test_no_body_without_the_secret_or_a_worker_key_takes_a_slot(
        body: dict[str, object]) -> None:
    slots = cluster()
    for role in (None, Role.OPERATOR, Role.CONSUMER):
        assert slot_for(slots, body, b"p", role, curve=False)[0] is None


def test_a_peer_without_credentials_sees_states_and_counts_only() -> None:
    slots = cluster()
    shards = [ShardStatus(i, state="ready", worker=i // 2, pid=4242, session_id="s" * 32,
                          resume_gateway_url="wss://resume.example", seq=99, latency=0.04,
                          guilds=3, last_event=1.0, error="boom") for i in range(4)]
    full = status_body(shards, slots, now=2.0)
    assert full["shards"][0]["pid"] == 4242 and full["shards"][0]["seq"] == 99
    redacted = redacted_status_body(shards, slots)
    assert redacted["redacted"] is True
    assert redacted["shards"] == [{"id": i, "worker": i // 2, "state": "ready"}
                                  for i in range(4)]
    assert redacted["workers"] == [{"index": 0, "shards": 2}, {"index": 1, "shards": 1},
                                   {"index": 2, "shards": 1}]
    assert redacted["summary"]["all_ready"] is True and redacted["summary"]["workers"] == 3
    text = str(redacted)
    for secret in ("4242", "77", "99", "s" * 32, "resume.example", "boom", "0.04"):
        assert secret not in text
