"""SentMarks: the seq a stop may save when it cannot know what events-out still held."""

from __future__ import annotations

import tracemalloc
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.ipc.unsent import SentMarks, shard_of_key


def key(t: str, shard: int) -> bytes:
    """The forwarder's counter key: type NUL version shard (u32)."""
    return t.encode() + b"\0\x01" + shard.to_bytes(4, "big")


class Stream:
    """What the forwarder does per message: count it per (type, shard), mark when due."""

    def __init__(self, marks: SentMarks) -> None:
        self.marks = marks
        self.counters: Counter[bytes] = Counter()
        self.sent: dict[bytes, list[int]] = {}

    def send(self, t: str, shard: int, seq: int) -> None:
        k = key(t, shard)
        self.counters[k] += 1
        bus_seq = self.counters[k]
        self.sent.setdefault(k, []).append(seq)
        if not (bus_seq - 1) & self.marks.mask or t == "READY":
            if not (bus_seq - 1) & self.marks.mask:
                self.marks.note(k, bus_seq, seq)
            if t == "READY":
                self.marks.session_started(shard, seq, self.counters)


def test_the_key_names_its_shard() -> None:
    assert shard_of_key(key("MESSAGE_CREATE", 70_000)) == 70_000


def test_every_is_a_power_of_two_near_an_eighth_of_the_window() -> None:
    assert SentMarks(100_256).every == 8192
    assert SentMarks(3).every == 1
    with pytest.raises(ValueError, match="power of two"):
        SentMarks(100, every=3)


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 40), base=st.integers(0, 50),
       traffic=st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 2)),
                        max_size=300),
       held=st.dictionaries(st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 2)),
                            st.integers(0, 40)))
def test_no_event_a_pipe_may_hold_is_at_or_below_the_safe_seq(
        window: int, base: int, traffic: list[tuple[str, int]],
        held: dict[tuple[str, int], int]) -> None:
    marks = SentMarks(window)
    stream = Stream(marks)
    seqs = dict.fromkeys(range(3), base)
    for shard in seqs:
        marks.seed(shard, base)
    for t, shard in traffic:
        seqs[shard] += 1
        stream.send(t, shard, seqs[shard])
    safe = marks.safe_seqs(stream.counters)
    for (t, shard), depth in held.items():
        # a pipe holds at most ``window`` of each (type, shard): the last ones sent
        sent = stream.sent.get(key(t, shard), [])
        for seq in sent[len(sent) - min(depth, window):]:
            assert safe[shard] < seq, (t, shard, seq, safe)
    assert all(safe[shard] >= base for shard in safe)


def test_a_long_stream_replays_at_most_a_window_and_a_mark_interval() -> None:
    marks = SentMarks(1000, every=128)
    stream = Stream(marks)
    for seq in range(1, 50_001):
        stream.send("MESSAGE_CREATE", 0, seq)
    safe = marks.safe_seqs(stream.counters)[0]
    assert 50_000 - 1000 - 128 <= safe < 50_000 - 1000 + 1


def test_a_rare_type_bounds_its_shard_by_its_own_count() -> None:
    marks = SentMarks(100, every=16)
    stream = Stream(marks)
    for seq in range(1, 5001):
        stream.send("GUILD_UPDATE" if seq % 1000 == 1 else "MESSAGE_CREATE", 0, seq)
    # the five GUILD_UPDATEs may all still sit in the pipe of a consumer of that type only
    assert marks.safe_seqs(stream.counters)[0] < 1


def test_a_session_started_in_this_run_is_never_cut_below_its_ready() -> None:
    marks = SentMarks(100, every=16)
    stream = Stream(marks)
    marks.seed(0, 500)
    for seq in range(501, 1001):
        stream.send("MESSAGE_CREATE", 0, seq)
    stream.send("READY", 0, 1)
    for seq in range(2, 51):
        stream.send("MESSAGE_CREATE", 0, seq)
    assert marks.safe_seqs(stream.counters) == {0: 1}  # the new session, from its READY


def test_types_only_of_an_older_session_do_not_hold_the_new_one_back() -> None:
    marks = SentMarks(100, every=16)
    stream = Stream(marks)
    marks.seed(0, 0)
    for seq in range(1, 11):
        stream.send("TYPING_START", 0, seq)
    stream.send("READY", 0, 1)
    for seq in range(2, 1002):
        stream.send("MESSAGE_CREATE", 0, seq)
    safe = marks.safe_seqs(stream.counters)[0]
    assert 1001 - 100 - 16 <= safe <= 1001 - 100


def test_an_idle_shard_costs_its_marks_well_under_a_kilobyte() -> None:
    # A supervisor of 10,000 idle shards holds the marks of each one's READY and
    # GUILD_CREATE: a deque per (type, shard) made that 2.4 KB a shard (24 MB).
    shards = 2000
    keys = [(key(t, shard), shard, seq) for shard in range(shards)
            for seq, t in enumerate(("READY", "GUILD_CREATE"), 1)]
    counters = {k: 1 for k, _, _ in keys}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        marks = SentMarks(1256)
        for k, shard, seq in keys:
            marks.note(k, 1, seq)
            if seq == 1:
                marks.session_started(shard, seq, counters)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / shards < 1024
    assert marks.safe_seqs(counters) == dict.fromkeys(range(shards), 1)
