"""The limiter service with thousands of waiting requests per client (issue 14's start-up).

A 10,000-shard start-up in 4 workers logged "service lost the request" 145,000 times: every
few seconds a worker asked again for its whole queue.  The service's loop did a sort of every
waiting request per message, so a worker's burst stayed unread, libzmq stopped reading that
connection (its heartbeats too), the heartbeat timeout closed it, and the next grant to the
old routing id failed: the service dropped every waiting request of that worker, which asked
for all of them again (the next burst).  Real loopback ZeroMQ, clients in this process.
"""

from __future__ import annotations

import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import zmq
import zmq.asyncio
from limiterkit import serving

from shardctl.cluster.limiter import IdentifyScheduler
from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.gateway.limits import Limits
from shardctl.ipc.limiter import LimiterClient, Pong

pytestmark = pytest.mark.anyio

_LOST = re.compile(r"the service lost (\d+) request")


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sll-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


def reasks(caplog: pytest.LogCaptureFixture) -> int:
    """Requests the clients sent again, from their log lines (one per pong, with a count)."""
    total = 0
    for record in caplog.records:
        message = record.getMessage()
        if "asking again" in message:
            found = _LOST.search(message)
            total += int(found.group(1)) if found else 1
    return total


async def wait_for_all(client: LimiterClient, shards: range) -> None:
    async def one(shard: int) -> None:
        async with client.identify(shard):
            pass

    async with anyio.create_task_group() as tg:
        for shard in shards:
            tg.start_soon(one, shard)


