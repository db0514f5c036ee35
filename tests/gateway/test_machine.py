"""The shard state machine on a fake clock: every protocol decision, no sockets, no sleeping."""

from __future__ import annotations

import math
import random
import zlib

import pytest
from machinekit import (
    ACK,
    HB_MS,
    TOKEN,
    connect_ready,
    dispatch,
    emitted,
    frame,
    hello,
    new_machine,
    one,
    ready,
    sends,
    sent_json,
)

from shardctl.errors import (
    AuthenticationError,
    DisallowedIntentsError,
    GatewayFatalError,
    InvalidIntentsError,
    PayloadError,
    ShardingError,
)
from shardctl.gateway.backoff import BACKOFF_FIRST
from shardctl.gateway.closecodes import CLOSE_CODES, ZOMBIE_CLOSE_CODE, CloseAction
from shardctl.gateway.intents import Intents
from shardctl.gateway.machine import (
    IDENTIFY_REJECT_WINDOW,
    RECONNECT_CLOSE_CODE,
    TRANSITIONS,
    Close,
    Emit,
    Fatal,
    IdentifyRejected,
    NeedIdentify,
    Reconnect,
    Refused,
    Send,
    ShardMachine,
    ShardState,
    Stop,
    gateway_url,
)
from shardctl.gateway.opcodes import Op

RESUME_URL = "ws://resume.example/?v=10&encoding=json"
N = HB_MS / 1000.0


# ---------------------------------------------------------------- connect, HELLO, heartbeats


def test_transition_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(ShardState)
    assert ShardState.CONNECTING in TRANSITIONS[ShardState.CLOSED]


def test_hello_asks_for_identify_and_identify_carries_shard_and_intents() -> None:
    m = new_machine(shard_id=3, shard_count=8, intents=33281 & ~Intents.MESSAGE_CONTENT)
    plan = m.start(0.0)
    assert plan == Reconnect(url="", resume=False, delay=0.0)
    url = m.use_gateway("ws://gw.example")
    assert url == "ws://gw.example/?v=10&encoding=json"
    assert m.state is ShardState.CONNECTING
    assert m.opened(0.0) == []
    assert m.receive(hello(), 0.0) == [NeedIdentify()]
    assert m.state is ShardState.HELLO
    [ident] = m.identify(0.1)
    assert isinstance(ident, Send) and ident.op == Op.IDENTIFY
    d = sent_json(ident)["d"]
    assert d["shard"] == [3, 8] and d["token"] == TOKEN and d["intents"] == 513
    assert m.state is ShardState.IDENTIFYING


def test_no_identify_without_need_identify() -> None:
    m = new_machine()
    m.start(0.0)
    m.opened(0.0)
    assert m.identify(0.0) == []  # no HELLO yet, so nobody asked
    m.receive(hello(), 0.0)
    assert len(m.identify(0.0)) == 1
    assert m.identify(0.0) == []  # one grant, one IDENTIFY


def test_first_beat_is_jittered_within_interval_and_varies() -> None:
    firsts = []
    for seed in range(20):
        m = new_machine(rng=random.Random(seed))
        m.start(0.0)
        m.opened(0.0)
        m.receive(hello(), 10.0)
        deadline = m.next_deadline()
        assert deadline is not None and 10.0 <= deadline <= 10.0 + N
        assert m.tick(deadline - 1e-6) == []
        [beat] = sends(m.tick(deadline), Op.HEARTBEAT)
        assert sent_json(beat) == {"op": 1, "d": None}
        firsts.append(deadline)
    assert len(set(firsts)) > 10


def test_beats_every_interval_with_last_seq() -> None:
    m = new_machine()
    connect_ready(m)
    m.receive(dispatch("GUILD_CREATE", {"id": "1"}, 2), 0.0)
    t = m.next_deadline()
    assert t is not None
    [beat] = sends(m.tick(t), Op.HEARTBEAT)
    assert sent_json(beat)["d"] == 2
    m.receive(ACK, t + 0.05)
    assert m.latency == pytest.approx(0.05)
    assert m.next_deadline() == pytest.approx(t + N)
    assert sends(m.tick(t + N), Op.HEARTBEAT)


