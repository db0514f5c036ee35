"""Peers that are not who they claim to be, against a real limiter service (issue 12, item 3).

A stranger speaks the SL1 wire format from a raw DEALER: it may not change the pace
(``configure``) and may not take, or cancel, another client's grants by reusing its id.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
import zmq
import zmq.asyncio
from limiterkit import serving
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.errors import ConfigurationError
from shardctl.gateway.limits import Limits
from shardctl.ipc.limiter import LimiterClient, LimiterRefusedError, LimiterUnavailableError
from shardctl.ipc.security import generate_keys, load_client, load_server

pytestmark = pytest.mark.anyio

INTERVAL = 0.1


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sla-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


class Stranger:
    """A raw DEALER speaking SL1 by hand."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.seen: list[tuple[bytes, dict[str, Any]]] = []

    async def send(self, kind: bytes, body: dict[str, Any]) -> None:
        await self.sock.send_multipart([b"SL1", kind, orjson.dumps(body)])

    async def answer(self, *kinds: bytes, within: float = 5.0) -> tuple[bytes, dict[str, Any]]:
        """The next reply of one of ``kinds`` (everything received is kept in ``seen``)."""
        with anyio.fail_after(within):
            while True:
                _, kind, body = await self.sock.recv_multipart()
                self.seen.append((kind, orjson.loads(body)))
                if kind in kinds:
                    return self.seen[-1]

    def close(self) -> None:
        self.sock.close(linger=0)


@asynccontextmanager
async def stranger(endpoint: str) -> AsyncIterator[Stranger]:
    peer = Stranger(endpoint)
    try:
        yield peer
    finally:
        peer.close()


async def test_a_second_peer_reusing_a_client_id_gets_none_of_its_grants(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint, client_id="victim") as victim, \
            stranger(endpoint) as thief:
        server.gate(anyio.current_time() + 60)  # the victim's request waits ...
        granted = anyio.Event()

        async def identify() -> None:
            async with victim.identify(0):
                granted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(identify)
            with anyio.fail_after(5):
                await server.wait_for(lambda: len(server.scheduler) == 1)
            # ... while a thief speaks with the victim's id from another connection.
            await thief.send(b"ping", {"client": "victim", "seq": 1})
            await thief.answer(b"pong", b"refused")
            server.gate(None)
            with anyio.fail_after(5):
                await granted.wait()
    assert [kind for kind, _ in thief.seen] == [b"refused"]


async def test_a_second_peer_reusing_a_client_id_cannot_cancel_its_request(
        endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint, client_id="victim") as victim, \
            stranger(endpoint) as thief:
        server.gate(anyio.current_time() + 60)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_identify, victim, 0)
            with anyio.fail_after(5):
                await server.wait_for(lambda: len(server.scheduler) == 1)
            # The victim's first request is req 0; a thief guesses it easily.
            await thief.send(b"cancel", {"client": "victim", "req": 0})
            await thief.send(b"ping", {"client": "victim", "seq": 1})
            await thief.answer(b"pong", b"refused")
            assert len(server.scheduler) == 1  # still waiting for its slot
            tg.cancel_scope.cancel()


async def _identify(client: LimiterClient, shard: int) -> None:
    async with client.identify(shard):
        pass


async def test_an_anonymous_loopback_peer_cannot_change_the_pace() -> None:
    server = SessionLimiterService("tcp://127.0.0.1:*",
                                   Limits(interval=INTERVAL, max_concurrency=1, remaining=10,
                                          total=10, reset_after=3600.0), last_grants={},
                                   insecure_loopback=True)
    async with serving(server):
        assert server.endpoint is not None
        async with stranger(server.endpoint) as peer:
            await peer.send(b"configure", {"client": "x", "max_concurrency": 64,
                                           "remaining": 1_000_000})
            await peer.send(b"ping", {"client": "x", "seq": 1})
            await peer.answer(b"pong")
        assert server.scheduler.max_concurrency == 1
        assert server.scheduler.remaining == 10


# -- configure is acknowledged, and refused to roles that may not -----------------------------


