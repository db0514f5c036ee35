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

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.errors import ConfigurationError
from shardctl.gateway.limits import Limits
from shardctl.ipc import endpoints
from shardctl.ipc.bus import EventForwarder, EventPublisher
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.control import ControlClient, ControlServer
from shardctl.ipc.limiter import LimiterClient
from shardctl.ipc.publishers import new_publish_key
from shardctl.ipc.security import (
    CurveClient,
    CurveServer,
    for_socket,
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
    for path in [ours, ours / "clients", ours / "authorized", ours / "authorized" / "worker"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    files = [p for p in ours.rglob("*") if p.is_file()]
    names = {p.relative_to(ours).as_posix() for p in files}
    assert {"server.key", "server.key_secret", "clients/worker.key_secret",
            "clients/consumer.key_secret", "clients/operator.key_secret",
            "clients/supervisor.key_secret", "authorized/worker/worker.key",
            "authorized/consumer/consumer.key", "authorized/operator/operator.key",
            "authorized/supervisor/supervisor.key"} <= names
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
        SessionLimiterService("tcp://0.0.0.0:*")


async def test_curve_allows_binding_every_interface(server: CurveServer,
                                                    worker: CurveClient) -> None:
    control = ControlServer("tcp://0.0.0.0:*", curve=server)
    try:
        port = control.endpoint.rsplit(":", 1)[1]
        client = ControlClient(f"tcp://127.0.0.1:{port}", curve=worker)
        try:
            await client.send("beat")
            with anyio.fail_after(5):
                incoming = await control.receive()
            assert incoming.message.kind == "beat"
            assert incoming.role == "worker"
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
            incoming = await control.receive()
        assert incoming.message.kind == "register"
        assert incoming.role == "worker"
        assert control.send(incoming.peer, "beat")
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
    limiter = SessionLimiterService(ANY_PORT, Limits(max_concurrency=1, interval=0.05),
                                    curve=server)
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
                                  "--client", "bot-2", "--role", "consumer"])
    assert result.exit_code == 0, result.output
    again = load_server(target)
    assert again.public == first.public  # clients keep trusting the same server key
    bot = load_client(target, "bot-2").public
    assert again.authorized == first.authorized | {bot}
    assert again.clients[bot] == "consumer:bot-2"
    assert first.secret.decode() not in result.output


# -- roles -----------------------------------------------------------------------------------


def client_of(key_dirs: tuple[Path, Path], role: str) -> CurveClient:
    return load_client(key_dirs[0], role)


@pytest.mark.parametrize(("role", "heard"), [("worker", True), ("operator", True),
                                             ("consumer", False), ("supervisor", False)])
async def test_control_admits_workers_and_operators_only(
        key_dirs: tuple[Path, Path], server: CurveServer, role: str, heard: bool) -> None:
    control = ControlServer(ANY_PORT, curve=server)
    client = ControlClient(control.endpoint, curve=client_of(key_dirs, role))
    try:
        with anyio.move_on_after(SILENCE if not heard else 5) as scope:
            await client.send("status")
            incoming = await control.receive()
        assert scope.cancelled_caught is not heard
        if heard:
            assert incoming.role == role  # the ZAP User-Id "ROLE:NAME", read per message
    finally:
        client.close()
        control.close()


@pytest.mark.parametrize(("role", "admitted"), [("consumer", True), ("operator", True),
                                                ("worker", False), ("supervisor", False)])
async def test_events_out_admits_consumers_and_operators_only(
        key_dirs: tuple[Path, Path], server: CurveServer, role: str, admitted: bool) -> None:
    async with curve_bus(server) as fwd, \
            Consumer(fwd.outbound, curve=client_of(key_dirs, role)):
        with anyio.move_on_after(SILENCE if not admitted else 5):
            await fwd.wait_subscribed(b"")
        assert bool(fwd.subscriptions) is admitted


async def test_events_in_admits_workers_only(key_dirs: tuple[Path, Path],
                                             server: CurveServer) -> None:
    async with curve_bus(server) as fwd, anyio.create_task_group() as tg:
        for role in ("consumer", "operator", "supervisor"):
            publisher = EventPublisher(fwd.inbound, curve=client_of(key_dirs, role))
            await tg.start(publisher.run)
            with anyio.move_on_after(SILENCE / 3):
                await publisher.wait_subscribed()
            assert not publisher.subscribed, f"events in admitted a {role} key"
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("role", "granted"), [("supervisor", True), ("operator", True),
                                               ("consumer", False)])