def test_server_heartbeat_request_is_answered_at_once() -> None:
    m = new_machine()
    connect_ready(m)
    [beat] = m.receive(frame(1), 0.01)
    assert isinstance(beat, Send) and beat.op == Op.HEARTBEAT
    assert sent_json(beat) == {"op": 1, "d": 1}


def test_zombie_closes_non_1000_and_resumes_on_resume_url() -> None:
    m = new_machine()
    connect_ready(m)
    t = m.next_deadline()
    assert t is not None
    assert sends(m.tick(t), Op.HEARTBEAT)
    acts = m.tick(t + N)  # next beat due, previous never ACKed
    close = one(acts, Close)
    assert close.code == ZOMBIE_CLOSE_CODE and close.code not in (1000, 1001)
    plan = one(acts, Reconnect)
    assert plan.resume and plan.url == RESUME_URL
    assert emitted(acts) == ["DISCONNECT"]
    assert m.state is ShardState.RECONNECTING and m.next_deadline() is None
    # The next socket RESUMEs with the session and last seq; no IDENTIFY.
    m.opened(t + N + 1)
    [resume] = m.receive(hello(), t + N + 1)
    assert isinstance(resume, Send) and resume.op == Op.RESUME
    assert sent_json(resume)["d"] == {"token": TOKEN, "session_id": "sess-1", "seq": 1}
    assert m.state is ShardState.RESUMING
    acts = m.receive(dispatch("RESUMED", {}, 2), t + N + 2)
    assert emitted(acts) == ["RESUMED", "SHARD_RESUMED"]
    assert m.state is ShardState.READY and m.seq == 2


def test_receive_timeout_without_traffic_resumes() -> None:
    # Beats far apart and ACKs allowed as long: only the silence can end this socket.
    m = new_machine(receive_timeout=5.0, heartbeat_ack_timeout=10.0)
    m.start(0.0)
    m.opened(0.0)
    m.receive(hello(10_000), 0.0)
    m.identify(0.0)
    m.receive(ready(), 0.5)
    m.receive(dispatch("TYPING_START", {}, 2), 3.0)  # last traffic
    acts: list[object] = []
    now = 0.0
    while not any(isinstance(a, Close) for a in acts):
        t = m.next_deadline()
        assert t is not None and t >= now
        now = t
        acts = list(m.tick(t))
    assert now == pytest.approx(8.0)
    assert one(acts, Close).code == RECONNECT_CLOSE_CODE
    assert one(acts, Reconnect).resume


def test_before_hello_the_receive_timeout_still_applies() -> None:
    m = new_machine(receive_timeout=2.0)
    m.start(0.0)
    m.opened(0.0)
    assert m.next_deadline() == 2.0
    acts = m.tick(2.0)
    assert one(acts, Close).code == RECONNECT_CLOSE_CODE
    assert not one(acts, Reconnect).resume


# ---------------------------------------------------------------- op 7 and op 9


def test_op7_resumes_on_resume_url() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.receive(frame(7), 1.0)
    close = one(acts, Close)
    assert close.code not in (1000, 1001)
    plan = one(acts, Reconnect)
    assert plan.resume and plan.url == RESUME_URL
    assert m.resume_url() == RESUME_URL


def test_a_refused_resume_url_turns_the_planned_resume_into_an_identify() -> None:
    m = new_machine()
    connect_ready(m)
    plan = one(m.receive(frame(7), 1.0), Reconnect)
    assert plan.resume
    instead = m.resume_refused(1.0)  # the driver will not send the token there
    assert not instead.resume and instead.delay == 0.0
    assert m.session_id is None and m.resume_url() is None
    m.opened(1.0)
    assert m.receive(hello(), 1.0) == [NeedIdentify()]  # through the limiter, as ever


def test_op7_before_ready_identifies_on_cached_url() -> None:
    m = new_machine()
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    acts = m.receive(frame(7), 0.0)  # even before HELLO
    plan = one(acts, Reconnect)
    assert not plan.resume and plan.url == "ws://gw.example/?v=10&encoding=json"
    m.opened(plan.delay)
    assert m.receive(hello(), plan.delay) == [NeedIdentify()]


