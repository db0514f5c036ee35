"""``shardctl send status|voice|members``: gateway commands to a running supervisor.

Registered on the ``shardctl`` group by :mod:`shardctl.cli`.  Each subcommand is one
:class:`shardctl.ipc.commands_client.Commands` request over the control channel: it needs the
operator role (``--keys`` with clients/operator, or the private ipc:// endpoint).  Exit codes
follow ``shardctl status``: 0 every shard answered ok, 1 a shard failed or the supervisor
refused, 2 a wrong value, 3 no supervisor answered.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shardctl.cli.params import Endpoint, FiniteFloat, StrParamType

if TYPE_CHECKING:
    from shardctl.ipc.commands_client import CommandReply, Commands

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


class Snowflake(StrParamType):
    """A Discord id: ASCII digits in the unsigned 64-bit range."""

    name = "snowflake"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from shardctl.errors import ConfigurationError
        from shardctl.gateway.sharding import parse_snowflake

        try:
            return str(parse_snowflake(value if isinstance(value, int) else str(value)))
        except ConfigurationError:
            self.fail(f"{str(value)[:40]!r} is not a Discord id (digits, below 2**64)",
                      param, ctx)


def _check_stream(ctx: click.Context, param: click.Parameter, value: str | None
                  ) -> str | None:
    from shardctl.errors import ConfigurationError
    from shardctl.stream.settings import check_servers

    try:
        return None if value is None else check_servers(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


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
        click.option("--stream", default=None, metavar="nats://HOST:PORT[,...]",
                     callback=_check_stream,
                     help="send over NATS request-reply to a supervisor run with "
                          "--stream-commands, instead of its control channel"),
        click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=15.0,
                     show_default=True, metavar="SECONDS",
                     help="how long to wait for the supervisor's answer"),
        click.option("--json", "as_json", is_flag=True,
                     help="print each shard's reply as one JSON object per line"),
    ]):
        func = decorator(func)
    return func


@click.group("send")
def send_group() -> None:
    """Send gateway commands through a running supervisor (needs the operator role).

    Each command goes to the shard that owns the guild (or, for status, to every shard);
    one line per shard reply.  Exit codes: 0 all ok, 1 a shard failed or the supervisor
    refused, 3 no supervisor answered.
    """


@send_group.command("status")
@click.option("--status", "status", required=True,
              type=click.Choice(["online", "idle", "dnd", "invisible"]),
              help="the presence status to set")
@click.option("--activity", default=None, metavar="NAME",
              help="a 'Playing NAME' activity (none by default)")
@click.option("--shard", type=click.IntRange(min=0), default=None,
              help="only this shard  [default: every shard]")
@_common
def send_status(status: str, activity: str | None, shard: int | None, **common: Any) -> None:
    """Op 3: set the bot's presence on every shard, or on one."""
    presence = {"since": None, "afk": False, "status": status,
                "activities": [] if activity is None else [{"name": activity, "type": 0}]}
    _send(lambda c: c.update_status(presence, shard), **common)


@send_group.command("voice")
@click.option("--guild", required=True, type=Snowflake(), help="the guild id")
@click.option("--channel", type=Snowflake(), default=None,
              help="the voice channel to join (omit with --leave)")
@click.option("--leave", is_flag=True, help="leave the guild's voice channel")
@click.option("--mute", is_flag=True, help="join self-muted")
@click.option("--deaf", is_flag=True, help="join self-deafened")
@_common
def send_voice(guild: str, channel: str | None, leave: bool, mute: bool, deaf: bool,
               **common: Any) -> None:
    """Op 4: join (or leave) a voice channel of one guild, on the shard that owns it."""
    if (channel is None) == (not leave):
        raise click.UsageError("give --channel C to join, or --leave (not both)")

    async def one(c: Commands) -> list[CommandReply]:
        return [await c.update_voice(guild, channel, mute, deaf)]

    _send(one, **common)


@send_group.command("members")
@click.option("--guild", required=True, type=Snowflake(), help="the guild id")
@click.option("--query", default="", show_default=True,
              help="members whose name starts with this ('' = all: needs GUILD_MEMBERS)")
@click.option("--limit", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="at most this many members (0 = no limit)")
@click.option("--wait", type=FiniteFloat(min=0, max=120, min_open=True), default=30.0,
              show_default=True, metavar="SECONDS", help="how long the chunks may take")
@_common
def send_members(guild: str, query: str, limit: int, wait: float, **common: Any) -> None:
    """Op 8: fetch a guild's members through the shard that owns it; prints how many (with
    --json, the members)."""
    async def one(c: Commands) -> list[CommandReply]:
        return [await c.fetch_guild_members(guild, query=query, limit=limit, timeout=wait)]

    _send(one, **common)


def _send(call: Callable[[Commands], Awaitable[CommandReply | list[CommandReply]]], *,
          control_endpoint: str | None, keys: Path | None, timeout: float,
          as_json: bool, stream: str | None = None) -> None:
    import anyio

    from shardctl.errors import ConfigurationError, ProtocolError
    from shardctl.ipc import endpoints
    from shardctl.ipc.commands_client import CommandRefusedError, Commands
    from shardctl.ipc.security import load_client

    try:
        endpoint = control_endpoint or endpoints.ipc_endpoint("control.sock")
        curve = None if keys is None else load_client(keys, "operator")
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None

    async def ask() -> list[CommandReply]:
        if stream is not None:
            from shardctl.stream.commands import StreamCommands

            client: Commands = StreamCommands(stream, timeout=timeout)
        else:
            client = Commands(endpoint, keys=curve, timeout=timeout)
        async with client as commands:
            result = await call(commands)
        return result if isinstance(result, list) else [result]

    try:
        replies = anyio.run(ask, backend="asyncio")
    except (TimeoutError, ProtocolError) as exc:
        click.echo(f"shardctl: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except CommandRefusedError as exc:
        click.echo(f"shardctl: the supervisor refused: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except ConfigurationError as exc:  # --stream without the nats extra
        click.echo(f"shardctl: error: {exc}", err=True)
        sys.exit(2)
    for reply in replies:
        click.echo(_line(reply, as_json))
    if not all(replies):
        sys.exit(EXIT_FAILED)


def _line(reply: CommandReply, as_json: bool) -> str:
    if as_json:
        import orjson

        return orjson.dumps(reply.to_body()).decode()
    if not reply.ok:
        return f"shard {reply.shard}: failed: {reply.error}"
    if isinstance(reply.value, list):
        return f"shard {reply.shard}: ok, {len(reply.value)} members"
    return f"shard {reply.shard}: ok"
