"""CURVE on every channel: authorised keys are served, any other key gets nothing."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from shardctl.cluster.limiter_service import LimiterServer
from shardctl.errors import ConfigurationError
from shardctl.ipc import endpoints
from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.control import ControlClient, ControlServer
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.security import (
    CurveClient,
    CurveServer,
    generate_keys,
    load_client,
    load_server,
)

pytestmark = pytest.mark.anyio

ANY_PORT = "tcp://127.0.0.1:*"
#: Long enough for a CURVE handshake and a reply on loopback, many times over.
SILENCE = 1.5


@pytest.fixture(scope="module")
def key_dirs() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory(prefix="sc-keys-") as tmp:
        ours, theirs = Path(tmp) / "ours", Path(tmp) / "theirs"
        generate_keys(ours)
        generate_keys(theirs)  # another cluster's keys: never authorised by ours
        yield ours, theirs


@pytest.fixture
def server(key_dirs: tuple[Path, Path]) -> CurveServer:
    return load_server(key_dirs[0])


@pytest.fixture
def worker(key_dirs: tuple[Path, Path]) -> CurveClient:
    return load_client(key_dirs[0], "worker")


@pytest.fixture
def stranger(key_dirs: tuple[Path, Path], server: CurveServer) -> CurveClient:
    """Knows our server's public key (it is public) but holds an unauthorised keypair."""
    theirs = load_client(key_dirs[1], "worker")
    return CurveClient(server_public=server.public, public=theirs.public, secret=theirs.secret)


# -- key files and bind policy ---------------------------------------------------------------


def test_generated_key_directory_is_private(key_dirs: tuple[Path, Path]) -> None:
    ours = key_dirs[0]
    for path in [ours, ours / "clients", ours / "authorized"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    files = [p for p in ours.rglob("*") if p.is_file()]
    names = {p.relative_to(ours).as_posix() for p in files}
    assert {"server.key", "server.key_secret", "clients/worker.key_secret",
            "clients/consumer.key_secret", "authorized/worker.key",
            "authorized/consumer.key"} <= names
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)


def test_secret_keys_stay_out_of_reprs(server: CurveServer, worker: CurveClient) -> None:
    assert server.secret.decode() not in repr(server)
    assert worker.secret.decode() not in repr(worker)


