"""``shardctl drain --worker N`` and ``shardctl restart-workers [--rolling]`` (issue 16).

Registered on the ``shardctl`` group by :mod:`shardctl.cli`.  Each is one ``operation``
request to a running supervisor (:mod:`shardctl.ipc.operations`; the operator role, like
``shardctl send``), which hands the workers' shards to fresh processes with RESUME
(cluster/rolling.py).  A progress line is printed whenever the progress changes, the
outcome at the end.  Exit codes: 0 done, 1 refused or failed (one ``Error:`` line saying
why), 2 a wrong value, 3 no supervisor answered.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from shardctl.cli.params import Endpoint, FiniteFloat

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


def _common(func: Callable[..., None]) -> Callable[..., None]:
    for decorator in reversed([
        click.option("--control-endpoint", envvar="SHARDCTL_CONTROL_ENDPOINT", default=None,
                     metavar="ENDPOINT", show_envvar=True, type=Endpoint(),
                     help="the supervisor's control endpoint  [default: ipc://<runtime "
                          "dir>/control.sock]"),
        click.option("--keys", type=click.Path(file_okay=False, path_type=Path),
                     default=None, envvar="SHARDCTL_KEYS", show_envvar=True,
                     help="CURVE key directory of a supervisor run with --keys (its "
                          "operator keypair, clients/operator)"),
        click.option("--ready-timeout", type=FiniteFloat(min=0, max=3600, min_open=True),
                     default=120.0, show_default=True, metavar="SECONDS",
                     help="how long each replacement may take to bring its shards READY"),
        click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=15.0,
                     show_default=True, metavar="SECONDS",
                     help="how long to wait for the supervisor's first answer"),
        click.option("--json", "as_json", is_flag=True,
                     help="print each progress as one JSON object per line"),
    ]):
        func = decorator(func)
    return func


@click.command("drain")
@click.option("--worker", required=True, type=click.IntRange(min=0), metavar="N",
              help="the worker index (as `shardctl status` and the live view show it)")
@_common
def drain_command(worker: int, ready_timeout: float, **common: Any) -> None:
    """Hand one worker's shards to a fresh process: RESUME, no IDENTIFY, nothing lost.

    The worker closes its shards resumably and exits; once its last events are forwarded a
    new process RESUMEs every session from the last forwarded seq and Discord replays what
    was missed.  Needs the operator role.
    """
    _operate("drain", {"worker": worker, "ready_timeout": ready_timeout}, **common)


@click.command("restart-workers")
@click.option("--rolling/--all-at-once", default=True, show_default=True,
              help="one worker at a time (the others keep serving), or every worker at once")
@_common
def restart_workers_command(rolling: bool, ready_timeout: float, **common: Any) -> None:
    """Replace every local worker's process (to load new code) the way `drain` does.

    Every session RESUMEs; no IDENTIFY is spent unless Discord refuses a RESUME.  Workers
    on other hosts are skipped.  Needs the operator role.
    """
    _operate("restart_workers", {"rolling": rolling, "ready_timeout": ready_timeout},
             **common)


def _operate(name: str, args: dict[str, Any], *, control_endpoint: str | None,
             keys: Path | None, timeout: float, as_json: bool) -> None:
    import anyio

    from shardctl.cluster.rolling import operation_text
    from shardctl.errors import ConfigurationError, ProtocolError
    from shardctl.ipc import endpoints
    from shardctl.ipc.operations import OperationError, request_operation
    from shardctl.ipc.security import load_client

    try:
        endpoint = control_endpoint or endpoints.ipc_endpoint("control.sock")
        curve = None if keys is None else load_client(keys, "operator")
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    last: list[str] = []

    def show(progress: Mapping[str, Any]) -> None:
        line = _line(progress, as_json, operation_text)
        if not last or line != last[-1] or as_json:
            last.append(line)
            click.echo(line)

    async def ask() -> Mapping[str, Any]:
        # The supervisor reports each phase, but one replacement may stay in "resuming"
        # for up to --ready-timeout.
        return await request_operation(endpoint, name, args, curve=curve, first=timeout,
                                       silence=timeout + args["ready_timeout"],
                                       on_progress=show)

    try:
        final = anyio.run(ask, backend="asyncio")
    except TimeoutError:
        click.echo(f"Error: no supervisor answered on {endpoint} within {timeout:g} s",
                   err=True)
        sys.exit(EXIT_UNREACHABLE)
    except ProtocolError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except OperationError as exc:
        if exc.progress:
            show(exc.progress)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    show(final)


def _line(progress: Mapping[str, Any], as_json: bool,
          text: Callable[[Mapping[str, Any]], str]) -> str:
    if as_json:
        import orjson

        return orjson.dumps(dict(progress)).decode()
    return text(progress)
