"""Worker-stamped batches (issue 14: "workers write the final consumer frames").

The worker numbers its own events and sums each batch up in a trailer; the forwarder sends a
batch on untouched when the trailer says it continues where the forwarder stands, and stamps
it event by event otherwise.  The contract is that consumers cannot tell: for any run of
events -- replays, gaps, new sessions, lifecycle events, several shards and types -- the
frames on both consumer endpoints and what the forwarder learns (last seq, session, counters)
are those of the forwarder stamping everything itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from shardctl.errors import ProtocolError
from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.events import (
    BATCH_HEADER,
    STAMPED_BATCH_VERSION,
    VERSION,
    decode_batch,
    decode_event,
    session_tag,
)
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.watermarks import (
    LOOK,
    Stamper,
    Watermarks,
    continues,
    counter_key,
    read,
)

pytestmark = pytest.mark.anyio

EPOCH = 0x5EED
SHARDS = (0, 1, 2)
TYPES = ("MESSAGE_CREATE", "TYPING_START")
WORKER = 1


class FakeOut:
    """A consumer socket: keeps what is sent (a copy: the forwarder reuses its buffers)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: Any, flags: int = 0) -> None:
        self.sent.append(bytes(data))


def forwarder(key: bytes, **seeded: dict[int, Any]) -> tuple[EventForwarder, FakeOut, FakeOut]:
    """A forwarder whose consumer sockets are fakes, with a per-event and a batched
    consumer subscribed, seeded as a supervisor seeds it from its state file."""
    fwd = EventForwarder("ipc:///unused-in", "ipc:///unused-out", epoch=EPOCH)
    fwd.publishers.authorize(WORKER, key, SHARDS)
    out, bout = FakeOut(), FakeOut()
    fwd._out, fwd._bout = out, bout  # type: ignore[assignment]
    fwd.subscriptions.add(b"")
    fwd.batch_subscribers = 1
    for name, value in seeded.items():
        getattr(fwd, name).update(value)
    return fwd, out, bout


def sealed(pub: EventPublisher) -> list[bytes]:
    """Every batch the publisher sealed (it has no socket: they wait in its backlog)."""
    pub.flush_nowait()
    batches = [batch for batch, _ in pub._pending]
    pub._pending.clear()
    return batches


def frame(t: str, seq: int, session: str) -> bytes:
    d = (b'{"session_id":"%s","resume_gateway_url":"wss://r.example/"}' % session.encode()
         if t == "READY" else b"{}")
    return b'{"op":0,"s":%d,"t":"%s","d":%s}' % (seq, t.encode(), d)


def records(frames: list[bytes]) -> bytes:
    """What events-batch frames carry, without where each frame ends."""
    return b"".join(m[BATCH_HEADER.size:] for m in frames)


@dataclass
class Gateway:
    """Each shard's session and seq as a gateway would number them."""

    sessions: dict[int, str] = field(default_factory=lambda: {s: f"s{s}-0" for s in SHARDS})
    seqs: dict[int, int] = field(default_factory=lambda: dict.fromkeys(SHARDS, 0))
    restarts: int = 0


# One step of a run: (what, shard, type index, how far back a replay goes)
steps = st.lists(st.tuples(
    st.sampled_from(["event", "event", "event", "replay", "gap", "ready", "lifecycle",
                     "flush"]),
    st.sampled_from(SHARDS), st.integers(0, len(TYPES) - 1), st.integers(0, 3)),
    max_size=120)