async def test_the_limiter_admits_workers_supervisors_and_operators(
        key_dirs: tuple[Path, Path], server: CurveServer, role: str, granted: bool) -> None:
    limiter = SessionLimiterService(ANY_PORT, Limits(max_concurrency=1, interval=0.05),
                                    curve=for_socket(server, "limiter"))
    async with anyio.create_task_group() as tg:
        endpoint = await tg.start(limiter.serve)
        async with LimiterClient(endpoint, curve=client_of(key_dirs, role)) as client:
            got = False
            with anyio.move_on_after(SILENCE if not granted else 5):
                async with client.identify(0):
                    got = True
        assert got is granted
        tg.cancel_scope.cancel()


def test_the_supervisor_reaches_a_shared_limiter_with_its_own_key(
        key_dirs: tuple[Path, Path]) -> None:
    from shardctl.cluster.remote import supervisor_keys

    _, client = supervisor_keys(key_dirs[0], shared_limiter=True)
    assert client is not None
    assert client.public == load_client(key_dirs[0], "supervisor").public
    assert supervisor_keys(key_dirs[0])[1] is None  # no shared limiter: no client key


# -- key layout ------------------------------------------------------------------------------


def flatten(directory: Path, *names: str) -> None:
    """Turn authorized/ROLE/NAME.key into the older authorized/NAME.key."""
    for name in names:
        for path in (directory / "authorized").glob(f"*/{name}.key"):
            path.rename(directory / "authorized" / f"{name}.key")


def test_a_flat_key_named_after_a_role_keeps_that_role(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    generate_keys(keys, ["worker", "consumer"])
    flatten(keys, "worker", "consumer")
    server = load_server(keys)
    assert sorted(server.clients.values()) == ["consumer:consumer", "worker:worker"]


def test_a_flat_key_of_any_other_name_is_refused_until_keys_are_generated_again(
        tmp_path: Path) -> None:
    keys = tmp_path / "k"
    generate_keys(keys, ["bot-2"], role="consumer")
    generate_keys(keys, ["worker"])
    flatten(keys, "bot-2", "worker")
    secret = (keys / "clients" / "bot-2.key_secret").read_bytes()
    with pytest.raises(ConfigurationError, match=r"bot-2.key has no role .*re-run "
                                                 r"`shardctl keys generate`.*--client bot-2"):
        load_server(keys)
    generate_keys(keys, ["bot-2"], role="consumer")  # what the message says to do
    server = load_server(keys)
    assert sorted(server.clients.values()) == ["consumer:bot-2", "worker:worker"]
    assert (keys / "clients" / "bot-2.key_secret").read_bytes() == secret  # key kept
    assert not (keys / "authorized" / "bot-2.key").exists()
    generate_keys(keys)  # the default clients: the flat worker.key moves under its role
    assert (keys / "authorized" / "worker" / "worker.key").exists()
    assert not (keys / "authorized" / "worker.key").exists()


def test_one_key_in_two_roles_or_an_unknown_role_directory_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    generate_keys(keys, ["worker", "operator"])
    copy = keys / "authorized" / "operator" / "twin.key"
    copy.write_bytes((keys / "authorized" / "worker" / "worker.key").read_bytes())
    with pytest.raises(ConfigurationError, match="one key, one role"):
        load_server(keys)
    copy.unlink()
    (keys / "authorized" / "admin").mkdir()
    with pytest.raises(ConfigurationError, match="not a role directory"):
        load_server(keys)


def test_a_client_needs_a_role_and_keeps_the_one_it_has(tmp_path: Path) -> None:
    keys = tmp_path / "k"
    with pytest.raises(ConfigurationError, match="'bot' needs a role"):
        generate_keys(keys, ["bot"])
    with pytest.raises(ConfigurationError, match="unknown role 'admin'"):
        generate_keys(keys, ["bot"], role="admin")
    generate_keys(keys, ["bot"], role="consumer")
    with pytest.raises(ConfigurationError, match="already authorised as consumer"):
        generate_keys(keys, ["bot"], role="worker")


def test_keys_generate_role_needs_a_client(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from shardctl.cli import main

    result = CliRunner().invoke(main, ["keys", "generate", "--dir", str(tmp_path / "k"),
                                       "--role", "consumer"])
    assert result.exit_code == 2
    assert "--role needs --client NAME" in result.output
