"""Where our ZeroMQ sockets live, and the rules for binding them safely.

Every channel binds either an ``ipc://`` file in a private runtime directory (mode 0700, ours)
or ``tcp://127.0.0.1``.  Two hazards shape this module:

- ``zmq_bind`` on an ``ipc://`` path first unlinks whatever file is there, so a second
  process binding the same path silently steals it from the first (DESIGN.md §3).  A bind
  therefore holds an exclusive ``flock`` on ``<path>.lock`` for as long as it is bound, and a
  second binder gets :class:`EndpointInUseError` instead of a hijack.
- Without CURVE nothing we send is encrypted or authenticated, so a bind reachable from
  another host is refused unless that socket has CURVE server keys
  (:mod:`shardctl.ipc.security`): :func:`bind` applies them before ``zmq_bind``, and
  :func:`check_bind_allowed` is the one place that decides.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq

from shardctl.errors import ConfigurationError
from shardctl.ipc.security import CurveServer

__all__ = [
    "LOOPBACK_HOST",
    "MAX_IPC_PATH_BYTES",
    "EndpointInUseError",
    "ParsedEndpoint",
    "bind",
    "check_bind_allowed",
    "check_free",
    "ipc_endpoint",
    "ipc_path",
    "is_loopback",
    "parse_endpoint",
    "runtime_dir",
    "tcp_endpoint",
]

LOOPBACK_HOST: Final = "127.0.0.1"
"""Default tcp bind address: reachable from this host only."""

MAX_IPC_PATH_BYTES: Final = 107
"""sun_path is 108 bytes on Linux including the NUL; longer ipc:// paths fail to bind."""

RUNTIME_DIR_ENV: Final = "SHARDCTL_RUNTIME_DIR"
TRANSPORTS: Final = frozenset({"ipc", "tcp", "inproc"})


class EndpointInUseError(ConfigurationError):
    """Another live process holds this ipc:// endpoint; binding it would steal it."""


@dataclass(frozen=True, slots=True)
class ParsedEndpoint:
    """``transport://address``; for tcp, ``host`` and ``port`` (``None`` for ``*``)."""

    transport: str
    address: str
    host: str | None = None
    port: int | None = None


def parse_endpoint(endpoint: str) -> ParsedEndpoint:
    """Split and check an endpoint string; ConfigurationError if we do not support it."""
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in TRANSPORTS or not address:
        raise ConfigurationError(
            f"unsupported endpoint {endpoint!r}: use ipc://PATH, tcp://HOST:PORT or inproc://NAME"
        )
    if transport != "tcp":
        return ParsedEndpoint(transport, address)
    host, colon, port_text = address.rpartition(":")
    if not colon or not host:
        raise ConfigurationError(f"tcp endpoint {endpoint!r} needs HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    if port_text == "*":
        return ParsedEndpoint(transport, address, host, None)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"tcp endpoint {endpoint!r} has an invalid port")
    return ParsedEndpoint(transport, address, host, int(port_text))


def is_loopback(endpoint: str) -> bool:
    """True if only processes on this host can reach ``endpoint``."""
    parsed = parse_endpoint(endpoint)
    if parsed.transport != "tcp":
        return True
    host = parsed.host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or hostname: assume reachable from elsewhere


def check_bind_allowed(endpoint: str, *, curve: bool = False) -> None:
    """Refuse to bind anything another host could reach, unless the socket runs CURVE.

    ``curve``: the socket has CURVE server keys (applied by :func:`bind`), so every peer
    must hold an authorised key and all traffic is encrypted.
    """
    if not curve and not is_loopback(endpoint):
        raise ConfigurationError(
            f"refusing to bind {endpoint}: it is reachable from other hosts and, without "
            "CURVE keys, shardctl traffic is neither encrypted nor authenticated; configure "
            "keys (`shardctl keys generate`, then --keys DIR), or bind tcp://127.0.0.1:PORT "
            "or ipc:// and tunnel it (e.g. ssh -L)"
        )