def play(pubs: Sequence[EventPublisher], script: list[tuple[str, int, int, int]],
         gw: Gateway) -> list[list[bytes]]:
    """Publish ``script`` identically on every publisher; the batches each sealed."""
    out: list[list[bytes]] = [[] for _ in pubs]

    def publish(shard: int, t: str, seq: int | None, payload: bytes) -> None:
        tag = session_tag(gw.sessions[shard])
        for pub in pubs:
            pub.publish(shard, t, seq, payload, received_at_ns=seq or 7, session=tag)

    for what, shard, t_index, back in script:
        t = TYPES[t_index]
        if what == "flush":
            for i, pub in enumerate(pubs):
                out[i] += sealed(pub)
            continue
        if what == "lifecycle":
            publish(shard, "SHARD_RESUMED", None, b'{"d":null}')
            continue
        if what == "ready":
            gw.restarts += 1
            gw.sessions[shard] = f"s{shard}-{gw.restarts}"
            gw.seqs[shard] = 0
            t = "READY"
        if what == "gap":
            gw.seqs[shard] += 2
        seq = gw.seqs[shard] + 1
        if what == "replay":
            seq = max(1, gw.seqs[shard] - back)
        gw.seqs[shard] = max(gw.seqs[shard], seq)
        publish(shard, t, seq, frame(t, seq, gw.sessions[shard]))
    for i, pub in enumerate(pubs):
        out[i] += sealed(pub)
    return out


async def run_both(script: list[tuple[str, int, int, int]], *, seed_shard0: bool,
                   max_events: int = 64
                   ) -> tuple[EventForwarder, FakeOut, FakeOut, EventForwarder, FakeOut, FakeOut,
                              EventPublisher]:
    key = new_publish_key()
    gw = Gateway()
    seeded: dict[str, dict[int, Any]] = {}
    sessions: list[tuple[int, int, int]] = []
    if seed_shard0:  # shard 0 RESUMEs a saved session at seq 5
        gw.seqs[0] = 5
        seeded = {"last_seq": {0: 5}, "last_session": {0: ("s0-0", "wss://r.example/")},
                  "session_tags": {0: session_tag("s0-0")}}
        sessions = [(0, session_tag("s0-0"), 5)]
    plain = EventPublisher("ipc:///unused", worker=WORKER, publish_key=key,
                           max_events=max_events)
    stamped = EventPublisher("ipc:///unused", worker=WORKER, publish_key=key,
                             max_events=max_events, stamper=Stamper(EPOCH, {}, sessions))
    plain_batches, stamped_batches = play([plain, stamped], script, gw)
    ref, ref_out, ref_bout = forwarder(key, **seeded)
    fwd, out, bout = forwarder(key, **seeded)
    for batch in plain_batches:
        await ref.forward(batch)
    for batch in stamped_batches:
        assert batch[0] == STAMPED_BATCH_VERSION
        await fwd.forward(batch)
    return ref, ref_out, ref_bout, fwd, out, bout, stamped


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=steps, seed_shard0=st.booleans(), max_events=st.sampled_from([3, 64, 100]))
async def test_consumers_cannot_tell_a_worker_stamped_batch_from_one_the_forwarder_stamped(
        script: list[tuple[str, int, int, int]], seed_shard0: bool, max_events: int) -> None:
    ref, ref_out, ref_bout, fwd, out, bout, stamped = await run_both(
        script, seed_shard0=seed_shard0, max_events=max_events)
    assert out.sent == ref_out.sent
    # the same records on events-batch; where frames end may differ (the worker batches what
    # it did not drop as a replay, the forwarder what it was sent)
    assert records(bout.sent) == records(ref_bout.sent)
    assert all(0 < len(decode_batch(m)) <= 64 for m in bout.sent)
    assert fwd.last_seq == ref.last_seq
    assert fwd.last_session == ref.last_session
    assert fwd.session_tags == ref.session_tags
    assert fwd._counters == ref._counters
    assert fwd.stats.events == ref.stats.events
    assert fwd.stats.upstream_gaps == ref.stats.upstream_gaps
    # the worker dropped the replays the forwarder would have dropped
    assert stamped.stamper is not None
    assert stamped.stamper.replays + fwd.stats.duplicates == ref.stats.duplicates
    assert fwd.stats.stamped + fwd.stats.restamped + fwd.stats.small == fwd.stats.batches