def test_op9_resumable_resumes() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.receive(frame(9, True), 1.0)
    assert emitted(acts)[0] == "INVALID_SESSION"
    first = acts[0]
    assert isinstance(first, Emit) and first.data == {"resumable": True}
    assert one(acts, Reconnect).resume
    assert m.session_id == "sess-1"


@pytest.mark.parametrize("seed", range(10))
def test_op9_not_resumable_waits_1_to_5_s_then_identifies(seed: int) -> None:
    m = new_machine(rng=random.Random(seed))
    connect_ready(m)
    acts = m.receive(frame(9, False), 1.0)
    plan = one(acts, Reconnect)
    assert not plan.resume and 1.0 <= plan.delay <= 5.0
    assert plan.url == "ws://gw.example/?v=10&encoding=json"
    assert m.session_id is None and m.seq is None
    m.opened(1.0 + plan.delay)
    assert m.receive(hello(), 1.0 + plan.delay) == [NeedIdentify()]


def test_op9_during_identify_reidentifies_through_limiter() -> None:
    m = new_machine()
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    m.receive(hello(), 0.0)
    m.identify(0.0)
    acts = m.receive(frame(9, True), 0.5)  # no session yet: "resumable" means nothing
    plan = one(acts, Reconnect)
    assert not plan.resume and plan.delay >= 1.0


def identifying(at: float) -> ShardMachine:
    m = new_machine()
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    m.receive(hello(), 0.0)
    m.identify(at)
    return m


@pytest.mark.parametrize("d", [False, True])
def test_op9_answering_our_identify_tells_the_limiter(d: bool) -> None:
    m = identifying(10.0)
    acts = m.receive(frame(9, d), 10.25)
    assert one(acts, IdentifyRejected) == IdentifyRejected(0.25)
    assert emitted(acts)[0] == "INVALID_SESSION"
    assert not one(acts, Reconnect).resume  # and it IDENTIFYs again through the limiter


def test_op9_long_after_identify_or_after_ready_is_not_about_the_identify() -> None:
    m = identifying(10.0)
    late = m.receive(frame(9, False), 10.0 + IDENTIFY_REJECT_WINDOW + 0.5)
    assert not [a for a in late if isinstance(a, IdentifyRejected)]
    m = new_machine()
    connect_ready(m)
    acts = m.receive(frame(9, False), 0.5)
    assert not [a for a in acts if isinstance(a, IdentifyRejected)]


# ---------------------------------------------------------------- close codes


@pytest.mark.parametrize("code", [*sorted(CLOSE_CODES), 1006, 4006, 4999, None])
def test_every_close_code_is_classified(code: int | None) -> None:
    m = new_machine(intents=Intents.GUILDS | Intents.GUILD_MEMBERS)
    connect_ready(m)
    acts = m.closed(code, "", 1.0)
    action = CLOSE_CODES[code].action if code in CLOSE_CODES else CloseAction.RESUME
    assert not any(isinstance(a, Close) for a in acts)  # the socket is already gone
    assert emitted(acts) == ["DISCONNECT"]
    if action is CloseAction.FATAL:
        err = one(acts, Fatal).error
        assert isinstance(err, GatewayFatalError) and err.code == code
        assert m.state is ShardState.CLOSED
        assert not any(isinstance(a, Reconnect) for a in acts)
    elif action is CloseAction.RESUME:
        assert one(acts, Reconnect).resume and m.session_id == "sess-1"
    else:
        assert not one(acts, Reconnect).resume and m.session_id is None


@pytest.mark.parametrize(("code", "kind"), [
    (4004, AuthenticationError), (4010, ShardingError), (4011, ShardingError),
    (4012, GatewayFatalError), (4013, InvalidIntentsError), (4014, DisallowedIntentsError),
])
def test_fatal_close_raises_named_error_without_token(code: int, kind: type[Exception]) -> None:
    m = new_machine()
    connect_ready(m)
    err = one(m.closed(code, "", 1.0), Fatal).error
    assert type(err) is kind
    assert TOKEN not in str(err) and TOKEN not in repr(err)
    assert str(code) in str(err)


