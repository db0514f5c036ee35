"""What ``shardctl run`` and ``shardctl sandbox`` check before they start anything.

Parameter types (``cli.params``) judge each value alone; what needs the machine -- can this
port be listened on, does this host name resolve, can the runtime directory be created,
do the keys load, may the token go to this API -- is checked here, once, before a sandbox
starts, Discord is asked or a worker is spawned.  A failure is a usage error naming the
option (exit 2), never a traceback from inside a running cluster.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import click

from shardctl.errors import ConfigurationError

__all__ = ["check_listen", "check_run"]


def check_listen(host: str, port: int, *, host_option: str, port_option: str) -> None:
    """Refuse an address a TCP server could not listen on: a name that does not resolve,
    an address of another machine, a port in use.

    Binds and closes a socket per resolved address with the options anyio's listener uses
    (SO_REUSEADDR, IPv6-only), so a port that passes here is free for it a moment later.
    """
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.BadParameter(
            f"{host!r} does not resolve ({why}); expected an IP address or a host name of "
            "this machine", param_hint=f"'{host_option}'") from None
    for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4]) for i in infos):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise click.BadParameter(
                    f"cannot listen on {host} port {port}: {exc.strerror or exc}"
                    + (" (another process listens there; pick another port)"
                       if port and exc.errno == errno.EADDRINUSE else ""),
                    param_hint=f"'{port_option}' / '{host_option}'") from None


def check_run(*, token: str | None, api_url: str | None, keys: Path | None,
              state_file: Path | None, metrics: tuple[str, int] | None,
              bind_endpoints: dict[str, str | None]) -> None:
    """Everything ``run`` can find wrong before starting; raises a click usage error.

    ``bind_endpoints``: option name -> endpoint this supervisor binds (None: default).
    """
    from shardctl.cluster import config as cfg
    from shardctl.ipc import endpoints

    try:
        run_dir = endpoints.runtime_dir()
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if token is None and api_url is not None:
        raise click.UsageError(
            f"--api-url {api_url} needs a token (DISCORD_TOKEN or --token-file); without one "
            "shardctl runs its built-in sandbox")
    if token is not None and api_url is not None:
        try:
            cfg.check_api_url_for_token(api_url)
        except ConfigurationError as exc:  # the message names --api-url
            raise click.UsageError(str(exc)) from None
    _check_binds(bind_endpoints, run_dir, curve=keys is not None)
    _check_default_endpoints_free(run_dir, bind_endpoints)
    if keys is not None:
        _check_keys(keys)
    if state_file is not None or token is not None:
        _check_state_file(state_file)
    if metrics is not None:
        check_listen(*metrics, host_option="--metrics-host", port_option="--metrics-port")


def _check_binds(bind_endpoints: dict[str, str | None], run_dir: Path, *, curve: bool
                 ) -> None:
    """Each endpoint given to bind: allowed without keys, concrete enough for remote
    workers, its directory there, and not held by another process."""
    from shardctl.cluster.remote import service_endpoint
    from shardctl.ipc import endpoints

    for option, endpoint in bind_endpoints.items():
        if endpoint is None:
            continue
        try:
            endpoints.check_bind_allowed(endpoint, curve=curve)
            if option == "--control-endpoint":
                service_endpoint(endpoint, "limiter", run_dir)
            parsed = endpoints.parse_endpoint(endpoint)
            if parsed.transport == "ipc" and not Path(parsed.address).parent.is_dir():
                raise ConfigurationError(f"the directory of {endpoint} does not exist")
            endpoints.check_free(endpoint)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), param_hint=f"'{option}'") from None


def _check_default_endpoints_free(run_dir: Path,
                                  bind_endpoints: dict[str, str | None]) -> None:
    """A second ``run`` in the same runtime directory finds the first one's sockets taken:
    say so before starting, not after asking Discord."""
    from shardctl.ipc import endpoints

    default_events = bind_endpoints.get("--events-endpoint") is None
    names = ["events.sock" if default_events else None,
             "events-batch.sock" if default_events and bind_endpoints.get(
                 "--events-batch-endpoint") is None else None,
             "control.sock" if bind_endpoints.get("--control-endpoint") is None else None]
    for name in filter(None, names):
        try:
            endpoints.check_free(endpoints.ipc_endpoint(name, run_dir))
        except ConfigurationError as exc:
            raise click.UsageError(
                f"{exc}: is another `shardctl run` using this runtime directory? Stop it, "
                f"or give this one its own (SHARDCTL_RUNTIME_DIR)") from None


def _check_keys(keys: Path) -> None:
    from shardctl.ipc.security import load_server

    try:
        load_server(keys)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="'--keys'") from None


def _check_state_file(state_file: Path | None) -> None:
    """The sessions are written continuously and on stop: a path that cannot be written
    would lose them, so it is refused now.  The default file's name depends on the bot and
    shard set (known later); its directory is checked."""
    from shardctl.cluster.sessions import state_dir

    hint = "'--state-file'"
    if state_file is not None and state_file.is_dir():
        raise click.BadParameter(f"{state_file} is a directory; expected a file path",
                                 param_hint=hint)
    directory = state_file.parent if state_file is not None else state_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create the state directory {directory}: {exc.strerror or exc}",
            param_hint=hint) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise click.BadParameter(f"the state directory {directory} is not writable",
                                 param_hint=hint)