async def test_a_steady_run_goes_through_untouched_after_its_ready() -> None:
    """The fast path is the normal case: after the batch that starts a session (the
    forwarder reads that one), every batch continues and none is stamped again."""
    script = [("ready", 0, 0, 0), ("ready", 1, 0, 0), ("flush", 0, 0, 0)]
    for _ in range(20):  # 9 events a batch (a lifecycle event seals it) for 6 entries
        script += [("event", 0, 0, 0)] * 3 + [("event", 0, 1, 0)] * 2 + [
            ("event", 1, 0, 0)] * 3 + [("lifecycle", 0, 0, 0)]
    ref, ref_out, _, fwd, out, _, _ = await run_both(script, seed_shard0=False)
    assert out.sent == ref_out.sent
    assert fwd.stats.restamped + fwd.stats.small == 1  # the READYs' batch
    assert fwd.stats.stamped == fwd.stats.batches - 1 == 20
    assert fwd.last_seq == ref.last_seq == {0: 101, 1: 61}


async def test_a_batch_with_fewer_events_than_trailer_entries_is_read_event_by_event(
        ) -> None:
    """One event on each of three shards: six trailer entries for three events, which cost
    less read one by one; the frames are the same."""
    script = [("ready", shard, 0, 0) for shard in SHARDS] + [("flush", 0, 0, 0)]
    script += [*[("event", shard, 0, 0) for shard in SHARDS], ("flush", 0, 0, 0)] * 5
    script += [("event", 0, 0, 0)] * 4  # four events of one (type, shard): two entries
    _, ref_out, ref_bout, fwd, out, bout, _ = await run_both(script, seed_shard0=False)
    assert out.sent == ref_out.sent and bout.sent == ref_bout.sent
    assert (fwd.stats.small, fwd.stats.stamped, fwd.stats.restamped) == (1 + 5, 1, 0)


async def test_a_resumed_session_goes_through_untouched_from_its_first_batch() -> None:
    script = [("event", 0, 0, 0), ("event", 0, 1, 0), ("event", 0, 1, 0),
              ("flush", 0, 0, 0)] * 5
    _, _, ref_bout, fwd, _, bout, _ = await run_both(script, seed_shard0=True)
    assert bout.sent == ref_bout.sent
    assert fwd.stats.stamped == fwd.stats.batches == 5
    assert [e.seq for m in bout.sent for e in decode_batch(m)] == list(range(6, 21))


async def test_a_large_batch_reaches_batch_consumers_in_frames_of_64() -> None:
    script = [("event", 0, 0, 0), ("event", 0, 1, 0)] * 105
    _, ref_out, ref_bout, fwd, out, bout, _ = await run_both(script, seed_shard0=True,
                                                             max_events=256)
    assert fwd.stats.batches == 1 and fwd.stats.stamped == 1
    assert out.sent == ref_out.sent
    assert bout.sent == ref_bout.sent
    assert [len(decode_batch(m)) for m in bout.sent] == [64, 64, 64, 18]
    assert [e.seq for m in bout.sent for e in decode_batch(m)] == list(range(6, 216))


def resumed_at_5(key: bytes) -> tuple[EventForwarder, FakeOut, FakeOut]:
    """A forwarder that RESUMEs shard 0's session "a" at seq 5."""
    return forwarder(key, last_seq={0: 5}, session_tags={0: session_tag("a")},
                     last_session={0: ("a", "wss://r.example/")})


def stamped_from_5(key: bytes, counters: dict[bytes, int] | None = None, *,
                   epoch: int = EPOCH) -> EventPublisher:
    """A worker's publisher that numbers its own events and RESUMEs session "a" at 5."""
    return EventPublisher("ipc:///unused", worker=WORKER, publish_key=key,
                          stamper=Stamper(epoch, counters, [(0, session_tag("a"), 5)]))


def publish_from_6(pub: EventPublisher, shard: int = 0, n: int = 3) -> None:
    for seq in range(6, 6 + n):
        pub.publish(shard, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "a"),
                    session=session_tag("a"))