def test_4004_says_the_token_was_rejected() -> None:
    m = new_machine()
    m.start(0.0)
    m.opened(0.0)
    err = one(m.closed(4004, "Authentication failed.", 0.0), Fatal).error
    assert "token" in str(err) and "4004" in str(err)


def test_4014_names_privileged_intents_and_the_portal_switch() -> None:
    intents = Intents.GUILDS | Intents.GUILD_MEMBERS | Intents.MESSAGE_CONTENT
    m = new_machine(intents=intents)
    m.start(0.0)
    m.opened(0.0)
    err = one(m.closed(4014, "", 0.0), Fatal).error
    assert isinstance(err, DisallowedIntentsError)
    assert "GUILD_MEMBERS" in str(err) and "MESSAGE_CONTENT" in str(err)
    assert "GUILD_PRESENCES" not in str(err)
    assert "Privileged Gateway Intents" in str(err) and "Developer Portal" in str(err)
    assert set(err.intents) == {"GUILD_MEMBERS", "MESSAGE_CONTENT"}


def test_close_after_our_own_close_is_ignored() -> None:
    m = new_machine()
    connect_ready(m)
    m.receive(frame(7), 1.0)
    assert m.closed(4000, "", 1.1) == []


def test_auto_reconnect_off_stops_after_a_drop() -> None:
    m = new_machine(auto_reconnect=False)
    connect_ready(m)
    acts = m.closed(None, "", 1.0)
    assert isinstance(acts[-1], Stop) and m.state is ShardState.CLOSED
    assert m.session_id == "sess-1"  # still resumable by a later start()
    assert m.start(2.0).resume


# ---------------------------------------------------------------- backoff


def test_backoff_grows_over_failed_connects_and_resets_after_ready() -> None:
    m = new_machine()
    connect_ready(m)
    delays = [one(m.closed(None, "", 1.0), Reconnect).delay]
    for _ in range(5):
        delays.append(one(m.connect_failed("refused", 1.0), Reconnect).delay)
    # attempt n waits at least half of first * 2**n: exponential, never a hot loop
    assert delays[0] <= BACKOFF_FIRST
    assert all(d >= BACKOFF_FIRST * 2 ** n / 2 for n, d in enumerate(delays) if n)
    m.opened(2.0)
    sent = m.receive(hello(), 2.0)  # failed connects never cost the session: RESUME
    assert [a.op for a in sends(sent)] == [Op.RESUME]
    m.receive(dispatch("RESUMED", None, 2), 2.0)
    assert one(m.closed(None, "", 3.0), Reconnect).delay <= BACKOFF_FIRST


def test_failed_resume_connects_keep_the_session_and_try_the_connect_url() -> None:
    m = new_machine()
    connect_ready(m)
    plan = one(m.closed(None, "", 1.0), Reconnect)
    assert plan.resume and plan.url.startswith("ws://resume.example/")
    for _ in range(3):
        plan = one(m.connect_failed("refused", 1.0), Reconnect)
    # A gateway outage must not spend an IDENTIFY: still RESUME, via the connect URL.
    assert plan.resume and m.session_id == "sess-1"
    assert plan.url.startswith("ws://gw.example/")


# ---------------------------------------------------------------- commands and limits


def test_commands_refused_until_ready() -> None:
    m = new_machine()
    m.start(0.0)
    m.opened(0.0)
    m.receive(hello(), 0.0)
    result = m.command(b'{"op":3,"d":{}}', 0.0, op=3)
    assert isinstance(result, Refused) and "not connected" in result.reason


def test_rate_limit_keeps_room_for_heartbeats() -> None:
    m = new_machine()
    connect_ready(m)
    now = 0.001
    sent = 0
    while isinstance(m.command(b'{"op":8,"d":{}}', now, op=8), Send):
        sent += 1
        assert sent <= 120
    assert 100 <= sent <= 115  # ~10 slots kept back (protocol §9)
    refused = m.command(b'{"op":8,"d":{}}', now, op=8)
    assert isinstance(refused, Refused) and refused.retry_after is not None
    assert refused.retry_after > 0
    assert sends(m.receive(frame(1), now), Op.HEARTBEAT)  # a beat still goes out


