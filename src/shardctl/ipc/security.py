"""CURVE encryption and authentication for every shardctl channel (pyzmq's ``zmq.auth``).

Without keys, every endpoint is an ``ipc://`` file in the 0700 runtime directory or a
loopback ``tcp://`` port: only this user on this host can reach it, which is what makes the
control channel's commands (and the token in each assignment) safe.  With keys, every server
socket (supervisor control, events in and out, limiter) runs CURVE: traffic is encrypted,
clients must prove they hold an authorised key, and binds other hosts can reach are allowed
(:func:`shardctl.ipc.endpoints.check_bind_allowed`).

Roles.  Every client key belongs to one role, and each server socket admits only the roles
that may use it (:data:`ADMITTED`)::

    worker      control (register, beats, state, replies), events in, the limiter
    consumer    events out: subscribe, nothing else
    operator    control (full status; registering needs a worker's credential), events
                out, the limiter (configure)
    supervisor  a shared limiter (``shardctl limiter``): configure it, ask for grants

Key directory, made by ``shardctl keys generate --dir DIR`` (dir 0700, files 0600)::

    DIR/server.key                       the servers' public key: copy it to every client host
    DIR/server.key_secret                the servers' keypair: stays on the supervisor's host
    DIR/clients/NAME.key                 a client's public key
    DIR/clients/NAME.key_secret          a client's keypair: copy it to that client's host
    DIR/authorized/ROLE/NAME.key         public keys the servers accept, by role (revoke:
                                         delete, restart)

Files use ZeroMQ's certificate format (``zmq.auth.create_certificates``), so czmq tools and
other languages can read them.  ``keys generate`` makes one client per role, named after
it (``worker``, ``consumer``, ``operator``, ``supervisor``), unless told otherwise; more
clients are added with a role of their own.  A host that runs workers needs ``server.key``
and ``clients/worker.key_secret`` in the same layout.  The layout of earlier versions had
``authorized/NAME.key``: such a file still counts, as role NAME, when NAME is a role; any
other flat file is refused (re-running ``shardctl keys generate`` moves the role ones and
keeps every key).

Who checks keys: a ZAP handler (``zmq.auth.thread.ThreadAuthenticator``; a thread, so it
serves sync and asyncio sockets alike) is started once per ZeroMQ context, before the first
CURVE server socket of that context binds -- a CURVE server without a ZAP handler would
accept any client key.  Each server socket gets a ZAP domain named after its set of
authorised keys, so servers with different key sets can share a context.  An unknown client
key, or a key of a role the socket does not admit, fails the handshake: the client is never
connected and receives nothing.  An admitted client's connection carries the ZAP User-Id
``"ROLE:NAME"``; a server reads it per message with :func:`peer_role` (receive with
``copy=False``), for checks finer than a socket's set of roles.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from shardctl.errors import ConfigurationError

__all__ = [
    "ADMITTED",
    "DEFAULT_CLIENTS",
    "CurveClient",
    "CurveServer",
    "Role",
    "for_socket",
    "generate_keys",
    "load_client",
    "load_server",
    "peer_role",
    "peer_user",
]

log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    """Who a client key speaks for (module docstring)."""

    WORKER = "worker"
    CONSUMER = "consumer"
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"


#: The roles each server socket admits: its CURVE handshake refuses every other key.
ADMITTED: Final[Mapping[str, frozenset[Role]]] = {
    "control": frozenset({Role.WORKER, Role.OPERATOR}),
    "events_in": frozenset({Role.WORKER}),
    "events_out": frozenset({Role.CONSUMER, Role.OPERATOR}),
    "limiter": frozenset({Role.WORKER, Role.SUPERVISOR, Role.OPERATOR}),
}



def for_socket(curve: CurveServer | None, socket: str) -> CurveServer | None:
    """``curve`` narrowed to the roles server ``socket`` admits (a key of :data:`ADMITTED`)."""
    return None if curve is None else curve.admitting(ADMITTED[socket])


SERVER: Final = "server"
CLIENTS_DIR: Final = "clients"
AUTHORIZED_DIR: Final = "authorized"
#: The client keypairs ``shardctl keys generate`` makes by default: one per role.
DEFAULT_CLIENTS: Final = tuple(str(role) for role in Role)
_REGENERATE: Final = "re-run `shardctl keys generate` (existing keys are kept)"


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigurationError("this libzmq was built without CURVE support")


def _role(text: str) -> Role | None:
    try:
        return Role(text)
    except ValueError:
        return None


def peer_user(frame: zmq.Frame) -> str | None:
    """The ``"ROLE:NAME"`` of the CURVE client that sent ``frame`` (None without CURVE)."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:  # EINVAL: the connection carries no User-Id (no ZAP, no CURVE)
        return None
    return user if isinstance(user, str) and ":" in user else None