class PongCount:
    """Counts the pongs a client handles (a spy on its resync)."""

    def __init__(self, client: LimiterClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.changed = anyio.Event()
        real = client._resync

        def counting(pong: Pong) -> None:
            real(pong)
            self.count += 1
            self.changed.set()
            self.changed = anyio.Event()

        monkeypatch.setattr(client, "_resync", counting)

    async def at_least(self, count: int) -> None:
        while self.count < count:
            await self.changed.wait()


@pytest.mark.slow
async def test_a_client_that_reconnects_keeps_its_thousands_of_waiting_requests(
        endpoint: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    waiting = 3000
    server = SessionLimiterService(endpoint, Limits(interval=0.05, max_concurrency=4),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint, ping_interval=0.05) as client:
        pongs = PongCount(client, monkeypatch)
        server.gate(anyio.current_time() + 600)
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_all, client, range(waiting))
            with anyio.fail_after(60):
                await server.wait_for(lambda: len(server.scheduler) == waiting)
                server.gate(None)
                await server.wait_for(lambda: len(server.grants()) >= 4)
                before = len(server.grants())
                # What a heartbeat timeout does: the connection closes, the DEALER
                # reconnects, and the service knows the client under a new routing id only
                # once it speaks again.  Grants meanwhile go to the old one and fail.
                old_peer = server._clients[client.client_id].peer
                sock = client._socket
                assert sock is not None
                sock.disconnect(endpoint)
                await server.wait_for(lambda: any(e.kind == "drop" for e in server.record))
                in_flight = len(server.grants())  # granted before the drop: may be lost
                sock.connect(endpoint)
                await server.wait_for(
                    lambda: server._clients.get(client.client_id) is not None
                    and server._clients[client.client_id].peer != old_peer)
                seen = pongs.count
                await pongs.at_least(seen + 3)
                await server.wait_for(lambda: len(server.grants()) >= before + 8)
            left = len(server.scheduler)
            tg.cancel_scope.cancel()
    # Only grants that were on the closed connection are asked for again (they were lost
    # with it); the service kept every request it had not granted.
    assert reasks(caplog) <= in_flight
    assert left >= waiting - len(server.grants())


@pytest.mark.slow
async def test_ten_thousand_waiting_requests_keep_each_message_cheap(
        endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    # 4 clients x 2,500 requests wait at the start gate, as in a 10,000-shard start.  The
    # service handles a message and a pong without a pass that sorts every waiting request
    # (one per message starved its loop), and every pong lists each client's whole queue.
    caplog.set_level(logging.INFO)
    sorts = 0
    real_waiting = IdentifyScheduler.waiting

    def counting(self: IdentifyScheduler[Any]) -> Any:
        nonlocal sorts
        sorts += 1
        return real_waiting(self)

    monkeypatch.setattr(IdentifyScheduler, "waiting", counting)
    per_client, clients = 2500, 4
    server = SessionLimiterService(endpoint, Limits(interval=5.0, max_concurrency=256),
                                   last_grants={})
    async with serving(server):
        server.gate(anyio.current_time() + 600)
        async with (LimiterClient(endpoint, ping_interval=0.05) as a,
                    LimiterClient(endpoint, ping_interval=0.05) as b,
                    LimiterClient(endpoint, ping_interval=0.05) as c,
                    LimiterClient(endpoint, ping_interval=0.05) as d,
                    anyio.create_task_group() as tg):
            pongs = [PongCount(x, monkeypatch) for x in (a, b, c, d)]
            cpu, started = time.process_time(), time.monotonic()
            for i, x in enumerate((a, b, c, d)):
                tg.start_soon(wait_for_all, x, range(i, per_client * clients, clients))
            with anyio.fail_after(60):
                await server.wait_for(lambda: len(server.scheduler) == per_client * clients)
                ingest_cpu, ingest = time.process_time() - cpu, time.monotonic() - started
                seen = [p.count for p in pongs]
                for p, n in zip(pongs, seen, strict=True):
                    await p.at_least(n + 5)
            queued = {x.client_id: len(server.scheduler.waiting_of(x.client_id))
                      for x in (a, b, c, d)}
            tg.cancel_scope.cancel()
    print(f"\n10,000 requests in: {ingest:.2f} s, {ingest_cpu:.2f} s CPU (clients and service)")
    assert sorts == 0
    assert set(queued.values()) == {per_client}
    assert reasks(caplog) == 0


async def test_a_request_for_a_held_grant_gets_that_grant_again_not_a_second_slot(
        endpoint: str) -> None:
    # The client asks again only if it never got the grant: a second slot would be wasted
    # (the client uses one grant per request) and held for the hold limit.
    server = SessionLimiterService(endpoint, Limits(interval=0.05), last_grants={})
    async with serving(server):
        sock = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        try:
            async def send(kind: bytes, body: dict[str, Any]) -> None:
                await sock.send_multipart([b"SL1", kind, orjson.dumps(body)])

            async def next_grant() -> dict[str, Any]:
                with anyio.fail_after(5):
                    while True:
                        _, kind, body = await sock.recv_multipart()
                        if kind == b"grant":
                            return dict(orjson.loads(body))

            await send(b"request", {"client": "w", "req": 7, "shard": 3})
            first = await next_grant()
            await send(b"request", {"client": "w", "req": 7, "shard": 3})
            again = await next_grant()
            assert again["req"] == first["req"] == 7
            assert len(server.grants()) == 1
            assert len(server.scheduler) == 0
            await send(b"release", {"client": "w", "req": 7})
            with anyio.fail_after(5):
                await server.wait_for(lambda: not any(server.scheduler.holding()))
        finally:
            sock.close(linger=0)


@pytest.mark.slow
async def test_a_client_whose_pings_wait_unread_is_not_taken_for_silent(
        endpoint: str) -> None:
    # The service's loop is busy (a supervisor starting thousands of shards) for longer than
    # the client timeout while its clients keep pinging: their pings wait in the socket, and
    # they are not silent.  The service used to take every client whose messages it had not
    # read yet for silent, and drop its whole queue.
    server = SessionLimiterService(endpoint, Limits(interval=5.0), client_timeout=0.3)
    stop = threading.Event()

    def pinger(client: str) -> None:  # a thread: it keeps pinging while this loop is blocked
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        try:
            sock.send_multipart([b"SL1", b"request", orjson.dumps(
                {"client": client, "req": 1, "shard": 0})])
            seq = 0
            while not stop.wait(0.02):
                seq += 1
                sock.send_multipart([b"SL1", b"ping", orjson.dumps(
                    {"client": client, "seq": seq})])
        finally:
            sock.close(linger=0)

    async with serving(server):
        threads = [threading.Thread(target=pinger, args=(c,)) for c in ("w1", "w2", "w3")]
        for thread in threads:
            thread.start()
        try:
            with anyio.fail_after(10):
                await server.wait_for(lambda: len(server.scheduler) == 3)
                for _ in range(5):
                    time.sleep(0.5)  # noqa: ASYNC251 -- the busy loop under test
                    await anyio.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                await anyio.to_thread.run_sync(thread.join)
        assert [e for e in server.record if e.kind == "drop"] == []
        assert len(server.scheduler) == 3