def test_presence_limited_to_5_per_20_s() -> None:
    m = new_machine()
    connect_ready(m)
    results = [m.command(b'{"op":3}', 1.0 + i * 0.1, op=3) for i in range(6)]
    assert all(isinstance(r, Send) for r in results[:5])
    assert isinstance(results[5], Refused) and "5 per 20" in results[5].reason
    assert isinstance(m.command(b'{"op":3}', 21.5, op=3), Send)


def test_heartbeats_wait_for_a_slot_rather_than_overflow() -> None:
    m = new_machine()
    connect_ready(m)
    for i in range(200):  # the server asks for far more beats than the limit allows
        m.receive(frame(1), 0.01 + i * 0.001)
        m.receive(ACK, 0.01 + i * 0.001)
    deadline = m.next_deadline()
    assert deadline is not None and deadline > 0.3


# ---------------------------------------------------------------- disconnect / shutdown


def test_disconnect_4009_keeps_session_and_resumes() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.disconnect(4009, "requested", 1.0)
    assert one(acts, Close) == Close(4009, "requested")
    assert one(acts, Reconnect).resume


def test_disconnect_1000_ends_session_and_reidentifies() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.disconnect(1000, "bye", 1.0)
    assert one(acts, Close).code == 1000
    assert not one(acts, Reconnect).resume and m.session_id is None


def test_shutdown_never_reconnects_and_later_start_resumes() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.shutdown(4009, "shutdown", 1.0)
    assert isinstance(acts[0], Close) and isinstance(acts[-1], Stop)
    assert not any(isinstance(a, Reconnect) for a in acts)
    assert m.state is ShardState.CLOSED and m.next_deadline() is None
    assert m.shutdown(4009, "again", 1.0) == []
    plan = m.start(5.0)
    assert plan.resume and plan.url == RESUME_URL and plan.delay == 0.0


def test_shutdown_1000_forgets_session() -> None:
    m = new_machine()
    connect_ready(m)
    m.shutdown(1000, "done", 1.0)
    assert m.session_id is None and not m.start(2.0).resume


def test_shutdown_while_waiting_to_reconnect() -> None:
    m = new_machine()
    connect_ready(m)
    m.closed(None, "", 1.0)
    assert m.shutdown(4009, "stop", 1.5) == [Stop("stop")]
    assert m.state is ShardState.CLOSED


# ---------------------------------------------------------------- payloads, seq, inflater


def test_seq_tracks_newest_non_null_s() -> None:
    m = new_machine()
    connect_ready(m)
    for s in (2, 3, 7):
        m.receive(dispatch("MESSAGE_CREATE", {}, s), 0.0)
    m.receive(frame(11), 0.0)  # ACK: no s
    assert m.seq == 7


def test_dispatches_and_lifecycle_in_order() -> None:
    m = new_machine()
    m.start(0.0)
    m.opened(0.0)
    m.receive(hello(), 0.0)
    m.identify(0.0)
    acts = m.receive(ready(), 0.0)
    assert emitted(acts) == ["READY", "SHARD_READY"]
    ready_emit = acts[0]
    assert isinstance(ready_emit, Emit) and ready_emit.frame is not None
    assert ready_emit.frame.s == 1


def test_corrupt_frame_closes_and_resumes() -> None:
    m = new_machine()
    connect_ready(m)
    acts = m.receive(b"not json", 1.0)
    assert one(acts, Close).code == RECONNECT_CLOSE_CODE
    assert one(acts, Reconnect).resume


def test_a_zstd_frame_asking_for_a_huge_window_is_a_broken_connection_not_a_crash() -> None:
    zstandard = pytest.importorskip("zstandard")
    m = new_machine(compression="zstd-stream")
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    params = zstandard.ZstdCompressionParameters(window_log=27)  # 128 MiB
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    acts = m.receive(c.compress(hello()) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), 0.0)
    assert one(acts, Close).code == RECONNECT_CLOSE_CODE
    assert one(acts, Reconnect)


def _zlib_messages(*payloads: bytes) -> list[bytes]:
    c = zlib.compressobj()
    return [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in payloads]


