"""Typed control messages: the bytes on the wire are exactly what the dict bodies were."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc.assignment import Assignment, ShardAssignment
from shardctl.ipc.control import KINDS, decode, encode, encode_parts
from shardctl.ipc.control_messages import (
    Assign,
    Beat,
    Command,
    ControlKind,
    Generic,
    Message,
    Operation,
    OperationUpdate,
    Rebase,
    Register,
    Reply,
    ReportNow,
    Request,
    Response,
    ShardReport,
    State,
    StatusQuery,
    Stop,
    parse,
    to_wire,
)

ASSIGNMENT = Assignment(
    token="t0k", gateway_url="wss://gateway.example/", shard_count=4, intents=513,
    compression="zlib-stream", limiter="ipc:///run/limiter.sock", events="ipc:///run/in.sock",
    shards=(ShardAssignment(0, "abc", "wss://resume.example/", 41), ShardAssignment(1)),
    worker=2, publish_key=bytes(range(32)), publish_window=0.002, epoch=0xC0FFEE,
    counters=((b"MESSAGE_CREATE\0\x01\x00\x00\x00\x00", 41), (b"READY\0\x01\x00\x00\x00\x01", 1)))

MC_KEY = b"MESSAGE_CREATE\0\x01\x00\x00\x00\x00"
REPORT = ShardReport(3, "ready", "abc", "wss://resume.example/", 42, 0.041, 7, 1700000000.5,
                     None, {"MESSAGE_CREATE": 5})

#: (typed message, who receives it, the body exactly as the call sites built it before)
CASES: list[tuple[Message, ControlKind, str, dict[str, Any]]] = [
    (Register(0, "ab" * 32), "peer", "register", {"worker": 0, "secret": "ab" * 32}),
    (Register(None, pid=4242), "peer", "register", {"worker": None, "pid": 4242}),
    (Beat(), "peer", "beat", {}),
    (Beat(), "supervisor", "beat", {}),
    (State((REPORT,), 4242), "peer", "state", {"pid": 4242, "shards": [{
        "id": 3, "state": "ready", "session_id": "abc",
        "resume_gateway_url": "wss://resume.example/", "seq": 42, "latency": 0.041,
        "guilds": 7, "last_event": 1700000000.5, "error": None,
        "counts": {"MESSAGE_CREATE": 5}}]}),
    (Reply("c1", True, None, None, {"members": [1]}), "peer", "reply",
     {"id": "c1", "ok": True, "error": None, "retry_after": None, "value": {"members": [1]}}),
    (Assign(ASSIGNMENT), "supervisor", "assign", ASSIGNMENT.to_body()),
    (Command("c1", 3, "update_status", {"presence": {"status": "idle"}}), "supervisor",
     "command", {"id": "c1", "shard": 3, "name": "update_status",
                 "args": {"presence": {"status": "idle"}}}),
    (Stop(4009), "supervisor", "stop", {"code": 4009}),
    (ReportNow(), "supervisor", "report", {}),
    (Rebase(3, ((MC_KEY, -2),)), "supervisor", "rebase",
     {"generation": 3, "deltas": [[MC_KEY.hex(), -2]]}),
    (StatusQuery(), "peer", "status", {}),
    (Generic("status", {"shards": [], "workers": [], "summary": {}}), "supervisor", "status",
     {"shards": [], "workers": [], "summary": {}}),
    (Request("r1", "update_status", {"presence": {}}), "peer", "request",
     {"id": "r1", "name": "update_status", "args": {"presence": {}}}),
    (Response("r1", False, "refused: no"), "supervisor", "response",
     {"id": "r1", "ok": False, "error": "refused: no", "replies": []}),
    (Response("r1", True, None, ({"shard": 0, "ok": True},)), "supervisor", "response",
     {"id": "r1", "ok": True, "error": None, "replies": [{"shard": 0, "ok": True}]}),
    (Response("r1", True, None, result={"shards": 8}), "supervisor", "response",
     {"id": "r1", "ok": True, "error": None, "replies": [], "result": {"shards": 8}}),
    (Operation("o1", "drain", {"worker": 0}), "peer", "operation",
     {"id": "o1", "name": "drain", "args": {"worker": 0}}),
    (OperationUpdate("o1", False, {"phase": "spawn"}), "supervisor", "operation",
     {"id": "o1", "done": False, "progress": {"phase": "spawn"}}),
    (OperationUpdate("o1", True, {"phase": "done"}), "supervisor", "operation",
     {"id": "o1", "done": True, "ok": True, "error": None, "progress": {"phase": "done"}}),
    (OperationUpdate("o1", True, None, False, "refused"), "supervisor", "operation",
     {"id": "o1", "done": True, "ok": False, "error": "refused", "progress": None}),
]


@pytest.mark.parametrize(("message", "receiver", "kind", "body"), CASES)
def test_a_typed_message_has_the_bytes_of_its_dict_body(
        message: Message, receiver: ControlKind, kind: str, body: dict[str, Any]) -> None:
    assert encode(*to_wire(message)) == encode(kind, body)


@pytest.mark.parametrize(("message", "receiver", "kind", "body"), CASES)
def test_a_received_message_parses_back_to_its_typed_value(
        message: Message, receiver: ControlKind, kind: str, body: dict[str, Any]) -> None:
    received = decode(encode(kind, body))
    # the operator tools' kinds are judged where they are served: handed over as bodies
    expected = Generic(kind, body) if kind in {"request", "response", "operation"} else message
    assert parse(received.kind, received.body, sender=receiver) == expected


def test_every_kind_of_the_channel_has_a_byte_identity_case() -> None:
    # "part" is the codec's own: a long message of any kind, split (next test).
    assert {kind for _, _, kind, _ in CASES} == KINDS - {"part"}


def test_a_long_typed_message_travels_in_the_same_parts_as_its_dict_body() -> None:
    reports = tuple(ShardReport(i, "ready", "s" * 40, "wss://r/", i) for i in range(12000))
    kind, body = to_wire(State(reports, 1))
    typed = [frames[2] for frames in encode_parts(kind, body)]
    assert len(typed) > 1
    plain = [frames[2] for frames in encode_parts("state", orjson.loads(orjson.dumps(body)))]
    assert [orjson.loads(p)["data"] for p in typed] == [orjson.loads(p)["data"] for p in plain]


@pytest.mark.parametrize(("kind", "body", "receiver", "match"), [
    ("register", {"worker": "zero"}, "peer", "'register': field 'worker' must be an integer"),
    ("register", {"worker": True}, "peer", "field 'worker' must be an integer"),
    ("register", {"worker": 0, "secret": 7}, "peer", "field 'secret' must be a string"),
    ("state", {"shards": {}}, "peer", "'state': field 'shards' must be a list"),
    ("state", {"shards": [7]}, "peer", "each of 'shards' must be an object"),
    ("state", {"shards": [{"id": "3", "state": "ready"}]}, "peer",
     "field 'id' must be an integer"),
    ("state", {"shards": [{"id": 3}]}, "peer", "field 'state' must be a string"),
    ("state", {"shards": [{"id": 3, "state": "ready", "error": "x"}]}, "peer",
     "field 'error' must be an object"),
    ("reply", {"id": "c", "ok": 1}, "peer", "'reply': field 'ok' must be true or false"),
    ("command", {"id": "c", "name": "x", "args": []}, "supervisor",
     "'command': field 'args' must be an object"),
    ("assign", {"shards": []}, "supervisor", "'assign'"),
    ("assign", {**ASSIGNMENT.to_body(), "publish_window": 0.5}, "supervisor",
     "publish_window 0.5 is not 0-0.1 s"),
    ("assign", {**ASSIGNMENT.to_body(), "publish_window": "2ms"}, "supervisor",
     "publish_window '2ms'"),
    ("assign", {**ASSIGNMENT.to_body(), "epoch": -1}, "supervisor", "epoch -1 is not a u32"),
    ("rebase", {"generation": 256, "deltas": []}, "supervisor", "'generation' must be 0-255"),
    ("rebase", {"generation": 1}, "supervisor", "'deltas' must be a list"),
    ("rebase", {"generation": 1, "deltas": [["41", 1]]}, "supervisor", "not a counter key"),
    ("rebase", {"generation": 1, "deltas": [[MC_KEY.hex(), "1"]]}, "supervisor",
     "must be a \\[key, delta\\] pair"),
    ("assign", {**ASSIGNMENT.to_body(), "counters": [["zz", 1]]}, "supervisor",
     "counters key is not hex"),
    ("assign", {**ASSIGNMENT.to_body(), "counters": [["4100", 1]]}, "supervisor",
     "is not a counter key"),
    ("assign", {**ASSIGNMENT.to_body(), "counters": [[b"A\0\x01\0\0\0\0".hex(), -2]]},
     "supervisor", "is not a counter key and a bus_seq"),
    ("assign", {**ASSIGNMENT.to_body(), "counters": [1]}, "supervisor",
     "not a \\[key, bus_seq\\] pair"),
])
def test_a_malformed_message_is_one_line_naming_kind_and_field(
        kind: str, body: dict[str, Any], receiver: ControlKind, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as caught:
        parse(kind, body, sender=receiver)
    assert "\n" not in str(caught.value)


def test_a_stop_with_an_unreadable_code_is_still_a_stop() -> None:
    assert parse("stop", {"code": "soon"}, sender="supervisor") == Stop(None)
    assert parse("stop", {}, sender="supervisor") == Stop(None)


def test_a_registration_secret_stays_out_of_the_repr() -> None:
    assert "ab" * 32 not in repr(Register(0, "ab" * 32))


@given(st.one_of(st.none(), st.integers(0, 1 << 20)), st.text(max_size=70),
       st.integers(1, 1 << 22))
def test_any_registration_round_trips(worker: int | None, secret: str, pid: int) -> None:
    message = Register(worker, secret) if worker is not None else Register(None, pid=pid)
    received = decode(encode(*to_wire(message)))
    assert parse(received.kind, received.body, sender="peer") == message
