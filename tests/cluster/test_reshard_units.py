"""The pure parts of a reshard (cluster/reshard.py): the budget check's figures, the target
count, the held events of the new set, and its progress as status and the live view show
it (cluster/reshard_progress.py)."""

from __future__ import annotations

import pytest

from batchkit import encode_batch
from shardctl.cli.statusview import format_table
from shardctl.cluster.discovery import GatewayInfo, SessionStartLimit
from shardctl.cluster.reshard import (
    HeldEvents,
    ReshardBudgetError,
    ReshardError,
    check_budget,
    target_count,
)
from shardctl.cluster.reshard_progress import ReshardProgress, reshard_text
from shardctl.cluster.rolling import operation_text
from shardctl.cluster.status_report import status_body
from shardctl.errors import SessionBudgetError
from shardctl.ipc.events import encode_record


def info(shards: int = 16, remaining: int = 20) -> GatewayInfo:
    return GatewayInfo("wss://gateway.discord.gg", shards,
                       SessionStartLimit(1000, remaining, 7200.0, 16))


def batch(*records: tuple[str, int]) -> bytes:
    return encode_batch([encode_record(t, shard, 1, 0, b'{"op":0}') for t, shard in records])


def test_the_budget_check_refuses_with_the_figures() -> None:
    check_budget(info(remaining=16), 16)
    with pytest.raises(ReshardBudgetError) as caught:
        check_budget(info(remaining=15), 16)
    assert str(caught.value) == (
        "refused: resharding to 16 shards needs 16 session starts but only 15 of 1000 "
        "remain (the budget resets in 2.0 h); nothing was started")
    assert isinstance(caught.value, SessionBudgetError)


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "16"])
def test_a_target_is_auto_or_a_positive_count(bad: object) -> None:
    assert target_count("auto", info(shards=24)) == 24
    assert target_count(5, info()) == 5
    with pytest.raises(ReshardError, match="at least 1"):
        target_count(bad, info())  # type: ignore[arg-type]


def test_held_events_note_each_ready_and_keep_arrival_order() -> None:
    woken: list[int] = []
    held = HeldEvents(max_events=10)
    held.on_ready = lambda: woken.append(len(held.ready))
    first, second = batch(("READY", 0), ("GUILD_CREATE", 0)), batch(("MESSAGE_CREATE", 0))
    held.add(first)
    held.add(second)
    held.add(batch(("READY", 1)))
    assert list(held.batches)[:2] == [first, second]
    assert held.ready == {0, 1} and held.events == 4 and woken == [1, 2]


def test_held_events_over_the_bound_abandon_rather_than_drop() -> None:
    held = HeldEvents(max_events=3)
    held.add(batch(("READY", 0), ("MESSAGE_CREATE", 0)))
    held.add(batch(("MESSAGE_CREATE", 0), ("MESSAGE_CREATE", 0)))
    assert held.overflowed and not held.batches


def test_a_malformed_batch_of_the_new_set_is_dropped_not_raised() -> None:
    held = HeldEvents()
    held.add(batch(("READY", 0))[:-3])
    assert held.malformed == 1 and not held.batches


def test_held_events_note_each_shards_highest_gateway_seq() -> None:
    held = HeldEvents(max_events=10)
    held.add(encode_batch([encode_record("MESSAGE_CREATE", 0, 7, 0, b"{}"),
                           encode_record("MESSAGE_CREATE", 1, 3, 0, b"{}")]))
    held.add(encode_batch([encode_record("SHARD_RESUMED", 0, None, 0, b"{}"),
                           encode_record("MESSAGE_CREATE", 0, 9, 0, b"{}")]))
    assert held.seqs == {0: 9, 1: 3}  # lifecycle events carry no seq


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reshard_progress_says_the_phase_the_counts_and_how_far_the_new_set_is() -> None:
    clock = Clock()
    progress = ReshardProgress(8, None, 100.0, rolling_generation=0, clock=clock)
    clock.now = 100.4
    assert progress.to_body() == {
        "kind": "reshard", "state": "running", "phase": "budget_check", "old_shards": 8,
        "new_shards": None, "ready": 0, "switched_at": None, "overlap_events": 0,
        "retired_events": 0, "elapsed_s": 0.4, "error": None}
    assert reshard_text(progress.to_body()) == (
        "reshard 8 -> ? shards: checking the session-start budget; 0.4 s")
    progress.new_shards, progress.phase, progress.ready = 16, "starting", 5
    clock.now = 103.2
    assert reshard_text(progress.to_body()) == (
        "reshard 8 -> 16 shards: starting the new set (5/16 READY); 3.2 s")
    progress.phase = "catching_up"
    assert "forwarding the old set's last events" in reshard_text(progress.to_body())
    progress.phase, progress.switched_at, progress.overlap_events = "retiring", 1e9, 40
    assert "switched; closing the old set" in reshard_text(progress.to_body())
    progress.retired_events, progress.finished = 12, 104.0
    clock.now = 500.0  # a finished reshard's elapsed time stays put
    body = progress.to_body()
    assert body["state"] == "done" and body["elapsed_s"] == 4.0
    assert operation_text(body) == (
        "reshard 8 -> 16 shards: switched; closing the old set; 4.0 s; done (40 events "
        "marked OVERLAP, 12 of the old set's after the switch not forwarded)")


def test_a_refused_reshard_shows_failed_with_its_reason_in_status() -> None:
    progress = ReshardProgress(8, 32, 0.0, rolling_generation=0, clock=lambda: 1.0)
    progress.error, progress.finished = "refused: resharding to 32 shards needs ...", 1.0
    body = status_body([], [], now=0.0, operation=progress.to_body())
    assert body["operation"]["kind"] == "reshard" and body["operation"]["state"] == "failed"
    lines = format_table(body).splitlines()
    assert lines[-2] == ("reshard 8 -> 32 shards: checking the session-start budget; 1.0 s; "
                         "FAILED: refused: resharding to 32 shards needs ...")