def test_fresh_zlib_inflater_on_every_connection_including_resume() -> None:
    m = new_machine(compression="zlib-stream")
    m.start(0.0)
    m.use_gateway("ws://gw.example/")
    m.opened(0.0)
    msgs = _zlib_messages(hello(), ready())
    assert m.receive(msgs[0], 0.0) == [NeedIdentify()]
    m.identify(0.0)
    assert emitted(m.receive(msgs[1], 0.0)) == ["READY", "SHARD_READY"]
    m.closed(None, "", 1.0)
    m.opened(2.0)  # a new server compressor: our old inflater would fail on it
    msgs = _zlib_messages(hello(), dispatch("RESUMED", {}, 2))
    assert sends(m.receive(msgs[0], 2.0), Op.RESUME)
    assert emitted(m.receive(msgs[1], 2.0)) == ["RESUMED", "SHARD_RESUMED"]


def test_zlib_payload_split_over_messages() -> None:
    m = new_machine(compression="zlib-stream")
    m.start(0.0)
    m.opened(0.0)
    [whole] = _zlib_messages(hello())
    assert m.receive(whole[:5], 0.0) == []
    assert m.receive(whole[5:], 0.0) == [NeedIdentify()]


def test_invalid_configuration_fails_at_construction() -> None:
    with pytest.raises(PayloadError):
        new_machine(large_threshold=10)
    with pytest.raises(ValueError, match="compression"):
        new_machine(compression="brotli")


def test_repr_never_shows_token() -> None:
    m = new_machine()
    connect_ready(m)
    assert TOKEN not in repr(m)


def test_gateway_url_replaces_query_and_keeps_path() -> None:
    assert gateway_url("wss://gateway.discord.gg", "zstd-stream") == (
        "wss://gateway.discord.gg/?v=10&encoding=json&compress=zstd-stream")
    assert gateway_url("ws://h:1/resume/?v=9&x=1", None) == (
        "ws://h:1/resume/?x=1&v=10&encoding=json")
    with pytest.raises(ValueError):
        gateway_url("http://h/", None)


def ready_and_beating() -> tuple[ShardMachine, float]:
    """A READY machine (40 s heartbeat) that has just sent its first beat, and when."""
    m = new_machine()
    m.start(0.0)
    m.opened(0.0)
    m.receive(hello(40_000), 0.0)
    m.identify(0.0)
    m.receive(ready(), 0.01)
    beat_at = m.next_deadline()
    assert beat_at is not None
    assert sends(m.tick(beat_at), Op.HEARTBEAT)
    return m, beat_at


def test_a_late_ack_makes_a_zombie_before_the_next_beat_is_due() -> None:
    m, beat_at = ready_and_beating()
    m.receive(b'{"op":11,"d":null,"s":null,"t":null}', beat_at + 0.05)  # answered: healthy
    second = beat_at + 40.0
    assert m.next_deadline() == pytest.approx(second)
    assert sends(m.tick(second), Op.HEARTBEAT)
    # Unanswered: the ACK timeout (7.5 % of 40 s = 3 s) comes long before the next beat.
    assert m.next_deadline() == pytest.approx(second + 3.0)
    assert m.tick(second + 2.99) == []
    acts = list(m.tick(second + 3.0))
    assert one(acts, Close).code == ZOMBIE_CLOSE_CODE
    assert one(acts, Reconnect).resume


def test_an_invalid_ack_timeout_is_refused() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="heartbeat_ack_timeout"):
            new_machine(heartbeat_ack_timeout=bad)


def test_dispatches_after_an_unanswered_beat_defer_the_zombie_to_the_next_beat() -> None:
    # A client reading slower than the gateway sends sees the ACK late, behind data: that
    # connection is alive, and only the protocol's rule may end it.
    m, beat_at = ready_and_beating()
    m.receive(dispatch("TYPING_START", {}, 2), beat_at + 1.0)
    assert m.next_deadline() == pytest.approx(beat_at + 40.0)
    assert m.tick(beat_at + 3.5) == []
    acts = list(m.tick(beat_at + 40.0))
    assert one(acts, Close).code == ZOMBIE_CLOSE_CODE