def runtime_dir(base: Path | None = None) -> Path:
    """Our private directory for ipc:// files, created with mode 0700 if missing.

    ``base`` or ``$SHARDCTL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/shardctl``, else
    ``<tmp>/shardctl-<uid>``.  A directory another user owns, or a symlink, is refused: its
    owner could replace our sockets.
    """
    if base is None:
        env = os.environ.get(RUNTIME_DIR_ENV)
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if env:
            base = Path(env)
        elif xdg:
            base = Path(xdg) / "shardctl"
        else:
            base = Path(tempfile.gettempdir()) / f"shardctl-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the runtime directory {base} ({exc.strerror or exc}); set "
            f"{RUNTIME_DIR_ENV} to a directory you can write") from None
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"runtime directory {base} is not a directory")
    if info.st_uid != os.getuid():
        raise ConfigurationError(f"runtime directory {base} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(base, 0o700)
    return base


def ipc_path(name: str, directory: Path | None = None) -> Path:
    """The socket file for channel ``name`` in the runtime directory."""
    if not name or "/" in name or name in {".", ".."}:
        raise ConfigurationError(f"invalid ipc endpoint name {name!r}")
    path = (directory if directory is not None else runtime_dir()) / name
    if len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
        raise ConfigurationError(
            f"ipc path {path} is longer than {MAX_IPC_PATH_BYTES} bytes; "
            f"set ${RUNTIME_DIR_ENV} to a shorter directory"
        )
    return path


def ipc_endpoint(name: str, directory: Path | None = None) -> str:
    """``ipc://`` endpoint for channel ``name``, e.g. ``ipc_endpoint("limiter.sock")``."""
    return f"ipc://{ipc_path(name, directory)}"


def batch_companion(events: str) -> str:
    """Where events-batch binds beside the events endpoint ``events``: ``NAME-batch.EXT``
    in the same directory for ``ipc://``, another free port of the same host for ``tcp://``."""
    parsed = parse_endpoint(events)
    if parsed.transport == "ipc":
        path = Path(parsed.address)
        return f"ipc://{path.with_name(f'{path.stem}-batch{path.suffix}')}"
    if parsed.transport == "tcp":
        return tcp_endpoint(None, parsed.host or LOOPBACK_HOST)
    return f"{events}-batch"


def tcp_endpoint(port: int | None = None, host: str = LOOPBACK_HOST) -> str:
    """``tcp://host:port``; ``port=None`` binds a free port (read the result of :func:`bind`)."""
    if host != "*" and ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{'*' if port is None else port}"


def _open_lock(lock_path: Path) -> int:
    """Open (or create) a lock file that is ours: never through a symlink, which whoever
    can write the directory (an ipc:// path outside the runtime directory) could plant to
    make us truncate a file of their choice, and never another user's file."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigurationError(
                f"refusing the lock file {lock_path}: it is a symlink (not created by "
                "shardctl); remove it, or bind in a directory only you can write") from None
        raise ConfigurationError(
            f"cannot open the lock file {lock_path}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigurationError(
            f"refusing the lock file {lock_path}: it is not a regular file of this user; "
            "remove it, or bind in a directory only you can write")
    return fd


@contextlib.contextmanager
def _ipc_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    while True:
        fd = _open_lock(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise EndpointInUseError(
                    f"ipc://{path} is bound by another live process (lock {lock_path} held)"
                ) from None
            raise
        # The holder before us unlinks the lock file before unlocking; if we locked an
        # unlinked inode, the path now names a different file: try again on that one.
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


@contextlib.contextmanager
def bind(socket: zmq.Socket[Any], endpoint: str, *,
         curve: CurveServer | None = None) -> Iterator[str]:
    """Bind ``socket`` for the duration of the block; yields the actual endpoint.

    ipc:// binds hold the endpoint's lock file until the block ends, then remove the socket
    file.  ``tcp://HOST:*`` binds a free port; the yielded endpoint names it.  ``curve``
    makes the socket a CURVE server first (and allows binds other hosts can reach).
    """
    check_bind_allowed(endpoint, curve=curve is not None)
    if curve is not None:
        curve.apply(socket)
    parsed = parse_endpoint(endpoint)
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if parsed.transport == "ipc":
        path = Path(parsed.address)
        if not path.parent.is_dir():
            raise ConfigurationError(f"directory of {endpoint} does not exist")
        if len(os.fsencode(path)) > MAX_IPC_PATH_BYTES:
            raise ConfigurationError(f"ipc path of {endpoint} is longer than 107 bytes")
        lock = _ipc_lock(path)
    with lock:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigurationError(f"cannot bind {endpoint}: {exc}") from exc
        actual = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        try:
            yield actual
        finally:
            if not socket.closed:
                with contextlib.suppress(zmq.ZMQError):
                    socket.unbind(actual)


def check_free(endpoint: str) -> None:
    """Raise :class:`EndpointInUseError` now if another live process holds this ``ipc://``
    endpoint, so a command can refuse before it starts anything (binding later checks
    again; tcp ports are only known taken when bound)."""
    parsed = parse_endpoint(endpoint)
    if parsed.transport != "ipc" or not Path(parsed.address).parent.is_dir():
        return
    with _ipc_lock(Path(parsed.address)):
        pass  # free: the probe's lock is released (and its files removed) at once
