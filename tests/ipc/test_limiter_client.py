"""Both ends of the limiter channel over real ZeroMQ ipc://, the service driven by hand."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
import zmq
import zmq.asyncio

from shardctl.ipc.limiter import (
    Cancel,
    Configure,
    LimiterClient,
    LimiterWireServer,
    Ping,
    Rejected,
    Release,
    Request,
    clock_id,
    encode,
)
from shardctl.worker.limiter import SessionLimiter

pytestmark = pytest.mark.anyio


@pytest.fixture
def endpoint() -> Iterator[str]:
    # tmp_path can be longer than the 107 bytes an ipc:// path may have.
    with tempfile.TemporaryDirectory(prefix="slc-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


M = TypeVar("M", Ping, Request, Cancel, Release, Rejected)


async def next_of(service: LimiterWireServer, kind: type[M]) -> tuple[bytes, M]:
    """The next message of ``kind`` (pings arrive whenever they like)."""
    with anyio.fail_after(5):
        while True:
            peer, message = await service.receive()
            if isinstance(message, kind):
                return peer, message


async def test_client_implements_the_session_limiter_protocol(endpoint: str) -> None:
    async with LimiterClient(endpoint) as client:
        assert isinstance(client, SessionLimiter)


async def test_request_grant_release(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        entered = anyio.Event()
        leave = anyio.Event()

        async def shard() -> None:
            async with client.identify(5):
                entered.set()
                await leave.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(shard)
            peer, request = await next_of(service, Request)
            assert request == Request(client.client_id, request.req, 5)
            assert not entered.is_set()
            assert service.send_grant(peer, request.req, 5)
            with anyio.fail_after(5):
                await entered.wait()
            left = time.monotonic()
            leave.set()
            _, release = await next_of(service, Release)
            assert (release.client, release.req) == (client.client_id, request.req)
            # Stamped once the body (the IDENTIFY send) is over, on time.monotonic().
            assert release.sent_at is not None
            assert left <= release.sent_at <= time.monotonic()


async def test_an_op9_report_names_the_grant_the_identify_was_sent_under(
        endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        client.identify_rejected(5, 0.01)  # never granted here: nothing to report

        async def shard() -> None:
            async with client.identify(5):
                pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(shard)
            peer, request = await next_of(service, Request)
            assert service.send_grant(peer, request.req, 5)
            await next_of(service, Release)
        client.identify_rejected(5, 0.0125)
        client.identify_rejected(5, 0.0125)  # once per grant
        async with anyio.create_task_group() as tg:
            # A marker: the second report would come before it (its answer never comes).
            tg.start_soon(lambda: client.configure(remaining=1))
            _, rejected = await next_of(service, Rejected)
            assert rejected == Rejected(client.client_id, request.req, 5, 0.0125)
            with anyio.fail_after(5):
                while not isinstance((message := (await service.receive())[1]), Configure):
                    assert not isinstance(message, Rejected)
            tg.cancel_scope.cancel()


async def test_pings_name_the_monotonic_clock(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint):
        _, ping = await next_of(service, Ping)
    assert ping.clock is not None
    assert ping.clock == clock_id()


async def test_an_early_grant_is_not_used_before_not_before(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        entered: list[float] = []

        async def shard() -> None:
            async with client.identify(3):
                entered.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(shard)
            peer, request = await next_of(service, Request)
            not_before = time.monotonic() + 0.1
            assert service.send_grant(peer, request.req, 3, not_before=not_before)
            _, release = await next_of(service, Release)
        assert len(entered) == 1
        assert entered[0] >= not_before
        assert release.sent_at is not None
        assert release.sent_at >= entered[0]


async def test_cancelled_while_waiting_out_an_early_grant_releases_it(endpoint: str) -> None:
    # The grant arrived: its slot is spent, so the client releases it (never cancels).
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        async with anyio.create_task_group() as tg:

            async def shard() -> None:
                async with client.identify(4):
                    pytest.fail("entered before not_before")

            tg.start_soon(shard)
            peer, request = await next_of(service, Request)
            assert service.send_grant(peer, request.req, 4, not_before=time.monotonic() + 60)
            # Nothing public shows the grant arrived (the waiter sleeps either way): peek at
            # the client's table of requests still waiting for a grant.
            with anyio.fail_after(5):
                while client._pending:  # noqa: ASYNC110
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        _, message = await next_of(service, Release)
        assert message.req == request.req


async def test_cancelled_waiter_withdraws_its_request(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        async with anyio.create_task_group() as tg:

            async def shard() -> None:
                async with client.identify(1):
                    pytest.fail("entered without a grant")

            tg.start_soon(shard)
            _, request = await next_of(service, Request)
            tg.cancel_scope.cancel()
        _, cancel = await next_of(service, Cancel)
        assert cancel == Cancel(client.client_id, request.req)


async def test_lost_request_is_sent_again_after_a_pong_without_it(endpoint: str) -> None:
    async with (LimiterWireServer(endpoint) as service,
                LimiterClient(endpoint, ping_interval=0.05) as client,
                anyio.create_task_group() as tg):
        granted = anyio.Event()

        async def shard() -> None:
            async with client.identify(2):
                granted.set()

        tg.start_soon(shard)
        _, first = await next_of(service, Request)
        # Answer the next ping as a freshly restarted service would: nothing queued.
        peer, ping = await next_of(service, Ping)
        assert service.send_pong(peer, ping.seq, [])
        peer, again = await next_of(service, Request)
        assert again == first
        # A pong that lists it causes no resend; a grant ends the wait.
        peer, ping = await next_of(service, Ping)
        service.send_pong(peer, ping.seq, [first.req])
        service.send_grant(peer, first.req, 2)
        with anyio.fail_after(5):
            await granted.wait()


async def test_waits_while_the_service_is_unreachable(endpoint: str) -> None:
    async with LimiterClient(endpoint) as client, anyio.create_task_group() as tg:
        granted = anyio.Event()

        async def shard() -> None:
            async with client.identify(0):
                granted.set()

        tg.start_soon(shard)
        with anyio.move_on_after(0.3):
            await granted.wait()
        assert not granted.is_set()  # no service, no grant, no IDENTIFY
        async with LimiterWireServer(endpoint) as service:
            peer, request = await next_of(service, Request)
            service.send_grant(peer, request.req, 0)
            with anyio.fail_after(5):
                await granted.wait()


async def test_malformed_messages_are_dropped_not_fatal(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service:
        raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
        raw.connect(endpoint)
        try:
            for frames in ([b"junk"], [b"SL1", b"request", b"{"], [b"SL9", b"ping", b"{}"],
                           [b"SL1", b"ping", b'{"client":"ok","seq":1}']):
                await raw.send_multipart(frames)
            with anyio.fail_after(5):
                _, message = await service.receive()
            assert message == Ping("ok", 1)
        finally:
            raw.close(0)


async def test_send_to_a_gone_peer_reports_failure(endpoint: str) -> None:
    async with LimiterWireServer(endpoint) as service:
        async with LimiterClient(endpoint) as client:
            peer, _ = await next_of(service, Ping)
            assert service.probe(peer)
            assert client.client_id
        # No event says when the ROUTER has noticed the closed connection: poll for it.
        with anyio.fail_after(5):
            while service.probe(peer):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert not service.send_grant(peer, 1, 1)


async def test_a_pong_missing_thousands_of_requests_is_one_log_line(
        endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    # A service that lost a big worker's queue made it log a line per shard (145,000 in a
    # 10,000-shard start-up): one line per pong says how many, and every one is asked again.
    caplog.set_level(logging.INFO, "shardctl.ipc.limiter")
    count = 3000
    async with (LimiterWireServer(endpoint) as service,
                LimiterClient(endpoint, ping_interval=0.05) as client,
                anyio.create_task_group() as tg):

        async def shard(shard_id: int) -> None:
            async with client.identify(shard_id):
                pass

        for shard_id in range(count):
            tg.start_soon(shard, shard_id)
        asked: set[int] = set()
        with anyio.fail_after(10):
            while len(asked) < count:
                _, request = await next_of(service, Request)
                asked.add(request.req)
            # Every request was sent before this ping: a pong listing none lost them all.
            peer, ping = await next_of(service, Ping)
            assert service.send_pong(peer, ping.seq, [])
            again: set[int] = set()
            while len(again) < count:
                _, request = await next_of(service, Request)
                again.add(request.req)
        assert again == asked
        assert client.reasked == count
        lines = [r.getMessage() for r in caplog.records if "asking again" in r.getMessage()]
        assert len(lines) == 1
        assert f"lost {count} request(s) (shards 0, 1, 2, 3, 4, 5, 6, 7 and {count - 8} more)" \
            in lines[0]
        tg.cancel_scope.cancel()


async def test_a_grant_no_waiter_takes_is_released_at_once(endpoint: str) -> None:
    # The waiter was cancelled as the grant left (or the grant repeats one already used): no
    # IDENTIFY follows it, so the bucket must not stay held for the hold limit.
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        peer, _ = await next_of(service, Ping)
        assert service.send_grant(peer, 41, 3)
        _, release = await next_of(service, Release)
        assert release == Release(client.client_id, 41, None)


async def test_a_repeated_grant_during_the_identify_releases_nothing_early(
        endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The bucket is paced from the release: a repeat of the grant that arrives while the
    # shard is still sending its IDENTIFY must not release it before the send is over.
    async with LimiterWireServer(endpoint) as service, LimiterClient(endpoint) as client:
        entered, leave = anyio.Event(), anyio.Event()

        async def shard() -> None:
            async with client.identify(5):
                entered.set()
                await leave.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(shard)
            peer, request = await next_of(service, Request)
            assert service.send_grant(peer, request.req, 5)
            with anyio.fail_after(5):
                await entered.wait()
            resynced = anyio.Event()
            real = client._resync
            monkeypatch.setattr(client, "_resync", lambda pong: (real(pong), resynced.set()))
            assert service.send_grant(peer, request.req, 5)  # the repeat, then a marker:
            assert service.send_pong(peer, 0, [])  # handled once the repeat was
            with anyio.fail_after(5):
                await resynced.wait()
            leave.set()
            _, release = await next_of(service, Release)  # the first release is the body's
            assert release.sent_at is not None


async def test_a_peer_that_does_not_read_is_not_taken_for_gone(endpoint: str) -> None:
    # The service probes a holder to learn whether its grant may be counted as released: a
    # holder too busy to read (its queue full) may still send its IDENTIFY, so only a
    # connection that is gone counts -- a full queue answered "gone" released live holds.
    async with LimiterWireServer(endpoint) as service:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart(encode(Ping("busy", 1, None)))
            peer, _ = await next_of(service, Ping)
            for _ in range(2_000_000):  # until the service's send would block
                if not service.send_pong(peer, 1, []):
                    break
            else:
                pytest.fail("the peer's queue never filled")
            assert service.probe(peer), "a full queue was taken for a gone connection"
            assert not service.probe(b"\x00nobody")  # a connection that is gone
        finally:
            sock.close(linger=0)
            context.term()