def peer_role(frame: zmq.Frame) -> Role | None:
    """The role of the CURVE client that sent ``frame``; None for a peer without a key.

    ``frame`` is any frame of a message received with ``copy=False``.  A socket admits only
    its roles (:data:`ADMITTED`); this tells them apart per message.
    """
    user = peer_user(frame)
    return None if user is None else _role(user.partition(":")[0])


# -- key files -------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigurationError(f"key directory {path} is not a directory")
    os.chmod(path, 0o700)


def _roles_of(names: list[str], role: str | None) -> dict[str, Role]:
    """Each client name's role: ``role`` for all, else the name itself must be a role."""
    chosen = None if role is None else _role(role)
    if role is not None and chosen is None:
        raise ConfigurationError(
            f"unknown role {role!r}: choose one of {', '.join(DEFAULT_CLIENTS)}")
    roles: dict[str, Role] = {}
    for name in names:
        if not name or "/" in name or name.startswith(".") or name == SERVER:
            raise ConfigurationError(f"invalid client key name {name!r}")
        own = chosen or _role(name)
        if own is None:
            raise ConfigurationError(
                f"client {name!r} needs a role: --role {'|'.join(DEFAULT_CLIENTS)}")
        roles[name] = own
    return roles


def generate_keys(directory: Path, clients: Iterable[str] = DEFAULT_CLIENTS, *,
                  role: str | None = None, force: bool = False) -> list[Path]:
    """Create the layout in the module docstring; the files written.

    Each client is authorised as ``role``, or, without one, as the role it is named after.
    An existing server keypair is kept (clients already trust it) unless ``force``; an
    existing client keypair is kept too, and authorised again (a flat ``authorized/NAME.key``
    of the old layout moves under its role).
    """
    _require_curve()
    roles = _roles_of(list(clients), role)
    authorized = directory / AUTHORIZED_DIR
    for name, own in roles.items():
        other = next((r for r in Role if r != own and (authorized / r / f"{name}.key").exists()),
                     None)
        if other is not None:
            raise ConfigurationError(
                f"client {name!r} is already authorised as {other}: delete "
                f"{authorized / other / f'{name}.key'} first, or choose another name")
    for path in [directory, directory / CLIENTS_DIR, authorized,
                 *(authorized / r for r in set(roles.values()))]:
        _private_dir(path)
    written: list[Path] = []
    old = os.umask(0o077)
    try:
        if force or not (directory / f"{SERVER}.key_secret").exists():
            written += _create(directory, SERVER)
        for name, own in roles.items():
            written += _authorise(directory, name, own, force=force)
    finally:
        os.umask(old)
    return written


def _authorise(directory: Path, name: str, role: Role, *, force: bool) -> list[Path]:
    written: list[Path] = []
    public_file = directory / CLIENTS_DIR / f"{name}.key"
    if force or not (directory / CLIENTS_DIR / f"{name}.key_secret").exists():
        written += _create(directory / CLIENTS_DIR, name)
    public, _ = zmq.auth.load_certificate(public_file)
    target = directory / AUTHORIZED_DIR / role / f"{name}.key"
    target.write_bytes(public_file.read_bytes())
    os.chmod(target, 0o600)
    with contextlib.suppress(FileNotFoundError):
        (directory / AUTHORIZED_DIR / f"{name}.key").unlink()  # the old flat layout
    written.append(target)
    log.debug("authorised client key %s as %s (%s)", name, role, public.decode()[:8])
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