async def test_configure_from_this_user_over_ipc_is_applied_and_acknowledged(
        endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with client.answer_within(5):
            await client.configure(max_concurrency=4, remaining=100, total=1000)
        assert server.scheduler.max_concurrency == 4  # applied before the answer left
        assert server.scheduler.remaining == 100


async def test_configure_is_refused_to_an_anonymous_loopback_peer_with_a_reason() -> None:
    server = SessionLimiterService("tcp://127.0.0.1:*", Limits(interval=INTERVAL), last_grants={},
                                   insecure_loopback=True)
    async with serving(server):
        assert server.endpoint is not None
        async with LimiterClient(server.endpoint) as client:
            with pytest.raises(LimiterRefusedError, match="anonymous peers"), \
                    client.answer_within(5):
                await client.configure(max_concurrency=64)
            async with client.identify(0):  # asking for slots is still fine
                pass
    assert server.scheduler.max_concurrency == 1


async def test_nobody_answering_is_reported_naming_the_endpoint(endpoint: str) -> None:
    async with LimiterClient(endpoint) as client:
        started = anyio.current_time()
        with pytest.raises(LimiterUnavailableError, match=f"no limiter answered at {endpoint}"), \
                client.answer_within(0.3):
            await client.configure(max_concurrency=2)
        assert anyio.current_time() - started < 2


def test_a_loopback_tcp_limiter_without_keys_needs_the_operator_s_opt_in() -> None:
    with pytest.raises(ConfigurationError, match="--insecure-loopback"):
        SessionLimiterService("tcp://127.0.0.1:*")
    SessionLimiterService("tcp://127.0.0.1:*", insecure_loopback=True)  # opted in


@pytest.fixture(scope="module")
def role_keys() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sla-keys-") as tmp:
        generate_keys(Path(tmp), ["worker", "supervisor", "operator", "consumer"])
        yield Path(tmp)


@pytest.fixture
def roles_in_zap(role_keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ZAP handler names each authorised key's role in User-Id, "<role>:<name>" (the
    layout of issue 12's role keys; the key-only handler of today names the key)."""
    names = {load_client(role_keys, n).public: n
             for n in ("worker", "supervisor", "operator", "consumer")}

    def user_id(self: object, key: bytes) -> str:
        name = names[z85.encode(key)]
        return f"{name}:{name}"

    monkeypatch.setattr(ThreadAuthenticator, "curve_user_id", user_id)


@pytest.mark.usefixtures("roles_in_zap")
async def test_over_curve_only_supervisor_and_operator_keys_configure(role_keys: Path) -> None:
    server = SessionLimiterService("tcp://127.0.0.1:*", Limits(interval=INTERVAL), last_grants={},
                                   curve=load_server(role_keys))
    async with serving(server):
        assert server.endpoint is not None
        async with LimiterClient(server.endpoint,
                                 curve=load_client(role_keys, "worker")) as worker:
            with pytest.raises(LimiterRefusedError, match="worker role may not"), \
                    worker.answer_within(5):
                await worker.configure(max_concurrency=64)
            async with worker.identify(0):  # a worker asks for slots
                pass
        async with LimiterClient(server.endpoint,
                                 curve=load_client(role_keys, "consumer")) as consumer:
            with pytest.raises(LimiterRefusedError, match="consumer role may not"), \
                    consumer.answer_within(5):
                await consumer.configure(max_concurrency=64)
        for name, mc in (("supervisor", 2), ("operator", 3)):
            async with LimiterClient(server.endpoint,
                                     curve=load_client(role_keys, name)) as client:
                with client.answer_within(5):
                    await client.configure(max_concurrency=mc)
            assert server.scheduler.max_concurrency == mc


@pytest.mark.usefixtures("roles_in_zap")
async def test_over_curve_another_key_cannot_carry_on_a_client_id(role_keys: Path) -> None:
    server = SessionLimiterService("tcp://127.0.0.1:*", Limits(interval=INTERVAL), last_grants={},
                                   curve=load_server(role_keys))
    async with serving(server):
        assert server.endpoint is not None
        async with LimiterClient(server.endpoint, client_id="w1",
                                 curve=load_client(role_keys, "worker")):
            with anyio.fail_after(5):
                await server.wait_for(lambda: "w1" in server._clients)
        # The worker is gone; an operator key reusing its id still may not be it.
        async with LimiterClient(server.endpoint, client_id="w1",
                                 curve=load_client(role_keys, "operator")) as other:
            with anyio.fail_after(5):
                await server.wait_for(lambda: server.stats.refused > 0)
            assert other.client_id == "w1"


# -- a client that reconnects keeps its id ---------------------------------------------------


async def test_a_client_whose_connection_is_gone_may_carry_on_from_a_new_one(
        endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server):
        async with LimiterClient(endpoint, client_id="c"):
            with anyio.fail_after(5):
                await server.wait_for(lambda: "c" in server._clients)
            first = server._clients["c"].peer
        async with LimiterClient(endpoint, client_id="c") as again:
            with anyio.fail_after(5):
                async with again.identify(0):
                    pass
            assert server._clients["c"].peer != first


# -- no peer can hold the service up ---------------------------------------------------------


async def test_replies_to_a_peer_that_never_reads_are_dropped_and_counted_once(
        endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as honest:
        mute = zmq.Context.instance().socket(zmq.DEALER)
        try:
            mute.setsockopt(zmq.RCVHWM, 1)
            mute.setsockopt(zmq.SNDHWM, 100_000)
            mute.connect(endpoint)
            ping = [b"SL1", b"ping", orjson.dumps({"client": "mute", "seq": 1})]
            with anyio.fail_after(20):
                while server.stats.dropped_replies == 0:
                    with contextlib.suppress(zmq.Again):  # our own queue is full: wait
                        for _ in range(100):
                            mute.send_multipart(ping, zmq.NOBLOCK)
                    await anyio.lowlevel.checkpoint()
                async with honest.identify(0):  # the service still serves everyone else
                    pass
        finally:
            mute.close(linger=0)
    unread = [r for r in caplog.records if "does not read its replies" in r.getMessage()]
    assert len(unread) == 1


async def test_a_peer_over_its_rate_is_cut_short_and_others_are_served(
        endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={},
                                   peer_rate=50.0, peer_burst=100)
    async with serving(server), stranger(endpoint) as flood:
        for seq in range(1000):
            await flood.send(b"ping", {"client": "flood", "seq": seq})
        with anyio.fail_after(5):
            await server.wait_for(lambda: server.stats.rate_limited > 0)
        async with LimiterClient(endpoint) as honest, honest.identify(0):
            pass
    assert server.stats.rate_limited >= 800  # about 100 of the 1000 were heard
    assert len([r for r in caplog.records if "messages/s" in r.getMessage()]) == 1


async def test_an_oversized_message_never_reaches_the_service(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), stranger(endpoint) as big, LimiterClient(endpoint) as honest:
        await big.send(b"ping", {"client": "big", "seq": 1, "pad": "x" * (1 << 20)})
        async with honest.identify(0):
            pass
        assert "big" not in server._clients  # libzmq dropped it (ZMQ_MAXMSGSIZE)
