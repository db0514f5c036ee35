"""CURVE encryption and authentication for every shardctl channel (pyzmq's ``zmq.auth``).

Without keys, every endpoint is an ``ipc://`` file in the 0700 runtime directory or a
loopback ``tcp://`` port: only this user on this host can reach it, which is what makes the
control channel's commands (and the token in each assignment) safe.  With keys, every server
socket (supervisor control, events in and out, limiter) runs CURVE: traffic is encrypted,
clients must prove they hold an authorised key, and binds other hosts can reach are allowed
(:func:`shardctl.ipc.endpoints.check_bind_allowed`).

Key directory, made by ``shardctl keys generate --dir DIR`` (dir 0700, files 0600)::

    DIR/server.key                 the servers' public key: copy it to every client host
    DIR/server.key_secret          the servers' keypair: stays on the supervisor's host
    DIR/clients/NAME.key           a client's public key
    DIR/clients/NAME.key_secret    a client's keypair: copy it to that client's host
    DIR/authorized/NAME.key        public keys the servers accept (revoke: delete, restart)

Files use ZeroMQ's certificate format (``zmq.auth.create_certificates``), so czmq tools and
other languages can read them.  ``keys generate`` makes the clients ``worker`` and
``consumer`` unless told otherwise.  A host that runs workers needs ``server.key`` and
``clients/worker.key_secret`` in the same layout.

Who checks keys: a ZAP handler (``zmq.auth.thread.ThreadAuthenticator``; a thread, so it
serves sync and asyncio sockets alike) is started once per ZeroMQ context, before the first
CURVE server socket of that context binds -- a CURVE server without a ZAP handler would
accept any client key.  Each server socket gets a ZAP domain named after its set of
authorised keys, so servers with different key sets can share a context.  An unknown client
key fails the handshake: the client is never connected and receives nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shardctl.errors import ConfigurationError

__all__ = [
    "DEFAULT_CLIENTS",
    "CurveClient",
    "CurveServer",
    "generate_keys",
    "load_client",
    "load_server",
]

log = logging.getLogger(__name__)

SERVER: Final = "server"
CLIENTS_DIR: Final = "clients"
AUTHORIZED_DIR: Final = "authorized"
#: The client keypairs ``shardctl keys generate`` makes by default.
DEFAULT_CLIENTS: Final = ("worker", "consumer")


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigurationError("this libzmq was built without CURVE support")


# -- key files -------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"key directory {path} is not a directory")
    os.chmod(path, 0o700)


def generate_keys(directory: Path, clients: Iterable[str] = DEFAULT_CLIENTS, *,
                  force: bool = False) -> list[Path]:
    """Create the layout in the module docstring; the files written.

    An existing server keypair is kept (clients already trust it) unless ``force``; an
    existing client keypair is kept too, and authorised again.
    """
    _require_curve()
    names = list(clients)
    for name in names:
        if not name or "/" in name or name.startswith(".") or name == SERVER:
            raise ConfigurationError(f"invalid client key name {name!r}")
    _private_dir(directory)
    _private_dir(directory / CLIENTS_DIR)
    _private_dir(directory / AUTHORIZED_DIR)
    written: list[Path] = []
    old = os.umask(0o077)
    try:
        if force or not (directory / f"{SERVER}.key_secret").exists():
            written += _create(directory, SERVER)
        for name in names:
            if force or not (directory / CLIENTS_DIR / f"{name}.key_secret").exists():
                written += _create(directory / CLIENTS_DIR, name)
            public, _ = zmq.auth.load_certificate(directory / CLIENTS_DIR / f"{name}.key")
            target = directory / AUTHORIZED_DIR / f"{name}.key"
            target.write_bytes((directory / CLIENTS_DIR / f"{name}.key").read_bytes())
            os.chmod(target, 0o600)
            written.append(target)
            log.debug("authorised client key %s (%s)", name, public.decode()[:8])
    finally:
        os.umask(old)
    return written


def _create(directory: Path, name: str) -> list[Path]:
    public, secret = zmq.auth.create_certificates(directory, name)
    paths = [Path(public), Path(secret)]
    for path in paths:
        os.chmod(path, 0o600)
    return paths


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigurationError(
            f"CURVE key file {path} is missing (create keys with `shardctl keys generate`)")
    if secret and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ConfigurationError(
            f"CURVE secret key {path} is readable by other users: chmod 600 it")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read CURVE key file {path}: {exc}") from None
    if secret and secret_key is None:
        raise ConfigurationError(f"CURVE key file {path} holds no secret key")
    return public, secret_key


def load_server(directory: Path) -> CurveServer:
    """The server keypair and the authorised client keys of a key directory."""
    _require_curve()
    public, secret = _load(directory / f"{SERVER}.key_secret", secret=True)
    assert secret is not None
    authorized = directory / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise ConfigurationError(f"{authorized} is missing: no client could ever connect")
    keys = frozenset(_load(p, secret=False)[0] for p in sorted(authorized.glob("*.key")))
    return CurveServer(public=public, secret=secret, authorized=keys)


def load_client(directory: Path, name: str = "worker") -> CurveClient:
    """The server's public key and the keypair of client ``name`` from a key directory."""
    _require_curve()
    server_public, _ = _load(directory / f"{SERVER}.key", secret=False)
    public, secret = _load(directory / CLIENTS_DIR / f"{name}.key_secret", secret=True)
    assert secret is not None
    return CurveClient(server_public=server_public, public=public, secret=secret)