def out_of_step(worker_at: int) -> tuple[EventForwarder, FakeOut, EventPublisher,
                                        list[tuple[int, int, dict[bytes, int]]]]:
    """A forwarder that has forwarded shard 0's MESSAGE_CREATE up to bus_seq 5, a worker
    whose numbering of it stands at ``worker_at``, and the rebases the forwarder asks for."""
    key = new_publish_key()
    fwd, _, bout = resumed_at_5(key)
    mc = counter_key(b"MESSAGE_CREATE", 0, VERSION)
    fwd._counters[mc] = 5
    asked: list[tuple[int, int, dict[bytes, int]]] = []
    fwd.on_misaligned = lambda *call: asked.append(call)
    return fwd, bout, stamped_from_5(key, {mc: worker_at}), asked


async def test_a_worker_numbering_from_stale_counters_is_renumbered_here() -> None:
    """A respawn that raced the dead worker's last batch: the new worker's counters are one
    behind what was forwarded.  Its batches are stamped again, so no bus_seq repeats."""
    fwd, bout, pub, _ = out_of_step(4)
    publish_from_6(pub, n=2)
    for batch in sealed(pub):
        await fwd.forward(batch)
    assert [e.bus_seq for m in bout.sent for e in decode_batch(m)] == [6, 7]
    assert fwd.stats.restamped == 1 and fwd.stats.stamped == 0


async def test_a_worker_out_of_step_is_rebased_and_then_goes_untouched() -> None:
    """The forwarder renumbers a batch whose numbering is one behind, asks the worker to add
    one (a new generation), renumbers what the worker sent meanwhile without asking again,
    and lets the worker's batches through untouched once it has caught up."""
    fwd, bout, pub, asked = out_of_step(4)
    mc = counter_key(b"MESSAGE_CREATE", 0, VERSION)
    publish_from_6(pub)
    for batch in sealed(pub):
        await fwd.forward(batch)
    assert asked == [(WORKER, 1, {mc: 1})]
    for seq in range(9, 12):  # in flight before the worker hears of it
        pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "a"),
                    session=session_tag("a"))
    in_flight = sealed(pub)
    pub.rebase(*asked[0][1:])
    for seq in range(12, 15):
        pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "a"),
                    session=session_tag("a"))
    for batch in [*in_flight, *sealed(pub)]:
        await fwd.forward(batch)
    assert len(asked) == 1
    assert (fwd.stats.restamped, fwd.stats.stamped, fwd.stats.rebased) == (2, 1, 1)
    assert [e.bus_seq for m in bout.sent for e in decode_batch(m)] == list(range(6, 15))
    assert {m[1] for m in bout.sent} == {0}  # the generation stays between worker and bus


async def test_a_worker_sending_one_event_at_a_time_is_rebased_at_its_first_batch(
        ) -> None:
    """A quiet worker's batches are all small (one event, two trailer entries), so their
    trailer is not read; the first event's number still shows the worker out of step."""
    fwd, bout, pub, asked = out_of_step(2)
    mc = counter_key(b"MESSAGE_CREATE", 0, VERSION)

    async def one(seq: int) -> None:
        pub.publish(0, "MESSAGE_CREATE", seq, frame("MESSAGE_CREATE", seq, "a"),
                    session=session_tag("a"))
        [batch] = sealed(pub)
        await fwd.forward(batch)

    await one(6)
    assert asked == [(WORKER, 1, {mc: 3})]
    assert (fwd.stats.restamped, fwd.stats.small) == (1, 0)
    await one(7)  # in flight before the worker hears of it: renumbered, not asked again
    pub.rebase(*asked[0][1:])
    for seq in range(8, 11):
        await one(seq)
    assert len(asked) == 1
    assert (fwd.stats.restamped, fwd.stats.small, fwd.stats.rebased) == (2, 3, 1)
    assert [e.bus_seq for m in bout.sent for e in decode_batch(m)] == list(range(6, 11))


