"""``shardctl keys generate`` and ``shardctl worker``: CURVE keys, and workers on other hosts.

Registered on the ``shardctl`` group by :mod:`shardctl.cli`.  Key layout and trust model:
:mod:`shardctl.ipc.security`; remote worker slots: :mod:`shardctl.cluster.remote`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from shardctl.cli.params import Endpoint

#: Exit code of ``shardctl worker`` when its keys or endpoint are unusable (click: usage = 2).
EXIT_CONFIG = 2


def default_key_dir() -> Path:
    """``$SHARDCTL_KEYS``, else ``$XDG_CONFIG_HOME/shardctl/keys`` (``~/.config/...``)."""
    env = os.environ.get("SHARDCTL_KEYS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shardctl" / "keys"


@click.group("keys")
def keys_group() -> None:
    """CURVE keys: encryption and authentication for every shardctl endpoint."""


@keys_group.command("generate")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="key directory  [default: $SHARDCTL_KEYS, else "
                                 "$XDG_CONFIG_HOME/shardctl/keys]")
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="client keypair to create and authorise; repeat for several  "
                   "[default: one per role: worker, consumer, operator, supervisor]")
@click.option("--role", type=click.Choice(["worker", "consumer", "operator", "supervisor"]),
              default=None,
              help="the role of the --client keys (default: the role each is named after)")
@click.option("--force", is_flag=True,
              help="replace existing keypairs (every client must then get the new files)")
def keys_generate(directory: Path | None, clients: tuple[str, ...], role: str | None,
                  force: bool) -> None:
    """Create the supervisor's keypair and client keypairs, and authorise each client for
    its role.

    worker: run shards (control, events in, limiter); consumer: subscribe to events only;
    operator: full status, subscribe, configure a limiter; supervisor: use a shared
    limiter.  Copy DIR/server.key and DIR/clients/NAME.key_secret to that client's host;
    the server keypair stays on the supervisor's host.  Existing keys are kept unless
    --force, so running it again is safe (it also moves keys of the older flat layout).
    """
    from shardctl.errors import ConfigurationError
    from shardctl.ipc.security import DEFAULT_CLIENTS, generate_keys

    if role is not None and not clients:
        raise click.UsageError("--role needs --client NAME")
    target = directory or default_key_dir()
    try:
        written = generate_keys(target, clients or DEFAULT_CLIENTS, role=role, force=force)
    except ConfigurationError as exc:  # a bad --client name, a --dir not ours: usage, 2
        raise click.UsageError(str(exc)) from None
    except OSError as exc:  # e.g. a parent directory that is a file or not writable
        raise click.BadParameter(f"cannot write keys in {target}: {exc.strerror or exc}",
                                 param_hint="'--dir'") from None
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"keys in {target} (directory 0700, files 0600)")


@click.command("worker")
@click.option("--supervisor", "control_endpoint", required=True, metavar="tcp://HOST:PORT",
              type=Endpoint(),
              envvar="SHARDCTL_SUPERVISOR", show_envvar=True,
              help="the supervisor's control endpoint (its --control-endpoint)")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHARDCTL_KEYS", show_envvar=True,
              help="CURVE key directory holding server.key and clients/NAME.key_secret")
@click.option("--name", "key_name", default="worker", show_default=True,
              help="which client keypair of --keys to use")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def worker_command(control_endpoint: str, keys: Path | None, key_name: str,
                   log_level: str) -> None:
    """Join a supervisor, possibly on another host, and run the shards it assigns.

    The supervisor needs a free remote slot (`shardctl run --remote-workers N`).  Across
    hosts both ends need CURVE keys: the supervisor must authorise this key with the worker
    role (`shardctl keys generate` makes clients/worker).
    If this worker's host vanishes, the supervisor moves its shards to a live worker, where
    they RESUME.  Exits when the supervisor stops it or stays silent.
    """
    import logging

    import anyio

    from shardctl.errors import ConfigurationError
    from shardctl.ipc import endpoints
    from shardctl.ipc.security import load_client
    from shardctl.worker.process import run_worker

    logging.basicConfig(level=log_level,
                        format="%(asctime)s worker %(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        endpoints.parse_endpoint(control_endpoint)
        curve = load_client(keys, key_name) if keys is not None else None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    if curve is None and not endpoints.is_loopback(control_endpoint):
        click.echo("shardctl: warning: no --keys: the token and all traffic would cross the "
                   "network unencrypted; a supervisor reachable from here runs CURVE and "
                   "will not answer", err=True)
    try:
        code = anyio.run(run_worker, control_endpoint, None, curve, backend="asyncio")
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