# -- sockets ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurveServer:
    """A server socket's keys (z85): its keypair and the client public keys it accepts."""

    public: bytes
    secret: bytes = field(repr=False)
    authorized: frozenset[bytes] = field(default_factory=frozenset)

    @property
    def domain(self) -> str:
        """ZAP domain of this key set (sockets with different sets share a context)."""
        digest = hashlib.sha256(b"\n".join(sorted(self.authorized))).hexdigest()[:16]
        return f"shardctl-{digest}"

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server; call before ``bind``."""
        _require_curve()
        _authenticator_for(socket.context).allow(self.domain, self.authorized)
        socket.setsockopt_string(zmq.ZAP_DOMAIN, self.domain)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        socket.setsockopt(zmq.CURVE_SERVER, 1)


@dataclass(frozen=True, slots=True)
class CurveClient:
    """A client socket's keys (z85): the server's public key and its own keypair."""

    server_public: bytes
    public: bytes
    secret: bytes = field(repr=False)

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE client of the server; call before ``connect``."""
        _require_curve()
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


class _Keys:
    """ZAP credentials provider: the keys allowed per domain."""

    def __init__(self) -> None:
        self.by_domain: dict[str, frozenset[bytes]] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.by_domain.get(domain, frozenset())
        if not allowed:
            log.warning("rejected a CURVE client with an unauthorised key (%s...)",
                        key[:8].decode(errors="replace"))
        return allowed


class _Zap:
    """One ZAP handler per ZeroMQ context (it binds ``inproc://zeromq.zap.01`` there)."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.keys = _Keys()
        self.auth = ThreadAuthenticator(zmq.Context.shadow(context.underlying))
        self.auth.start()

    def allow(self, domain: str, keys: frozenset[bytes]) -> None:
        if self.keys.by_domain.get(domain) != keys:
            self.keys.by_domain[domain] = keys
            self.auth.configure_curve_callback(domain, credentials_provider=self.keys)


_zaps: dict[int, _Zap] = {}
_zaps_lock = threading.Lock()


def _authenticator_for(context: zmq.Context[Any]) -> _Zap:
    with _zaps_lock:
        zap = _zaps.get(context.underlying)
        if zap is None:
            zap = _zaps[context.underlying] = _Zap(context)
        return zap


def stop_authenticators() -> None:
    """Stop every ZAP handler (tests that ``term()`` their own contexts need this)."""
    with _zaps_lock:
        zaps = list(_zaps.values())
        _zaps.clear()
    for zap in zaps:
        zap.auth.stop()