async def test_a_batch_of_another_supervisor_run_is_stamped_again() -> None:
    key = new_publish_key()
    fwd, _, bout = resumed_at_5(key)
    pub = stamped_from_5(key, epoch=EPOCH + 1)
    publish_from_6(pub)
    for batch in sealed(pub):
        await fwd.forward(batch)
    assert [(e.bus_seq, e.epoch) for m in bout.sent for e in decode_batch(m)] == [
        (1, EPOCH), (2, EPOCH), (3, EPOCH)]
    assert fwd.stats.restamped == 1


async def test_a_stamped_batch_naming_another_worker_s_shard_is_read_event_by_event() -> None:
    key = new_publish_key()
    fwd, out, _ = resumed_at_5(key)
    pub = stamped_from_5(key)
    publish_from_6(pub)
    publish_from_6(pub, shard=9)  # not this worker's shard
    for batch in sealed(pub):
        await fwd.forward(batch)
    assert [decode_event(m).shard for m in out.sent] == [0, 0, 0]
    assert fwd.stats.foreign == 3 and fwd.stats.restamped == 1


async def test_a_stamped_batch_with_a_broken_trailer_is_dropped_and_the_bus_goes_on() -> None:
    key = new_publish_key()
    fwd, out, _ = resumed_at_5(key)
    pub = stamped_from_5(key)
    publish_from_6(pub)
    broken = sealed(pub)[0][:-3]  # its footer cut short
    await fwd.forward(broken)
    assert fwd.stats.malformed == 1 and out.sent == []
    plain = EventPublisher("ipc:///unused", worker=WORKER, publish_key=key)
    publish_from_6(plain)  # the same events again, as a version 3 batch
    for batch in sealed(plain):
        await fwd.forward(batch)
    assert [decode_event(m).seq for m in out.sent] == [6, 7, 8]


# -- the pure parts ----------------------------------------------------------------------------


def test_a_trailer_reads_back_what_was_summed_up() -> None:
    stamper = Stamper(42, {counter_key(b"MESSAGE_CREATE", 3, VERSION): 9})
    assert stamper.stamp(b"MESSAGE_CREATE", 3, 77, 20, False) == 10
    assert stamper.stamp(b"SHARD_RESUMED", 3, 0, None, False) == 1
    assert stamper.stamp(b"MESSAGE_CREATE", 3, 77, 21, False) == 11
    assert stamper.stamp(b"READY", 4, 88, 1, True) == 1
    head = b"h" * BATCH_HEADER.size
    marks = read(head + b"records" + stamper.seal(), BATCH_HEADER.size)
    mc, resumed = counter_key(b"MESSAGE_CREATE", 3, VERSION), counter_key(b"SHARD_RESUMED", 3,
                                                                          VERSION)
    assert marks == Watermarks(
        42, ((mc, 2, 11, 21), (resumed, 1, 1, 0), (counter_key(b"READY", 4, VERSION), 1, 1, 1)),
        ((3, 77, 20, 21, 2, 0), (4, 88, 1, 1, 1, LOOK)), BATCH_HEADER.size + 7)
    # the next batch sums up only its own records
    assert stamper.stamp(b"MESSAGE_CREATE", 3, 77, 22, False) == 12
    marks = read(head + stamper.seal(), BATCH_HEADER.size)
    assert marks.keys == ((mc, 1, 12, 22),) and marks.shards == ((3, 77, 22, 22, 1, 0),)


def test_a_batch_holding_two_sessions_of_a_shard_is_looked_at() -> None:
    stamper = Stamper(1)
    stamper.stamp(b"MESSAGE_CREATE", 0, 5, 8, False)
    stamper.stamp(b"MESSAGE_CREATE", 0, 6, 2, False)  # a new session whose READY is not here
    assert read(bytes(BATCH_HEADER.size) + stamper.seal(), BATCH_HEADER.size).shards[0][5] == LOOK


