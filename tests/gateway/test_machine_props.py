"""Property: any sequence of frames, ticks, closes and user calls keeps the machine's invariants.

- after ``tick(now)``, ``next_deadline()`` is None or strictly later than ``now``;
- never two timer beats on one connection without an ACK in between (the second is a zombie);
- no IDENTIFY without a NeedIdentify round trip on the current connection, at most one each;
- never a RESUME without a session; never a client close with 1000/1001 unless asked;
- nothing but an explicit start() follows a Fatal or Stop; every transition is in the table.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from machinekit import ACK, dispatch, frame, hello, new_machine, ready

from shardctl.gateway.machine import (
    Action,
    Close,
    Fatal,
    NeedIdentify,
    Reconnect,
    Send,
    ShardState,
    Stop,
)
from shardctl.gateway.opcodes import Op

MESSAGES: dict[str, bytes] = {
    "hello": hello(1000),
    "ack": ACK,
    "op1": frame(1),
    "op7": frame(7),
    "op9t": frame(9, True),
    "op9f": frame(9, False),
    "ready": ready(),
    "resumed": dispatch("RESUMED", {}, 5),
    "dispatch": dispatch("MESSAGE_CREATE", {"id": "1"}, 3),
    "garbage": b"\x00not json",
    "unknown_op": frame(42, {"x": 1}),
}
CODES = [None, 1000, 1006, 4000, 4001, 4004, 4007, 4008, 4009, 4011, 4014, 4900]

# (weight, kind, arguments): ordinary traffic is common and disruptions rare, so runs get
# deep into sessions (heartbeats, resumes) before something breaks them.
TABLE: list[tuple[int, str, list[Any]]] = [
    (25, "advance", []),
    (10, "open", ["hello"]),  # a real server sends HELLO first ...
    (1, "open", [None]),      # ... almost always (op 7 may come before it)
    (10, "identify", ["ready", None]),  # the server usually answers with READY
    (5, "recv", ["hello"]),
    (15, "recv", ["ack"]),
    (8, "recv", ["dispatch"]),
    (4, "recv", ["op1"]),
    (4, "recv", ["ready"]),
    (3, "recv", ["resumed"]),
    (5, "recv", ["op7", "op9t", "op9f", "garbage", "unknown_op"]),
    (2, "fail", [None]),
    (3, "closed", CODES),
    (2, "disconnect", [1000, 4000, 4009]),
    (1, "shutdown", [1000, 4009]),
    (2, "start", [None]),
    (6, "command", [3, 4, 8]),
]
KINDS: list[tuple[str, list[Any]]] = [(k, a) for w, k, a in TABLE for _ in range(w)]


def _step(pick: tuple[str, list[Any]], choice: int, dt: float) -> tuple[str, Any]:
    kind, args = pick
    return (kind, dt) if kind == "advance" else (kind, args[choice % len(args)])


step = st.builds(_step, st.sampled_from(KINDS), st.integers(0, 1000), st.floats(0.0, 1.5))

class Driver:
    """A fake driver that only does what a real one may do, and checks every action."""

    def __init__(self, seed: int, auto_reconnect: bool) -> None:
        self.m = new_machine(rng=random.Random(seed), auto_reconnect=auto_reconnect,
                             receive_timeout=10.0)
        self.now = 0.0
        self.plan: Reconnect | None = None
        self.identify_asked = False
        self.acked_since_timer_beat = True
        self.finished = True  # until start()
        self.user_close: int | None = None
        self.session_dead = True  # no READY yet, or Discord/the user ended the session

    def check(self, actions: list[Action], *, source: str, session_before: str | None) -> None:
        if self.finished:
            assert actions == [], f"{source} after Fatal/Stop: {actions}"
        for a in actions:
            if isinstance(a, Send):
                if a.op == Op.IDENTIFY:
                    assert source == "identify" and self.identify_asked
                    self.identify_asked = False
                if a.op == Op.RESUME:
                    assert session_before is not None and not self.session_dead
                if a.op == Op.HEARTBEAT and source == "tick":
                    assert self.acked_since_timer_beat, "two timer beats without an ACK"
                    self.acked_since_timer_beat = False
            elif isinstance(a, NeedIdentify):
                self.identify_asked = True
            elif isinstance(a, Close):
                if a.code in (1000, 1001):
                    assert source in ("disconnect", "shutdown") and a.code == self.user_close
                self.identify_asked = False
            elif isinstance(a, Reconnect):
                assert a.delay >= 0.0
                if a.resume:
                    assert self.m.session_id is not None
                self.plan = a
            elif isinstance(a, (Fatal, Stop)):
                self.finished = True
                self.plan = None
                assert self.m.state is ShardState.CLOSED
        if any(isinstance(a, (Close, Fatal, Stop, Reconnect)) for a in actions):
            self.identify_asked = False

    def do(self, kind: str, arg: Any) -> None:
        m = self.m
        session_before = m.session_id
        actions: list[Action] = []
        source = kind
        self.user_close = None
        if kind == "advance":
            self.now += arg
            deadline = m.next_deadline()
            if deadline is not None and deadline <= self.now:
                actions = m.tick(self.now)
                source = "tick"
                after = m.next_deadline()
                assert after is None or after > self.now
        elif kind == "recv":
            if not m.socket_open:
                return
            if arg == "ack":
                self.acked_since_timer_beat = True
            if arg == "op9f" or (arg == "ready" and m.state is ShardState.IDENTIFYING):
                self.session_dead = arg == "op9f"
            actions = m.receive(MESSAGES[arg], self.now)
        elif kind == "identify":
            actions = m.identify(self.now)
            if arg == "ready" and actions:
                self.check(actions, source=source, session_before=session_before)
                self.session_dead = False
                actions = m.receive(MESSAGES["ready"], self.now)
        elif kind == "open":
            if self.plan is None or m.socket_open:
                return
            self.plan = None
            actions = m.opened(self.now)
            self.identify_asked = False
            self.acked_since_timer_beat = True
            if arg == "hello":
                self.check(actions, source=source, session_before=session_before)
                actions = m.receive(MESSAGES["hello"], self.now)
        elif kind == "fail":
            if self.plan is None or m.socket_open:
                return
            self.plan = None
            actions = m.connect_failed("refused", self.now)
        elif kind == "closed":
            if not m.socket_open:
                return
            if arg in (4001, 4003, 4007, 4009):  # protocol §7: these need a new session
                self.session_dead = True
            actions = m.closed(arg, "", self.now)
        elif kind in ("disconnect", "shutdown"):
            self.user_close = arg
            if arg in (1000, 1001):  # the client ended the session (protocol §7)
                self.session_dead = True
            actions = getattr(m, kind)(arg, "user", self.now)
        elif kind == "start":
            if m.state is not ShardState.CLOSED:
                return
            self.finished = False
            actions = [m.start(self.now)]
        elif kind == "command":
            result = m.command(b'{"op":%d,"d":{}}' % arg, self.now, op=arg)
            if isinstance(result, Send):
                assert m.state is ShardState.READY and m.socket_open
            return
        self.check(actions, source=source, session_before=session_before)
        if m.state is ShardState.CLOSED:
            assert m.next_deadline() is None


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.booleans(), st.lists(step, min_size=30, max_size=120))
def test_any_sequence_keeps_invariants(seed: int, auto: bool, steps: list[Any]) -> None:
    driver = Driver(seed, auto)
    driver.do("start", None)
    driver.m.use_gateway("ws://gw.example/")
    for kind, arg in steps:
        driver.do(kind, arg)
