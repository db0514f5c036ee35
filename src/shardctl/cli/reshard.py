"""``shardctl reshard [--shards N|auto]``: move a running cluster to a new shard count.

Registered on the ``shardctl`` group by :mod:`shardctl.cli`.  One
:class:`shardctl.ipc.commands_client.Commands` request over the control channel (the
operator role, like ``shardctl send``); the supervisor does the work (cluster/reshard.py)
and answers when the bus has switched.  Exit codes: 0 resharded, 1 refused or abandoned
(the old set keeps serving), 2 a wrong value, 3 no supervisor answered.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from shardctl.cli.params import Endpoint, FiniteFloat, StrParamType

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class ShardCount(StrParamType):
    """``auto`` or a shard count the cluster can run."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from shardctl.cluster.planner import MAX_SHARDS

        text = str(value)
        if text == "auto":
            return text
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_SHARDS:
            self.fail(f"{str(value)[:40]!r} is not 'auto' or a shard count from 1 to "
                      f"{MAX_SHARDS}", param, ctx)
        return str(int(text))


@click.command("reshard")
@click.option("--shards", type=ShardCount(), default="auto", show_default=True,
              help="the new shard count; auto = Discord's recommendation")
@click.option("--control-endpoint", envvar="SHARDCTL_CONTROL_ENDPOINT", default=None,
              metavar="ENDPOINT", show_envvar=True, type=Endpoint(),
              help="the supervisor's control endpoint  [default: ipc://<runtime "
                   "dir>/control.sock]")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHARDCTL_KEYS", show_envvar=True,
              help="CURVE key directory of a supervisor run with --keys (its operator "
                   "keypair, clients/operator)")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=900.0,
              show_default=True, metavar="SECONDS",
              help="how long to wait for the switch (the new set IDENTIFYs at the bucket "
                   "pace first)")
@click.option("--json", "as_json", is_flag=True, help="print the outcome as one JSON object")
def reshard_command(shards: str, control_endpoint: str | None, keys: Path | None,
                    timeout: float, as_json: bool) -> None:
    """Reshard a running cluster without a gap in events (needs the operator role).

    The budget is checked first; a new shard set starts beside the running one, the event
    bus switches once all of it is READY, and the old sessions close (README "Resharding").
    """
    import anyio
    import orjson

    from shardctl.errors import ConfigurationError, ProtocolError
    from shardctl.ipc import endpoints
    from shardctl.ipc.commands_client import CommandRefusedError, Commands
    from shardctl.ipc.security import load_client

    try:
        endpoint = control_endpoint or endpoints.ipc_endpoint("control.sock")
        curve = None if keys is None else load_client(keys, "operator")
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    target: int | str = shards if shards == "auto" else int(shards)

    async def ask() -> dict[str, Any]:
        # The connection waits as long as the answer may take (a DEALER's send waits too).
        async with Commands(endpoint, keys=curve, timeout=timeout) as commands:
            return await commands.reshard(target, wait=timeout)

    try:
        result = anyio.run(ask, backend="asyncio")
    except (TimeoutError, ProtocolError) as exc:
        click.echo(f"shardctl: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except CommandRefusedError as exc:
        click.echo(f"shardctl: reshard: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(f"resharded {result.get('old_shards')} -> {result.get('new_shards')} "
                   f"shards; {result.get('overlap_events')} events of the overlap marked")