@given(st.binary(max_size=200), st.integers(0, 400))
def test_a_broken_trailer_is_a_protocol_error_never_a_crash(tail: bytes, cut: int) -> None:
    stamper = Stamper(1)
    stamper.stamp(b"T", 0, 0, 1, False)
    good = bytes(BATCH_HEADER.size) + stamper.seal()
    for batch in (bytes(BATCH_HEADER.size) + tail, good[:cut] + tail):
        try:
            marks = read(batch, BATCH_HEADER.size)
        except ProtocolError:
            continue
        assert BATCH_HEADER.size <= marks.end <= len(batch)


def test_continues_only_from_where_the_forwarder_stands() -> None:
    mc = counter_key(b"MESSAGE_CREATE", 0, VERSION)
    marks = Watermarks(1, ((mc, 2, 12, 31),), ((0, 5, 30, 31, 2, 0),), 0)
    state = {"counters": {mc: 10}, "last_seq": {0: 29}, "tags": {0: 5}}
    assert continues(marks, 2, frozenset({0}), **state)
    assert not continues(marks, 3, frozenset({0}), **state)  # the header's count disagrees
    assert not continues(marks, 2, frozenset({1}), **state)  # not the sender's shard
    assert not continues(marks, 2, frozenset({0}), **{**state, "counters": {mc: 9}})
    assert not continues(marks, 2, frozenset({0}), **{**state, "last_seq": {0: 28}})
    assert not continues(marks, 2, frozenset({0}), **{**state, "tags": {0: 6}})
    assert not continues(marks, 2, frozenset({0}), **{**state, "tags": {}})
    gap = Watermarks(1, ((mc, 2, 12, 32),), ((0, 5, 30, 32, 2, 0),), 0)
    assert not continues(gap, 2, frozenset({0}), **state)
    look = Watermarks(1, ((mc, 2, 12, 31),), ((0, 5, 30, 31, 2, LOOK),), 0)
    assert not continues(look, 2, frozenset({0}), **state)


def test_a_stamper_continues_the_handed_over_counters_and_drops_replays() -> None:
    mc = b"MESSAGE_CREATE"
    stamper = Stamper(1, {counter_key(mc, 0, VERSION): 41}, [(0, 9, 100)])
    assert stamper.stamp(mc, 0, 9, 100, False) == 0  # already forwarded in this session
    assert stamper.stamp(mc, 0, 9, 101, False) == 42
    assert stamper.stamp(mc, 0, 9, 101, False) == 0
    assert stamper.stamp(mc, 1, 3, 1, False) == 1  # a shard of its own numbering
    assert stamper.stamp(b"READY", 0, 10, 1, True) == 1  # a new session starts over
    assert stamper.stamp(mc, 0, 10, 2, False) == 43
    assert stamper.stamp(mc, 0, 9, 102, False) == 44  # another session's seq: not compared
    assert stamper.replays == 2
    # an adoption adds shards; keys this worker writes keep its own numbering
    stamper.adopt({counter_key(mc, 0, VERSION): 7, counter_key(b"READY", 5, VERSION): 3},
                  [(5, 1, 2), (0, 1, 1)])
    assert stamper.stamp(mc, 0, 9, 103, False) == 45
    assert stamper.stamp(b"READY", 5, 1, 3, False) == 4
    assert stamper.stamp(mc, 5, 1, 2, False) == 0


def test_a_rebase_moves_written_and_handed_over_keys_alike() -> None:
    mc, ready = counter_key(b"MESSAGE_CREATE", 0, VERSION), counter_key(b"READY", 0, VERSION)
    stamper = Stamper(1, {mc: 10, ready: 1})
    assert stamper.stamp(b"MESSAGE_CREATE", 0, 3, 5, False) == 11
    stamper.shift({mc: 4, ready: -1})
    assert stamper.stamp(b"MESSAGE_CREATE", 0, 3, 6, False) == 16
    assert stamper.stamp(b"READY", 0, 4, 1, True) == 1


def test_counter_keys_are_subscription_prefixes() -> None:
    assert counter_key(b"MESSAGE_CREATE", 3, VERSION) == (
        b"MESSAGE_CREATE\0" + bytes((VERSION,)) + (3).to_bytes(4, "big"))
