"""Kernel receive stamps: an IDENTIFY is judged by when it reached the host, not when read."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from shardctl.sandbox.arrival import SO_TIMESTAMPNS, KernelStampedSocket, install

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="SO_TIMESTAMPNS is Linux's")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        try:
            yield client, accepted
        finally:
            client.close()
            accepted.close()


class _Transport:
    """What install() needs of asyncio's selector transport: its ``_sock``."""

    def __init__(self, sock: object) -> None:
        self._sock = sock


def _until_stamped(client: socket.socket, stamped: KernelStampedSocket) -> None:
    """The kernel switches receive stamping on lazily (a deferred static key): the first
    segments after the first socket asks may come unstamped.  Ping until one is stamped."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client.sendall(b"ping")
        assert stamped.recv(16) == b"ping"
        if stamped.received_ns:
            return
        time.sleep(0.001)
    pytest.fail("the kernel never stamped a segment")


def test_a_late_read_still_gets_the_arrival_time(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = tcp_pair
    transport = _Transport(accepted)
    stamped = install(transport)
    assert isinstance(stamped, KernelStampedSocket) and transport._sock is stamped
    _until_stamped(client, stamped)
    client.sendall(b"IDENTIFY")
    sent = time.monotonic()
    time.sleep(0.05)  # the reader is busy elsewhere: this lateness is what is under test
    assert stamped.recv(1024) == b"IDENTIFY"
    read_at = time.monotonic()
    arrived = stamped.arrival(read_at)
    assert sent - 0.005 <= arrived <= sent + 0.01, (sent, arrived, read_at)
    assert read_at - arrived >= 0.04


def test_everything_else_is_the_wrapped_socket(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = tcp_pair
    stamped = install(_Transport(accepted))
    assert stamped is not None
    assert stamped.fileno() == accepted.fileno()
    stamped.send(b"pong")
    assert client.recv(16) == b"pong"
    assert stamped.arrival(123.0) == 123.0  # nothing read yet: the caller's clock


def test_a_segment_without_a_stamp_never_gets_an_older_one(
        tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = tcp_pair
    stamped = install(_Transport(accepted))
    assert stamped is not None
    _until_stamped(client, stamped)
    accepted.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 0)  # stamping off from here on
    client.sendall(b"late")
    assert stamped.recv(16) == b"late"
    assert stamped.received_ns == 0 and stamped.arrival(42.0) == 42.0


def test_sockets_that_are_not_tcp_are_left_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        transport = _Transport(a)
        assert install(transport) is None
        assert transport._sock is a
    assert install(_Transport(None)) is None
