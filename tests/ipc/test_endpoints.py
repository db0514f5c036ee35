"""Endpoint helpers: private runtime directory, locked ipc binds, loopback-only tcp."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from shardctl.errors import ConfigurationError
from shardctl.ipc import endpoints


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte ipc path limit; a short private dir can't.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sct-") as d:
        yield Path(d)


def test_runtime_dir_is_private(short_tmp: Path) -> None:
    d = endpoints.runtime_dir(short_tmp / "rt")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)  # loosened by someone: tightened again, since it is ours
    assert stat.S_IMODE(os.stat(endpoints.runtime_dir(d)).st_mode) == 0o700


def test_runtime_dir_refuses_a_symlink(short_tmp: Path) -> None:
    (short_tmp / "real").mkdir(mode=0o700)
    (short_tmp / "link").symlink_to(short_tmp / "real")
    with pytest.raises(ConfigurationError):
        endpoints.runtime_dir(short_tmp / "link")


def test_runtime_dir_from_environment(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_RUNTIME_DIR", str(short_tmp / "env"))
    assert endpoints.runtime_dir() == short_tmp / "env"
    assert endpoints.ipc_endpoint("limiter.sock") == f"ipc://{short_tmp}/env/limiter.sock"


def test_ipc_names_and_path_length(short_tmp: Path) -> None:
    with pytest.raises(ConfigurationError):
        endpoints.ipc_endpoint("../escape", short_tmp)
    with pytest.raises(ConfigurationError, match="longer than"):
        endpoints.ipc_endpoint("x" * 120, short_tmp)


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("ipc:///tmp/x.sock", True),
        ("inproc://bus", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:*", True),
        ("tcp://[::1]:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://10.0.0.7:5555", False),
        ("tcp://eth0:5555", False),
    ],
)
def test_is_loopback(endpoint: str, loopback: bool) -> None:
    assert endpoints.is_loopback(endpoint) is loopback


@pytest.mark.parametrize("bad", ["", "udp://x:1", "tcp://127.0.0.1", "tcp://127.0.0.1:0x1",
                                 "tcp://:80", "ipc://"])
def test_parse_rejects_unsupported(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        endpoints.parse_endpoint(bad)


def test_tcp_endpoint_defaults_to_loopback() -> None:
    assert endpoints.tcp_endpoint() == "tcp://127.0.0.1:*"
    assert endpoints.tcp_endpoint(7000, "::1") == "tcp://[::1]:7000"


def test_non_loopback_bind_is_refused(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    sock = ctx.socket(zmq.ROUTER)
    with pytest.raises(ConfigurationError, match="CURVE"), endpoints.bind(sock, "tcp://0.0.0.0:*"):
        pass
    sock.close(0)


def test_tcp_bind_names_the_port(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    sock = ctx.socket(zmq.ROUTER)
    with endpoints.bind(sock, endpoints.tcp_endpoint()) as actual:
        assert actual.startswith("tcp://127.0.0.1:")
        assert endpoints.parse_endpoint(actual).port
    sock.close(0)


def test_second_ipc_bind_in_process_is_refused_and_cleanup(
    ctx: zmq.Context[zmq.Socket[bytes]], short_tmp: Path
) -> None:
    endpoint = endpoints.ipc_endpoint("a.sock", short_tmp)
    first, second = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    with endpoints.bind(first, endpoint):
        assert (short_tmp / "a.sock").exists()
        assert (short_tmp / "a.sock.lock").exists()
        with pytest.raises(endpoints.EndpointInUseError), endpoints.bind(second, endpoint):
            pass
        # The first binder still owns the path: a client reaches it, not a thief.
        client = ctx.socket(zmq.DEALER)
        client.connect(endpoint)
        client.send(b"hello")
        assert first.poll(2000)
        assert first.recv_multipart()[1] == b"hello"
        client.close(0)
    assert not (short_tmp / "a.sock").exists()
    assert not (short_tmp / "a.sock.lock").exists()
    # Free again once released.
    with endpoints.bind(second, endpoint):
        pass
    first.close(0)
    second.close(0)


def test_ipc_bind_held_by_another_process_is_refused(
    ctx: zmq.Context[zmq.Socket[bytes]], short_tmp: Path
) -> None:
    endpoint = endpoints.ipc_endpoint("b.sock", short_tmp)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, zmq\n"
         "from shardctl.ipc import endpoints\n"
         "s = zmq.Context().socket(zmq.ROUTER)\n"
         "with endpoints.bind(s, sys.argv[1]):\n"
         "    print('bound', flush=True)\n"
         "    sys.stdin.read()\n",
         endpoint],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "bound"
        sock = ctx.socket(zmq.ROUTER)
        with pytest.raises(endpoints.EndpointInUseError), endpoints.bind(sock, endpoint):
            pass
        sock.close(0)
    finally:
        holder.kill()
        holder.wait(5)
    # A killed holder leaves its files behind; its lock died with it, so a new bind works.
    assert (short_tmp / "b.sock").exists()
    sock = ctx.socket(zmq.ROUTER)
    with endpoints.bind(sock, endpoint):
        pass
    sock.close(0)


def test_a_symlink_planted_at_the_lock_path_is_refused_not_followed(
    ctx: zmq.Context[zmq.Socket[bytes]], short_tmp: Path
) -> None:
    # Whoever can write the directory of an ipc:// path could point its lock file at a
    # file of ours: following it would truncate that file and write a pid into it.
    victim = short_tmp / "victim"
    victim.write_text("precious\n")
    (short_tmp / "c.sock.lock").symlink_to(victim)
    sock = ctx.socket(zmq.ROUTER)
    with pytest.raises(ConfigurationError, match=r"c\.sock\.lock.*symlink"), \
            endpoints.bind(sock, endpoints.ipc_endpoint("c.sock", short_tmp)):
        pass
    sock.close(0)
    assert victim.read_text() == "precious\n"
    assert (short_tmp / "c.sock.lock").is_symlink()  # left for the operator to look at
    assert not (short_tmp / "c.sock").exists()  # nothing was bound


@pytest.mark.parametrize("planted", ["directory", "fifo"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused(
    ctx: zmq.Context[zmq.Socket[bytes]], short_tmp: Path, planted: str
) -> None:
    lock = short_tmp / "d.sock.lock"
    if planted == "directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    sock = ctx.socket(zmq.ROUTER)
    with pytest.raises(ConfigurationError, match=r"d\.sock\.lock"), \
            endpoints.bind(sock, endpoints.ipc_endpoint("d.sock", short_tmp)):
        pass
    sock.close(0)


def test_a_runtime_dir_that_cannot_be_created_is_a_configuration_error(
        short_tmp: Path) -> None:
    blocker = short_tmp / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="SHARDCTL_RUNTIME_DIR"):
        endpoints.runtime_dir(blocker / "rt")


def test_check_free_tells_a_held_ipc_endpoint_before_binding(
    ctx: zmq.Context[zmq.Socket[bytes]], short_tmp: Path
) -> None:
    endpoint = endpoints.ipc_endpoint("e.sock", short_tmp)
    endpoints.check_free(endpoint)  # free: nothing left behind by the probe
    assert not (short_tmp / "e.sock.lock").exists()
    holder = ctx.socket(zmq.ROUTER)
    with endpoints.bind(holder, endpoint):
        with pytest.raises(endpoints.EndpointInUseError):
            endpoints.check_free(endpoint)
        assert (short_tmp / "e.sock").exists()  # the holder keeps its socket file
    holder.close(0)
    endpoints.check_free(endpoints.tcp_endpoint(5555))  # tcp: known only when bound


@pytest.mark.parametrize(("events", "batch"), [
    ("ipc:///run/shardctl/events.sock", "ipc:///run/shardctl/events-batch.sock"),
    ("ipc:///tmp/bus", "ipc:///tmp/bus-batch"),
    ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:*"),
    ("tcp://[::1]:5555", "tcp://[::1]:*"),
    ("inproc://events", "inproc://events-batch"),
])
def test_events_batch_binds_beside_the_events_endpoint(events: str, batch: str) -> None:
    assert endpoints.batch_companion(events) == batch