def test_a_world_readable_secret_key_is_refused(tmp_path: Path) -> None:
    generate_keys(tmp_path / "k", ["worker"])
    os.chmod(tmp_path / "k" / "clients" / "worker.key_secret", 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_client(tmp_path / "k", "worker")


def test_non_loopback_binds_need_curve(server: CurveServer) -> None:
    for endpoint in ["tcp://0.0.0.0:5555", "tcp://10.77.0.1:5555", "tcp://eth0:5555"]:
        with pytest.raises(ConfigurationError, match="CURVE"):
            endpoints.check_bind_allowed(endpoint)
        endpoints.check_bind_allowed(endpoint, curve=True)
    with pytest.raises(ConfigurationError, match="reachable from other hosts"):
        ControlServer("tcp://0.0.0.0:*")
    with pytest.raises(ConfigurationError, match="reachable from other hosts"):
        LimiterServer("tcp://0.0.0.0:*")


async def test_curve_allows_binding_every_interface(server: CurveServer,
                                                    worker: CurveClient) -> None:
    control = ControlServer("tcp://0.0.0.0:*", curve=server)
    try:
        port = control.endpoint.rsplit(":", 1)[1]
        client = ControlClient(f"tcp://127.0.0.1:{port}", curve=worker)
        try:
            await client.send("beat")
            with anyio.fail_after(5):
                _, message = await control.receive()
            assert message.kind == "beat"
        finally:
            client.close()
    finally:
        control.close()


# -- control ---------------------------------------------------------------------------------


async def test_control_serves_an_authorised_worker(server: CurveServer,
                                                   worker: CurveClient) -> None:
    control = ControlServer(ANY_PORT, curve=server)
    client = ControlClient(control.endpoint, curve=worker)
    try:
        await client.send("register", {"worker": None, "pid": 1})
        with anyio.fail_after(5):
            peer, message = await control.receive()
        assert message.kind == "register"
        assert await control.send(peer, "beat")
        with anyio.fail_after(5):
            assert (await client.receive()).kind == "beat"
    finally:
        client.close()
        control.close()


@pytest.mark.parametrize("keys", ["stranger", "none"])
async def test_control_never_hears_an_unauthorised_peer(
        request: pytest.FixtureRequest, server: CurveServer, keys: str) -> None:
    curve = request.getfixturevalue("stranger") if keys == "stranger" else None
    control = ControlServer(ANY_PORT, curve=server)
    client = ControlClient(control.endpoint, curve=curve)
    try:
        # A command reply or a registration from this peer would be a command accepted.
        # The sends may block (no peer once the handshake failed): they share the deadline.
        with anyio.move_on_after(SILENCE) as scope:
            await client.send("register", {"worker": None, "pid": 1})
            await client.send("reply", {"id": "x", "ok": True})
            await control.receive()
        assert scope.cancelled_caught, "an unauthorised peer reached the control channel"
        with anyio.move_on_after(0.2) as scope:
            await client.receive()
        assert scope.cancelled_caught
    finally:
        client.close()
        control.close()


# -- event bus -------------------------------------------------------------------------------


@asynccontextmanager
async def curve_bus(server: CurveServer) -> AsyncIterator[EventForwarder]:
    forwarder = EventForwarder(ANY_PORT, ANY_PORT, curve=server)
    async with anyio.create_task_group() as tg:
        await tg.start(forwarder.run)
        yield forwarder
        tg.cancel_scope.cancel()


FRAME = b'{"op":0,"s":1,"t":"MESSAGE_CREATE","d":{}}'


async def test_bus_carries_events_between_authorised_peers(
        server: CurveServer, worker: CurveClient, key_dirs: tuple[Path, Path]) -> None:
    consumer_keys = load_client(key_dirs[0], "consumer")
    async with curve_bus(server) as fwd, anyio.create_task_group() as tg:
        key = new_publish_key()
        fwd.publishers.authorize(0, key, [3])
        publisher = EventPublisher(fwd.inbound, curve=worker, publish_key=key)
        await tg.start(publisher.run)
        async with Consumer(fwd.outbound, curve=consumer_keys) as consumer:
            with anyio.fail_after(5):
                await fwd.wait_subscribed(b"")
                await publisher.wait_subscribed()
            publisher.publish(3, "MESSAGE_CREATE", 1, FRAME, urgent=True)
            with anyio.fail_after(5):
                event = await consumer.__anext__()
            assert (event.shard, event.seq, event.type) == (3, 1, "MESSAGE_CREATE")
        tg.cancel_scope.cancel()


async def test_bus_ignores_an_unauthorised_publisher_and_consumer(
        server: CurveServer, worker: CurveClient, stranger: CurveClient,
        key_dirs: tuple[Path, Path]) -> None:
    async with curve_bus(server) as fwd, anyio.create_task_group() as tg:
        intruder = EventPublisher(fwd.inbound, curve=stranger)
        await tg.start(intruder.run)
        async with Consumer(fwd.outbound, curve=stranger) as eavesdropper:
            with anyio.move_on_after(SILENCE):
                await fwd.wait_subscribed(b"")
            assert not fwd.subscriptions, "an unauthorised consumer subscribed"
            assert not intruder.subscribed, "the forwarder accepted an unauthorised publisher"
            # An authorised worker's events still flow, and the eavesdropper sees none.
            key = new_publish_key()
            fwd.publishers.authorize(0, key, [0, 1])
            publisher = EventPublisher(fwd.inbound, curve=worker, publish_key=key)
            await tg.start(publisher.run)
            with anyio.fail_after(5):
                await publisher.wait_subscribed()
            async with Consumer(fwd.outbound,
                                curve=load_client(key_dirs[0], "consumer")) as reader:
                with anyio.fail_after(5):
                    await fwd.wait_subscribed(b"")
                intruder.publish(0, "MESSAGE_CREATE", 1, FRAME, urgent=True)
                publisher.publish(1, "MESSAGE_CREATE", 1, FRAME, urgent=True)
                with anyio.fail_after(5):
                    assert (await reader.__anext__()).shard == 1
            with anyio.move_on_after(0.5) as scope:
                await eavesdropper.__anext__()
            assert scope.cancelled_caught
            assert fwd.last_seq == {1: 1}, "an unauthorised publisher's event was forwarded"
        tg.cancel_scope.cancel()


# -- limiter ---------------------------------------------------------------------------------


@asynccontextmanager
async def curve_limiter(server: CurveServer) -> AsyncIterator[str]:
    limiter = LimiterServer(ANY_PORT, max_concurrency=1, interval=0.05, curve=server)
    async with anyio.create_task_group() as tg:
        yield await tg.start(limiter.serve)
        tg.cancel_scope.cancel()


async def test_limiter_grants_an_authorised_client(server: CurveServer,
                                                   worker: CurveClient) -> None:
    async with curve_limiter(server) as endpoint, \
            LimiterClient(endpoint, curve=worker) as client:
        with anyio.fail_after(5):
            async with client.identify(0):
                pass


async def test_limiter_never_grants_an_unauthorised_client(server: CurveServer,
                                                           stranger: CurveClient) -> None:
    async with curve_limiter(server) as endpoint, \
            LimiterClient(endpoint, curve=stranger) as client:
        granted = False
        with anyio.move_on_after(SILENCE):
            async with client.identify(0):
                granted = True
        assert not granted


def test_keys_generate_command_makes_the_layout_and_keeps_existing_keys(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shardctl.cli import main

    target = tmp_path / "keys"
    runner = CliRunner()
    result = runner.invoke(main, ["keys", "generate", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    first = load_server(target)
    result = runner.invoke(main, ["keys", "generate", "--dir", str(target),
                                  "--client", "bot-2"])
    assert result.exit_code == 0, result.output
    again = load_server(target)
    assert again.public == first.public  # clients keep trusting the same server key
    assert again.authorized == first.authorized | {load_client(target, "bot-2").public}
    assert first.secret.decode() not in result.output