def _authorized_files(authorized: Path) -> Iterable[tuple[Path, Role, str]]:
    """Every authorised key file with its role and client name (module docstring)."""
    for entry in sorted(authorized.iterdir()):
        if entry.is_dir():
            role = _role(entry.name)
            if role is None:
                raise ConfigurationError(
                    f"{entry} is not a role directory ({', '.join(DEFAULT_CLIENTS)})")
            for path in sorted(entry.glob("*.key")):
                yield path, role, path.stem
        elif entry.suffix == ".key":
            role = _role(entry.stem)
            if role is None:
                raise ConfigurationError(
                    f"{entry} has no role (an older key layout): {_REGENERATE}, with "
                    f"--client {entry.stem} --role ROLE for this key")
            yield entry, role, entry.stem


def load_server(directory: Path) -> CurveServer:
    """The server keypair and the authorised client keys (with their roles) of a key
    directory.  The result admits every role: narrow it with :meth:`CurveServer.admitting`."""
    _require_curve()
    public, secret = _load(directory / f"{SERVER}.key_secret", secret=True)
    assert secret is not None
    authorized = directory / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise ConfigurationError(f"{authorized} is missing: no client could ever connect")
    clients: dict[bytes, str] = {}
    for path, role, name in _authorized_files(authorized):
        key = _load(path, secret=False)[0]
        user = f"{role}:{name}"
        if clients.setdefault(key, user) != user:
            raise ConfigurationError(
                f"{path} is the same key as {clients[key]}: one key, one role")
    return CurveServer(public=public, secret=secret, clients=clients)


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
    """A server socket's keys (z85): its keypair and the client public keys it accepts,
    each with the ``"ROLE:NAME"`` its connections carry as ZAP User-Id."""

    public: bytes
    secret: bytes = field(repr=False)
    clients: Mapping[bytes, str] = field(default_factory=dict, hash=False)

    @property
    def authorized(self) -> frozenset[bytes]:
        return frozenset(self.clients)

    def admitting(self, roles: Iterable[str]) -> CurveServer:
        """The same keys, narrowed to clients of ``roles`` (e.g. ``ADMITTED["control"]``)."""
        wanted = {str(r) for r in roles}
        return replace(self, clients={key: user for key, user in self.clients.items()
                                      if user.partition(":")[0] in wanted})

    @property
    def domain(self) -> str:
        """ZAP domain of this key set (sockets with different sets share a context)."""
        lines = sorted(key + b" " + user.encode() for key, user in self.clients.items())
        digest = hashlib.sha256(b"\n".join(lines)).hexdigest()[:16]
        return f"shardctl-{digest}"

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` a CURVE server; call before ``bind``."""
        _require_curve()
        _authenticator_for(socket.context).allow(self.domain, self.clients)
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
    """ZAP credentials provider: the keys allowed per domain, and who each key is."""

    def __init__(self) -> None:
        self.by_domain: dict[str, frozenset[bytes]] = {}
        self.users: dict[bytes, str] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.by_domain.get(domain, frozenset())
        if not allowed:
            log.warning("rejected a CURVE client with a key this socket does not admit (%s...)",
                        key[:8].decode(errors="replace"))
        return allowed


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, with ``"ROLE:NAME"`` as the User-Id of an admitted client."""

    def __init__(self, context: zmq.Context[Any], keys: _Keys) -> None:
        super().__init__(context)
        self.keys = keys

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85_key = z85.encode(client_public_key)
        # Every admitted key is known (the callback admitted it): the fallback is for form.
        return self.keys.users.get(z85_key, "unknown:" + z85_key.decode()[:8])


class _Zap:
    """One ZAP handler per ZeroMQ context (it binds ``inproc://zeromq.zap.01`` there)."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.keys = _Keys()
        self.auth = _Authenticator(zmq.Context.shadow(context.underlying), self.keys)
        self.auth.start()

    def allow(self, domain: str, clients: Mapping[bytes, str]) -> None:
        self.keys.users.update(clients)
        keys = frozenset(clients)
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


def stop_authenticator(context: zmq.Context[Any]) -> None:
    """Stop the ZAP handler of ``context``, if it has one, before it is terminated (its
    socket would hold ``term()`` forever; a later context at the same address must not
    find it)."""
    with _zaps_lock:
        zap = _zaps.pop(context.underlying, None)
    if zap is not None:
        zap.auth.stop()
