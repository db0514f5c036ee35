"""Control messages over the per-message limit travel in parts and arrive whole."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import zmq.asyncio

from shardctl.errors import ProtocolError
from shardctl.ipc.control import (
    MAX_BODY_BYTES,
    MAX_PENDING,
    PART_BYTES,
    ControlClient,
    ControlMessage,
    ControlServer,
    Reassembler,
    decode,
    encode_parts,
)

pytestmark = pytest.mark.anyio


def state_report(shards: int) -> dict[str, Any]:
    """What a worker running ``shards`` shards reports every beat (worker/process.py)."""
    counts = {f"EVENT_TYPE_{i:02d}": 123_456 for i in range(24)}
    return {"pid": 4242, "shards": [{
        "id": i, "state": "ready", "session_id": "f" * 32,
        "resume_gateway_url": "wss://gateway-us-east1-b.discord.gg", "seq": 1_234_567,
        "latency": 0.0412, "guilds": 1000, "last_event": 1_767_000_000.123,
        "error": None, "counts": counts} for i in range(shards)]}


def members(count: int) -> dict[str, Any]:
    """A fetch_guild_members reply, with text that is not ASCII (base64 must not care)."""
    return {"id": "c0ffee", "ok": True, "error": None, "value": [
        {"user": {"id": str(10**17 + i), "username": f"мember{i:05d}",
                  "global_name": f"Member {i} 🎉"}, "roles": [], "nick": None}
        for i in range(count)]}


@asynccontextmanager
async def pair(tmp_path: Path) -> AsyncIterator[tuple[ControlServer, ControlClient]]:
    context = zmq.asyncio.Context()
    server = ControlServer(f"ipc://{tmp_path}/control", context=context)
    client = ControlClient(server.endpoint, context=context)
    try:
        yield server, client
    finally:
        client.close()
        server.close()
        context.term()


async def test_a_state_report_of_1500_shards_arrives_whole(tmp_path: Path) -> None:
    body = state_report(1500)
    assert len(orjson.dumps(body)) > MAX_BODY_BYTES
    parts = Reassembler()
    async with pair(tmp_path) as (server, client):
        with anyio.fail_after(10):
            await client.send("state", body)
            await client.send("beat")
            joined: list[ControlMessage] = []
            while len(joined) < 2:
                incoming = await server.receive()
                message = parts.feed(incoming.peer, incoming.message)
                if message is not None:
                    joined.append(message)
    assert [m.kind for m in joined] == ["state", "beat"]
    assert joined[0].body == body


async def test_a_long_reply_from_the_supervisor_arrives_whole_at_the_worker(
        tmp_path: Path) -> None:
    body = members(6000)
    async with pair(tmp_path) as (server, client):
        with anyio.fail_after(10):
            await client.send("beat")
            incoming = await server.receive()
            assert server.send(incoming.peer, "status", body)
            message = await client.receive()
    assert message == ControlMessage("status", body)


def test_every_part_fits_in_one_message_and_they_join_in_order() -> None:
    body = members(9000)
    messages = encode_parts("reply", body)
    assert len(messages) == -(-len(orjson.dumps(body)) // PART_BYTES) >= 3
    assert all(len(frames[2]) <= MAX_BODY_BYTES for frames in messages)
    parts = Reassembler()
    results = [parts.feed(b"w", decode(frames)) for frames in messages]
    assert results[:-1] == [None] * (len(messages) - 1)
    assert results[-1] == ControlMessage("reply", body)


def test_a_short_message_is_one_message() -> None:
    assert len(encode_parts("state", state_report(3))) == 1


def part(index: int, count: int = 3, *, message_id: str = "m1", kind: str = "state",
         data: bytes = b'{"a":') -> ControlMessage:
    return ControlMessage("part", {"id": message_id, "kind": kind, "index": index,
                                   "count": count, "data": base64.b64encode(data).decode()})


@pytest.mark.parametrize(("parts", "match"), [
    ([part(1)], "first part never came"),
    ([part(0), part(2)], "expected part 1"),
    ([part(0, kind="part")], "unknown kind"),
    ([part(0, kind="explode")], "unknown kind"),
    ([part(0, count=1)], "count"),
    ([part(0, count=10**6)], "count"),
    ([ControlMessage("part", {"id": "m1", "kind": "state", "index": 0, "count": 2,
                              "data": "not base64!"})], "not base64"),
    ([ControlMessage("part", {"index": 0})], "valid id"),
])
def test_a_malformed_part_is_a_protocol_error_and_drops_its_message(
        parts: list[ControlMessage], match: str) -> None:
    assembler = Reassembler()
    with pytest.raises(ProtocolError, match=match):
        for message in parts:
            assembler.feed(b"w", message)
    # Whatever had arrived of that message is gone: its next part starts nothing.
    with pytest.raises(ProtocolError, match="first part never came"):
        assembler.feed(b"w", part(1))


def test_the_last_part_must_make_a_json_object() -> None:
    assembler = Reassembler()
    assert assembler.feed(b"w", part(0, 2, data=b'{"a":')) is None
    with pytest.raises(ProtocolError, match="not JSON"):
        assembler.feed(b"w", part(1, 2, data=b"nope"))


def test_unfinished_messages_are_bounded_per_sender_and_forgotten_with_it() -> None:
    assembler = Reassembler()
    for n in range(MAX_PENDING + 1):
        assembler.feed(b"w", part(0, message_id=f"m{n}"))
    assembler.feed(b"x", part(0, message_id="m0"))
    with pytest.raises(ProtocolError, match="first part never came"):
        assembler.feed(b"w", part(1, message_id="m0"))  # the oldest of w's went
    assert assembler.feed(b"w", part(1, message_id=f"m{MAX_PENDING}")) is None
    assembler.forget(b"x")
    with pytest.raises(ProtocolError, match="first part never came"):
        assembler.feed(b"x", part(1, message_id="m0"))
