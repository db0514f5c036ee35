"""Helpers for driving a ShardMachine by hand in tests: server frames and a fake clock."""

from __future__ import annotations

import random
from typing import Any

import orjson

from shardctl.gateway.machine import (
    Action,
    Close,
    Emit,
    NeedIdentify,
    Reconnect,
    Send,
    ShardMachine,
)

TOKEN = "test-token-abc.def.ghi"
HB_MS = 1000


def frame(op: int, d: Any = None, s: int | None = None, t: str | None = None) -> bytes:
    return orjson.dumps({"op": op, "d": d, "s": s, "t": t})


def hello(ms: int = HB_MS) -> bytes:
    return frame(10, {"heartbeat_interval": ms})


def dispatch(t: str, d: Any, s: int) -> bytes:
    return frame(0, d, s, t)


def ready(s: int = 1, session_id: str = "sess-1",
          resume: str = "ws://resume.example/") -> bytes:
    return dispatch("READY", {"v": 10, "session_id": session_id, "resume_gateway_url": resume,
                              "user": {"id": "1"}, "guilds": []}, s)


ACK = frame(11)


def new_machine(**kw: Any) -> ShardMachine:
    args: dict[str, Any] = {"shard_id": 0, "shard_count": 1, "token": TOKEN, "intents": 513,
                            "rng": random.Random(7), "compression": None}
    args.update(kw)
    return ShardMachine(**args)


def sends(actions: list[Action], op: int | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (op is None or a.op == op)]


def sent_json(action: Send) -> Any:
    return orjson.loads(action.data)


def one(actions: list[Action], kind: type[Any]) -> Any:
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {actions}"
    return found[0]


def emitted(actions: list[Action]) -> list[str]:
    return [a.name for a in actions if isinstance(a, Emit)]


def connect_ready(m: ShardMachine, now: float = 0.0, gateway: str = "ws://gw.example/") -> float:
    """start → open → HELLO → identify → READY; returns the clock afterwards."""
    plan = m.start(now)
    assert isinstance(plan, Reconnect) and not plan.resume
    m.use_gateway(gateway)
    m.opened(now)
    acts = m.receive(hello(), now)
    assert acts == [NeedIdentify()]
    ident = m.identify(now)
    assert [a.op for a in sends(ident)] == [2]
    m.receive(ready(), now)
    return now


def reopen(m: ShardMachine, plan: Reconnect, now: float) -> list[Action]:
    """Follow a Reconnect: open the socket and deliver HELLO."""
    m.opened(now)
    return m.receive(hello(), now)


__all__ = ["ACK", "HB_MS", "TOKEN", "Close", "connect_ready", "dispatch", "emitted", "frame",
           "hello", "new_machine", "one", "ready", "reopen", "sends", "sent_json"]
