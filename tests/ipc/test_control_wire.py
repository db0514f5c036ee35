from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ProtocolError
from shardctl.ipc.control import VERSION, decode, encode


def test_round_trip() -> None:
    frames = encode("state", {"shards": [{"id": 3, "state": "ready", "seq": 42}]})
    message = decode(frames)
    assert message.kind == "state"
    assert message.body == {"shards": [{"id": 3, "state": "ready", "seq": 42}]}


def test_encode_refuses_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown control message kind"):
        encode("explode", {})


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([VERSION, b"beat"], "2 frames"),
        ([b"SC9", b"beat", b"{}"], "version"),
        ([VERSION, b"explode", b"{}"], "unknown control message kind"),
        ([VERSION, b"\xff", b"{}"], "not ASCII"),
        ([VERSION, b"beat", b"not json"], "not JSON"),
        ([VERSION, b"beat", b"[1, 2]"], "not a JSON object"),
    ],
)
def test_decode_names_what_is_wrong(frames: list[bytes], match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_decode_never_fails_other_than_protocol_error(frames: list[bytes]) -> None:
    try:
        message = decode(frames)
    except ProtocolError:
        return
    assert isinstance(message.body, dict)


@pytest.mark.anyio
async def test_server_and_client_exchange_and_drop_garbage(tmp_path: Path) -> None:
    import zmq
    import zmq.asyncio

    from shardctl.ipc.control import ControlClient, ControlServer

    context = zmq.asyncio.Context()
    server = ControlServer(f"ipc://{tmp_path}/control", context=context)
    client = ControlClient(server.endpoint, context=context)
    raw = context.socket(zmq.DEALER)
    raw.connect(server.endpoint)
    try:
        with anyio.fail_after(5):
            await raw.send_multipart([b"garbage"])
            await client.send("register", {"worker": 0, "secret": "ab" * 32})
            incoming = await server.receive()
            assert incoming.message.kind == "register"
            assert incoming.message.body == {"worker": 0, "secret": "ab" * 32}
            assert incoming.role == "operator"  # this user, on the private ipc endpoint
            assert server.send(incoming.peer, "assign", {"shards": [0, 1]})
            reply = await client.receive()
            assert reply.kind == "assign"
            assert reply.body["shards"] == [0, 1]
            assert not server.send(b"no-such-peer", "beat")
            assert server.drops == 1
    finally:
        raw.close(linger=0)
        client.close()
        server.close()
        context.term()


@pytest.mark.anyio
async def test_sends_to_a_peer_that_never_reads_are_dropped_not_blocked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Issue 12 item 4: with ROUTER_MANDATORY a full queue made the send raise zmq.Again
    # in the supervisor's loop.  Now it is a drop: counted, logged once, never raised.
    import zmq
    import zmq.asyncio

    from shardctl.ipc.control import ControlServer

    context = zmq.asyncio.Context()
    server = ControlServer(f"ipc://{tmp_path}/control", context=context)
    mute = context.socket(zmq.DEALER)
    mute.setsockopt(zmq.RCVHWM, 1)
    mute.connect(server.endpoint)
    body = {"shards": [{"id": i, "state": "ready"} for i in range(50)]}
    try:
        with anyio.fail_after(5):
            await mute.send_multipart(encode("status"))
            peer = (await server.receive()).peer
        sent = 0
        while server.send(peer, "status", body):
            sent += 1
            assert sent < 1_000_000, "the peer's queue never filled"
        for _ in range(100):
            assert not server.send(peer, "status", body)
        assert server.drops == 101
        logged = [r for r in caplog.records if "dropped a status message" in r.getMessage()]
        assert len(logged) == 1
    finally:
        mute.close(linger=0)
        server.close()
        context.term()
