"""The ``shardctl`` command line: the edge where errors become exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from shardctl._version import __version__
from shardctl.cli import settings
from shardctl.cli.params import ApiUrl, Endpoint, FiniteFloat, ShardIds
from shardctl.cli.token import check_token_option, token_file_option, with_token_file
from shardctl.cluster.config import (
    DEFAULT_DRAIN_TIMEOUT,
    MAX_DRAIN_TIMEOUT,
    MAX_IDENTIFY_INTERVAL,
)
from shardctl.heap import freeze_startup_heap

if TYPE_CHECKING:
    from shardctl.cli.liveview import Display


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardctl")
def main() -> None:
    """Run and operate a Discord gateway shard cluster."""


# -- sandbox command (owned by the sandbox work) ------------------------------------------


def _sandbox_options(func: Callable[..., None]) -> Callable[..., None]:
    """One ``--option`` per SandboxConfig field, typed and documented from the dataclass."""
    from shardctl.sandbox.config import ARRIVAL_STAMPS, FIELD_HELP, SandboxConfig
    from shardctl.sandbox.faults import parse_scheduled
    from shardctl.sandbox.routing import ROUTINGS

    def _faults(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
                ) -> tuple[object, ...]:
        try:
            return tuple(parse_scheduled(v) for v in value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    defaults = SandboxConfig()
    for f in reversed(dataclasses.fields(SandboxConfig)):
        flag = "--" + f.name.replace("_", "-")
        help_text = FIELD_HELP[f.name]
        default = getattr(defaults, f.name)
        if f.name == "faults":
            option = click.option(flag, "--fault", "faults", multiple=True, callback=_faults,
                                  metavar="KIND[:ARG]@SECONDS[/SHARD]", help=help_text)
        elif f.name == "token":
            option = click.option(flag, "token", default=default, envvar="SHARDCTL_SANDBOX_TOKEN",
                                  show_default=False, show_envvar=True,
                                  help=help_text + " [default: sandbox-token]")
        elif f.name in ("arrival_stamp", "routing"):
            choices = ARRIVAL_STAMPS if f.name == "arrival_stamp" else ROUTINGS
            option = click.option(flag, f.name, type=click.Choice(choices),
                                  default=default, show_default=True, help=help_text)
        elif isinstance(default, bool):
            name = f.name.replace("_", "-")
            option = click.option(f"--{name}/--no-{name}", f.name, default=default,
                                  show_default=True, help=help_text)
        else:
            # Every number of the sandbox is a count, a duration or a rate: none is negative.
            kind = {"int": click.IntRange(min=0), "float": FiniteFloat(min=0), "str": str,
                    "int | None": click.IntRange(min=0), "str | None": str}[str(f.type)]
            option = click.option(flag, f.name, type=kind, default=default, show_default=True,
                                  help=help_text)
        func = option(func)
    return func


@main.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to bind")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="port serving both REST and the gateway (0: any free port)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--record", "record_path", default=None, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="append the sandbox's record to FILE, one JSON line per record as it "
                   "happens (violations, notes, identify, resume, dispatch, ...)")
@_sandbox_options
def sandbox_command(host: str, port: int, log_level: str, record_path: Path | None,
                    **fields: Any) -> None:
    """Run the local Discord emulator (REST + gateway) until interrupted.

    Point a client's REST base at the printed api URL and its gateway at the gateway URL.
    Every protocol rule the client breaks is logged as a violation.
    """
    import logging
    import signal

    import anyio

    from shardctl.cli.preflight import check_listen
    from shardctl.sandbox import Sandbox, SandboxConfig
    from shardctl.sandbox.record import file_sink

    try:
        config = SandboxConfig(**fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    check_listen(host, port, host_option="--host", port_option="--port")
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve(record: BinaryIO | None) -> None:
        async with Sandbox(config, host=host, port=port) as sb:
            if record is not None:
                sb.recorder.sink = file_sink(record)
            click.echo(f"api:     {sb.api_url}")
            click.echo(f"gateway: {sb.gateway_url}")
            click.echo(f"resume:  {sb.resume_gateway_url}", nl=True)
            # SIGTERM (and SIGINT, even where a shell ignores it for background jobs) stop
            # the sandbox cleanly: every socket gets a close frame.
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    click.echo(f"stopping on {signal.Signals(signum).name}")
                    return

    with contextlib.ExitStack() as files, contextlib.suppress(KeyboardInterrupt):
        # Unbuffered appends, one write per record: a reader never sees half a line.
        record = None if record_path is None else files.enter_context(
            open(record_path, "ab", buffering=0))
        anyio.run(serve, record)



# -- limiter command (owned by the limiter work) ------------------------------------------


def _margin_check(check: Callable[[float], float]) -> Callable[..., float]:
    def callback(ctx: click.Context, param: click.Parameter, value: float) -> float:
        from shardctl.errors import ConfigurationError

        try:
            return check(value)
        except ConfigurationError as exc:
            raise click.UsageError(str(exc), ctx) from None

    return callback


def _margin_options(func: Callable[..., None]) -> Callable[..., None]:
    """``--identify-margin-ms`` and ``--identify-margin-percent`` (run and limiter)."""
    from shardctl.cluster import config as cfg

    func = click.option(
        "--identify-margin-percent", type=FiniteFloat(min=0, max=100, max_open=True),
        default=cfg.DEFAULT_MARGIN_PERCENT,
        show_default=True, metavar="PCT", callback=_margin_check(cfg.check_margin_percent),
        help="added to --identify-margin-ms: this percentage of the identify interval")(func)
    return click.option(
        "--identify-margin-ms", type=FiniteFloat(min=0), default=cfg.DEFAULT_MARGIN_MS,
        show_default=True,
        metavar="MS", callback=_margin_check(cfg.check_margin_ms),
        help="extra gap between two IDENTIFYs of a bucket, for a gateway that reads them "
             "late; an op 9 widens the bucket's margin (bounded), clean IDENTIFYs narrow it "
             "again")(func)


@main.command("limiter")
@click.option("--bind", "bind_endpoint", metavar="ENDPOINT", envvar="SHARDCTL_LIMITER_BIND",
              default=None, type=Endpoint(bind=True),
              help="Where to serve: ipc://PATH or tcp://127.0.0.1:PORT (env "
                   "SHARDCTL_LIMITER_BIND; default ipc://<runtime dir>/limiter.sock). Binds "
                   "reachable from other hosts need --keys.")
@click.option("--max-concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="session_start_limit.max_concurrency: the number of identify buckets.")
@click.option("--identify-interval", default=5.0, show_default=True, metavar="S",
              type=FiniteFloat(min=0, min_open=True, max=MAX_IDENTIFY_INTERVAL),
              help="Seconds between IDENTIFYs of one bucket. Below 5 only with --sandbox.")
@click.option("--remaining", type=click.IntRange(min=0), default=None,
              help="session_start_limit.remaining: session starts left (default: no budget "
                   "enforced).")
@click.option("--total", type=click.IntRange(min=0), default=None,
              help="session_start_limit.total: starts per window after a reset (default: "
                   "--remaining).")
@click.option("--reset-after", type=click.IntRange(min=0), default=None, metavar="MS",
              help="session_start_limit.reset_after: milliseconds until the budget refills.")
@click.option("--sandbox", is_flag=True,
              help="Pace for the local sandbox, not Discord: allows --identify-interval below "
                   "5 s, and only on ipc:// or loopback endpoints.")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CURVE key directory: only clients with authorised keys of the worker, "
                   "supervisor or operator role are served (supervisors use "
                   "clients/supervisor)")
@click.option("--insecure-loopback", is_flag=True,
              help="Allow a tcp://127.0.0.1 endpoint without --keys: every user of this host "
                   "can then ask it for slots, and nobody may configure it over the wire.")
@_margin_options
def limiter_command(*, bind_endpoint: str | None, max_concurrency: int, identify_interval: float,
                    remaining: int | None, total: int | None, reset_after: int | None,
                    sandbox: bool, keys: Path | None = None,
                    insecure_loopback: bool = False,
                    identify_margin_ms: float = 0.0, identify_margin_percent: float = 0.0
                    ) -> None:
    """Serve the session limiter on its own, for supervisors on several hosts of one bot.

    Every IDENTIFY of every shard that uses this limiter waits for a grant: one per bucket
    (shard_id % max-concurrency) per identify interval, and none while the session-start
    budget is empty (grants are held until the reset, never refused).  A freshly started
    limiter waits one interval before its first grant per bucket, since another one may have
    granted just before.  Supervisors pass fresh limits from GET /gateway/bot over the wire.
    Prints the bound endpoint on stdout; stops on SIGINT or SIGTERM.

    Discord allows one IDENTIFY per bucket per 5 s: a shorter --identify-interval would earn
    op 9 from the real gateway, so it needs --sandbox, which in turn refuses endpoints other
    hosts could reach.
    """
    import logging
    import signal

    import anyio

    from shardctl.cluster.config import identify_margin
    from shardctl.cluster.limiter_service import SessionLimiterService
    from shardctl.errors import ConfigurationError
    from shardctl.gateway.limits import DEFAULT_IDENTIFY_INTERVAL, Limits
    from shardctl.ipc import endpoints
    from shardctl.ipc.security import for_socket, load_server

    if identify_interval < DEFAULT_IDENTIFY_INTERVAL and not sandbox:
        raise click.UsageError(
            f"--identify-interval {identify_interval:g} is faster than Discord's 1 IDENTIFY "
            "per bucket per 5 s; add --sandbox if this limiter paces a local sandbox")
    if reset_after is not None and remaining is None:
        raise click.UsageError("--reset-after needs --remaining")
    if total is not None and remaining is None:
        raise click.UsageError("--total needs --remaining")
    try:
        endpoint = bind_endpoint or endpoints.ipc_endpoint("limiter.sock")
        if sandbox and not endpoints.is_loopback(endpoint):
            raise click.UsageError("--sandbox serves loopback or ipc:// endpoints only")
        limits = Limits(
            max_concurrency=max_concurrency, interval=identify_interval, remaining=remaining,
            total=total, reset_after=None if reset_after is None else reset_after / 1000.0,
            margin=identify_margin(identify_margin_ms, identify_margin_percent))
        server = SessionLimiterService(
            endpoint, limits,
            curve=for_socket(load_server(keys), "limiter") if keys is not None else None,
            insecure_loopback=insecure_loopback,
        )
    except (ConfigurationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:
                bound = await tg.start(server.serve)
                click.echo(bound)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    try:
        anyio.run(serve, backend="asyncio")
    except (ConfigurationError, BaseExceptionGroup) as exc:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, ConfigurationError):  # e.g. the endpoint is bound elsewhere
            raise click.ClickException(str(leaf)) from None
        raise



# -- events command (owned by the event bus work) -----------------------------------------


def _checked_stream(check: str) -> Callable[..., Any]:
    """A callback running ``shardctl.stream.settings.<check>`` (loaded only when used)."""
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from shardctl.errors import ConfigurationError
        from shardctl.stream import settings as st

        if value is None:
            return None
        try:
            return getattr(st, check)(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


@main.command("events")
@click.option("--endpoint", "-e", default=None, envvar="SHARDCTL_EVENTS_ENDPOINT",
              type=Endpoint(),
              help="The supervisor's events endpoint (env SHARDCTL_EVENTS_ENDPOINT).")
@click.option("--stream", default=None, metavar="nats://HOST:PORT[,...]",
              callback=_checked_stream("check_servers"),
              help="Read the durable NATS stream instead of the bus (`run --stream`); "
                   "events are acknowledged once printed.")
@click.option("--durable", default="shardctl-events", show_default=True, metavar="NAME",
              callback=_checked_stream("check_durable"),
              help="With --stream: the durable consumer; a restart goes on where it left "
                   "off, and processes sharing it split the events.")
@click.option("--stream-name", default="SHARDCTL", show_default=True, metavar="NAME",
              callback=_checked_stream("check_name"), help="With --stream: its name.")
@click.option("--stream-prefix", default="shardctl", show_default=True, metavar="PREFIX",
              callback=_checked_stream("check_prefix"),
              help="With --stream: its subject prefix.")
@click.option("--ack-wait", type=FiniteFloat(min=0.5), default=30.0, show_default=True,
              metavar="SECONDS",
              help="With --stream, when it creates the durable: how long an unacknowledged "
                   "event waits before it is delivered again.")
@click.option("--type", "-t", "types", multiple=True, metavar="TYPE",
              help="Exact event type to print; repeat for several (default: all).")
@click.option("--shard", "-s", "shards", multiple=True, type=click.IntRange(min=0),
              help="Shard id to print; repeat for several (default: all).")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None,
              help="Exit after printing this many events.")
@click.option("--batched", is_flag=True,
              help="--endpoint is the supervisor's events-batch endpoint (one message per "
                   "batch; README \"Batched consumers\").")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHARDCTL_KEYS", show_envvar=True,
              help="CURVE key directory: server.key and clients/consumer.key_secret")
def events_command(endpoint: str | None, types: tuple[str, ...], shards: tuple[int, ...],
                   count: int | None, keys: Path | None = None, *, batched: bool = False,
                   stream: str | None = None, durable: str = "shardctl-events",
                   stream_name: str = "SHARDCTL", stream_prefix: str = "shardctl",
                   ack_wait: float = 30.0) -> None:
    """Print bus events as JSON lines: {"shard": 3, "seq": 42, "t": "...", "d": {...}}.

    One object per line on stdout, in the order the supervisor forwarded them (a contract
    other tools rely on; "seq" is null for lifecycle events).  Gaps go to stderr.  With
    --stream, the same lines from the durable stream (at least once: an event printed but
    not yet acknowledged when this process dies is printed again by the next one, and
    "redelivered: ..." on stderr says so).
    """
    import os
    import sys

    import anyio

    if (endpoint is None) == (stream is None):
        raise click.UsageError("pass --endpoint (the event bus) or --stream (the durable "
                               "NATS stream), one of them")
    if stream is not None:
        from shardctl.cli.stream import print_stream

        print_stream(stream, durable=durable, types=types, shards=shards, count=count,
                     stream_name=stream_name, prefix=stream_prefix, ack_wait=ack_wait)
        return
    assert endpoint is not None

    from shardctl.errors import ProtocolError
    from shardctl.ipc.consumer import Consumer, Gap

    def report_gap(gap: Gap) -> None:
        click.echo(f"gap: shard {gap.shard} {gap.type}: {gap.missing} missing "
                   f"({gap.kind} seq {gap.expected}..{gap.received - 1})", err=True)

    from shardctl.errors import ConfigurationError
    from shardctl.ipc.security import load_client

    try:
        curve = load_client(keys, "consumer") if keys is not None else None
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--keys") from None
    try:
        consumer = Consumer(endpoint, types=types or None, shards=shards or None,
                            on_gap=report_gap, curve=curve, batched=batched)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--type") from None

    async def print_events() -> None:
        out = sys.stdout.buffer
        printed = 0
        async with consumer:
            async for event in consumer:
                try:
                    line = event.to_json_line()
                except ProtocolError as exc:
                    click.echo(f"skipped an event of shard {event.shard}: {exc}", err=True)
                    continue
                out.write(line + b"\n")
                printed += 1
                if count is not None and printed >= count:
                    break
                if not consumer.pending:  # flush per burst, not per line
                    out.flush()
        out.flush()

    from shardctl.heap import freeze_startup_heap

    freeze_startup_heap()  # a long-running consumer: keep full collections short
    try:
        anyio.run(print_events)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # `shardctl events | head`: the reader left; exit quietly like other filters.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


# -- run command --------------------------------------------------------------------------


def _checked(check: Callable[[Any], Any]) -> Callable[..., Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from shardctl.errors import ConfigurationError

        if value is None:
            return None
        try:
            return check(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback


def _stream_options(func: Callable[..., None]) -> Callable[..., None]:
    """``--stream`` and its settings (README "The durable stream"; ``[stream]`` in TOML)."""
    from shardctl.stream import settings as st

    options = [
        click.option("--stream", "stream", default=None, metavar="nats://HOST:PORT[,...]",
                     callback=_checked(st.check_servers),
                     help="also put every event into a NATS JetStream stream; what it stores "
                          "is then what a stop or a crash resumes from (needs the nats "
                          "extra: pip install 'shardctl[nats]')"),
        click.option("--stream-name", default=st.DEFAULT_NAME, show_default=True,
                     metavar="NAME", callback=_checked(st.check_name),
                     help="the JetStream stream of --stream"),
        click.option("--stream-prefix", default=st.DEFAULT_PREFIX, show_default=True,
                     metavar="PREFIX", callback=_checked(st.check_prefix),
                     help="subjects are PREFIX.TYPE.SHARD"),
        click.option("--stream-max-age", type=FiniteFloat(min=1), default=st.DEFAULT_MAX_AGE,
                     show_default=True, metavar="SECONDS",
                     help="events older than this leave the stream"),
        click.option("--stream-max-bytes", type=click.IntRange(min=1 << 20),
                     default=st.DEFAULT_MAX_BYTES, show_default=True, metavar="BYTES",
                     help="the stream's size bound; when full it takes no more events and "
                          "the shards pause (never silent loss)"),
        click.option("--stream-replicas", type=click.IntRange(1, st.MAX_REPLICAS),
                     default=st.DEFAULT_REPLICAS, show_default=True, metavar="N",
                     help="copies of the stream on a NATS cluster (3 survives a node lost)"),
        click.option("--stream-buffer", type=click.IntRange(min=100),
                     default=st.DEFAULT_BUFFER, show_default=True, metavar="EVENTS",
                     help="events the supervisor holds for the stream (while it is slow or "
                          "unreachable) before it holds the workers back"),
        click.option("--stream-commands", is_flag=True,
                     help="also answer gateway commands over NATS request-reply on "
                          "PREFIX-commands (shardctl.StreamCommands, `shardctl send "
                          "--stream`); whoever NATS lets publish there may send them"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _stream_settings(*, stream: str | None, stream_name: str, stream_prefix: str,
                     stream_max_age: float, stream_max_bytes: int, stream_replicas: int,
                     stream_buffer: int = 20_000, stream_commands: bool = False) -> Any:
    """The StreamSettings of ``--stream`` (None without it); the nats extra must be there.
    A ``--stream-*`` option set without ``--stream`` would be ignored: refused instead."""
    from shardctl.errors import ConfigurationError

    if stream is None:
        from click.core import ParameterSource

        ctx = click.get_current_context()
        for name in ("stream_name", "stream_prefix", "stream_max_age", "stream_max_bytes",
                     "stream_replicas", "stream_buffer", "stream_commands"):
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
                raise ConfigurationError(
                    f"--{name.replace('_', '-')} needs --stream nats://HOST:PORT")
        return None
    from shardctl.stream import _nats
    from shardctl.stream.settings import StreamSettings, parse_servers

    _nats.require()
    return StreamSettings(parse_servers(stream), name=stream_name, prefix=stream_prefix,
                          max_age=stream_max_age, max_bytes=stream_max_bytes,
                          replicas=stream_replicas, buffer=stream_buffer,
                          commands=stream_commands)

#: Exit codes of ``shardctl run`` (README "Exit codes"); 2 is click's usage error.
EXIT_ERROR = 1
EXIT_AUTHENTICATION = 3
EXIT_DISALLOWED_INTENTS = 4
EXIT_SESSION_BUDGET = 5
EXIT_GATEWAY_FATAL = 6
EXIT_CRASH_LOOP = 7
EXIT_DISCORD_UNAVAILABLE = 8


def exit_code_for(error: BaseException) -> int:
    """The documented exit code of a ShardctlError (checked most specific first)."""
    from shardctl import errors
    from shardctl.cluster.supervisor import CrashLoopError

    table: list[tuple[type[BaseException], int]] = [
        (errors.AuthenticationError, EXIT_AUTHENTICATION),
        (errors.DisallowedIntentsError, EXIT_DISALLOWED_INTENTS),
        (errors.SessionBudgetError, EXIT_SESSION_BUDGET),
        (errors.GatewayFatalError, EXIT_GATEWAY_FATAL),
        (CrashLoopError, EXIT_CRASH_LOOP),
        (errors.ConfigurationError, 2),
        (errors.DiscordError, EXIT_DISCORD_UNAVAILABLE),
    ]
    return next((code for cls, code in table if isinstance(error, cls)), EXIT_ERROR)


def _leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@main.command("run")
@click.option("--token", envvar="DISCORD_TOKEN", default=None, show_envvar=True,
              callback=check_token_option,
              help="bot token; without one, shardctl runs against its built-in sandbox. "
                   "Prefer DISCORD_TOKEN or --token-file: the command line is public (ps)")
@token_file_option()
@click.option("--api-url", envvar="SHARDCTL_API_URL", default=None, show_envvar=True,
              type=ApiUrl(),
              help="REST base URL  [default: https://discord.com/api/v10]")
@click.option("--processes", type=click.IntRange(min=0), default=None,
              help="worker processes  [default: one per CPU core; 0 with --remote-workers]")
@click.option("--shards", default="auto", show_default=True, metavar="N|auto",
              help="total shard count; auto = Discord's recommendation")
@click.option("--shard-ids", default=None, metavar="A-B[,C]", type=ShardIds(),
              help="run only these shard ids (several instances of one bot)")
@click.option("--intents", default="default", show_default=True, metavar="NUMBER|NAMES",
              help="intents as a number or comma-separated names (default = all unprivileged)")
@click.option("--compression", default="zlib-stream", show_default=True,
              type=click.Choice(["zlib-stream", "zstd-stream", "none"]))
@click.option("--identify-interval", default=5.0, show_default=True, metavar="SECONDS",
              type=FiniteFloat(min=0, min_open=True, max=MAX_IDENTIFY_INTERVAL),
              help="pace per identify bucket; below 5 only for a loopback API")
@_margin_options
@click.option("--events-endpoint", default=None, metavar="ENDPOINT", type=Endpoint(bind=True),
              help="where consumers subscribe  [default: ipc://<runtime dir>/events.sock]")
@click.option("--events-batch-endpoint", default=None, metavar="ENDPOINT",
              type=Endpoint(bind=True),
              help="where batched consumers subscribe: one message per worker batch  "
                   "[default: beside --events-endpoint, ipc://<runtime dir>/events-batch.sock]")
@click.option("--events-batch-window-ms", type=FiniteFloat(min=0, max=100), default=0.0,
              show_default=True, metavar="MS",
              help="how long events-batch holds a small batch for others to join it: fewer "
                   "messages at a steady load, for at most this much latency (0: never)")
@click.option("--publish-window-ms", type=FiniteFloat(min=0, max=100), default=0.0,
              show_default=True, metavar="MS",
              help="how long a worker holds an event for others to travel with it: fewer "
                   "messages and wake-ups on every hop at a steady load, for at most this "
                   "much latency on both endpoints (0: never)")
@click.option("--control-endpoint", default=None, metavar="ENDPOINT", type=Endpoint(bind=True),
              help="the workers' control channel  [default: ipc://<runtime dir>/control.sock]")
@click.option("--limiter", default=None, metavar="ENDPOINT", type=Endpoint(),
              help="use a shared `shardctl limiter` instead of the built-in one")
@click.option("--limiter-timeout", type=FiniteFloat(min=0, min_open=True), default=5.0,
              show_default=True,
              metavar="SECONDS", help="how long the shared --limiter has to acknowledge "
                                      "this bot's limits before the start fails")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="sessions checkpointed each second and on stop, resumed on start "
                   "[default: $XDG_STATE_HOME/shardctl/state-BOT-COUNT-SHARDS.json]")
@click.option("--drain-timeout", type=FiniteFloat(min=0, max=MAX_DRAIN_TIMEOUT),
              default=DEFAULT_DRAIN_TIMEOUT, show_default=True, metavar="SECONDS",
              help="on stop, how long consumers get to read what they are behind by; "
                   "what they miss is replayed after the next start")
@click.option("--ignore-session-start-limit", is_flag=True,
              help="start even if the daily session budget cannot cover every IDENTIFY")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHARDCTL_KEYS", show_envvar=True,
              help="CURVE key directory (`shardctl keys generate`): encrypt and authenticate "
                   "every endpoint; needed to bind addresses other hosts can reach")
@click.option("--insecure-loopback", is_flag=True,
              help="accept a loopback tcp:// --control-endpoint without --keys: every local "
                   "user can reach it (they get a redacted status and no worker slot)")
@click.option("--remote-workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="worker slots for `shardctl worker --supervisor tcp://HOST:PORT` on other "
                   "hosts (set --control-endpoint tcp://HOST:PORT and --keys)")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(["text", "json"]),
              help="json: one JSON object per log line on stderr, and no live view")
@click.option("--auto-reshard", is_flag=True,
              help="reshard by itself when Discord recommends more shards than run, or a "
                   "shard is closed with 4011 (README \"Resharding\")")
@click.option("--reshard-check-interval", type=FiniteFloat(min=0, min_open=True, max=86400),
              default=300.0, show_default=True, metavar="SECONDS",
              help="how often --auto-reshard asks GET /gateway/bot")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="serve Prometheus /metrics, /livez and /readyz on this port")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="ADDRESS",
              help="interface for --metrics-port (0.0.0.0: every interface)")
@_stream_options
@with_token_file
def run_command(*, token: str | None, api_url: str | None, processes: int | None, shards: str,
                shard_ids: str | None, intents: str, compression: str,
                identify_interval: float, events_endpoint: str | None,
                control_endpoint: str | None, limiter: str | None, state_file: Path | None,
                events_batch_endpoint: str | None = None,
                events_batch_window_ms: float = 0.0, publish_window_ms: float = 0.0,
                limiter_timeout: float = 5.0, drain_timeout: float = 30.0,
                keys: Path | None = None,
                remote_workers: int = 0, insecure_loopback: bool = False,
                ignore_session_start_limit: bool, log_level: str, log_format: str = "text",
                metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                identify_margin_ms: float = 0.0, identify_margin_percent: float = 0.0,
                auto_reshard: bool = False, reshard_check_interval: float = 300.0,
                **stream_options: Any) -> None:
    """Run a shard cluster: discover, plan, spawn workers, forward events until stopped.

    SIGINT/SIGTERM stop gracefully: every shard closes resumably, consumers get up to
    --drain-timeout to read what they are behind by, and the sessions are saved to the state
    file at what was sent, so the next start within a few minutes RESUMEs them.
    """
    import logging

    import anyio

    from shardctl import logformat
    from shardctl.cli.liveview import Display, choose_mode
    from shardctl.cli.preflight import check_run
    from shardctl.cluster import config as cfg
    from shardctl.errors import ConfigurationError, ShardctlError
    from shardctl.ipc.control import check_control_endpoint

    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    check_run(token=token, api_url=api_url, keys=keys, state_file=state_file, metrics=metrics,
              bind_endpoints={"--events-endpoint": events_endpoint,
                              "--events-batch-endpoint": events_batch_endpoint,
                              "--control-endpoint": control_endpoint})
    display = Display(choose_mode(log_format, isatty=sys.stdout.isatty()))
    logformat.configure(log_level, log_format, handler=display.log_handler())
    logging.getLogger("websockets").setLevel(logging.WARNING)
    # Workers inherit these; under the live view they print only what needs attention.
    os.environ["SHARDCTL_LOG_FORMAT"] = log_format
    os.environ["SHARDCTL_LOG_LEVEL"] = (
        log_level if display.mode != "live" or log_level in ("WARNING", "ERROR") else "WARNING")
    try:
        options: dict[str, Any] = {
            "shards": cfg.parse_shards(shards), "shard_ids": shard_ids,
            "intents": cfg.parse_intents(intents),
            "compression": cfg.parse_compression(compression),
            "identify_interval": identify_interval,
            "identify_margin_ms": identify_margin_ms,
            "identify_margin_percent": identify_margin_percent,
            "events_endpoint": events_endpoint, "events_batch_endpoint": events_batch_endpoint,
            "events_batch_window_ms": events_batch_window_ms,
            "publish_window_ms": publish_window_ms,
            "control_endpoint": control_endpoint, "limiter": limiter, "state_file": state_file,
            "limiter_timeout": limiter_timeout, "drain_timeout": drain_timeout,
            "ignore_session_start_limit": ignore_session_start_limit,
            "curve_keys": keys, "remote_workers": remote_workers,
            "insecure_loopback": insecure_loopback,
            "auto_reshard": auto_reshard, "reshard_check_interval": reshard_check_interval,
        }
        if control_endpoint is not None:
            check_control_endpoint(control_endpoint, curve=keys is not None,
                                   insecure_loopback=insecure_loopback)
        options["stream"] = _stream_settings(**stream_options)
        if processes is not None:
            options["processes"] = processes
        if api_url is not None:
            options["api_url"] = api_url
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    freeze_startup_heap()
    try:
        anyio.run(_run_cluster, token, options, display, metrics, backend="asyncio")
    except (ShardctlError, BaseExceptionGroup) as exc:
        leaf = _leaf(exc)
        if not isinstance(leaf, ShardctlError):
            raise
        click.echo(f"shardctl: error: {leaf}", err=True)
        sys.exit(exit_code_for(leaf))
    except KeyboardInterrupt:
        sys.exit(130)


async def _run_cluster(token: str | None, options: dict[str, Any], display: Display,
                       metrics: tuple[str, int] | None = None) -> None:
    import anyio

    from shardctl.cluster.config import RunConfig
    from shardctl.cluster.supervisor import Supervisor

    async with contextlib.AsyncExitStack() as stack:
        if token is None:
            token, api_url = await stack.enter_async_context(_demo_sandbox(options, display))
            options = {**options, "api_url": api_url}
            if options.get("state_file") is None:
                # A fresh sandbox knows no old session: keep its sessions out of the real
                # state file, next to the other files of this run.
                from shardctl.ipc.endpoints import runtime_dir

                options["state_file"] = runtime_dir() / "sandbox-sessions.json"
        config = RunConfig(token=token, **options)
        started = anyio.current_time()
        async with Supervisor(config) as sup, anyio.create_task_group() as tg:
            display.say(f"shardctl: {len(sup.status())} shards over {len(sup.slots)} workers; "
                        f"events on {sup.endpoints['events']}; "
                        f"control on {sup.endpoints['control']}")
            if metrics is not None:
                from shardctl.cluster.metrics import serve_metrics

                port = await tg.start(serve_metrics, sup, metrics[1], metrics[0])
                display.say(f"shardctl: metrics on http://{metrics[0]}:{port}/metrics")

            async def announce_ready() -> None:
                await sup.wait_ready()
                display.say(f"shardctl: all {len(sup.status())} shards READY after "
                            f"{anyio.current_time() - started:.1f} s")

            tg.start_soon(display.watch, sup)
            tg.start_soon(announce_ready)
            await sup.run()
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _demo_sandbox(options: dict[str, Any], display: Display) -> Any:
    """No token: the sandbox in this process, so a first run needs nothing from Discord."""
    from shardctl.sandbox import Sandbox, SandboxConfig

    display.say("shardctl: no token set (DISCORD_TOKEN or --token): running against the "
                "built-in sandbox, a local Discord emulator")
    sandbox_config = SandboxConfig(
        shard_count=8, max_concurrency=8, identify_interval=options["identify_interval"],
        dispatch_rate=2.0, heartbeat_interval_ms=41250)
    async with Sandbox(sandbox_config) as sb:
        display.say(f"shardctl: sandbox API at {sb.api_url}")
        yield sandbox_config.token, sb.api_url


# -- configuration (owned by the operator-experience work) --------------------------------

settings.configurable(run_command)


def _print_config(**values: Any) -> None:
    ctx = click.get_current_context()
    for key, value, source in settings.resolved(ctx, values):
        click.echo(settings.to_toml_line(key, value, source))


main.add_command(click.Command(
    "config", params=list(run_command.params), callback=_print_config,
    help="Print the configuration `shardctl run` would use, with the same options, as TOML "
         "(each value with where it came from; the token redacted).  Precedence: command "
         "line > SHARDCTL_* environment > --config file (default ./shardctl.toml) > default.",
    short_help="Print the resolved configuration of `run`."))


# -- status command (owned by the operator-experience work) -------------------------------

#: Exit codes of ``shardctl status`` (README "Exit codes").
EXIT_STATUS_NOT_READY = 1
EXIT_STATUS_UNREACHABLE = 3


@main.command("status")
@click.option("--control-endpoint", envvar="SHARDCTL_CONTROL_ENDPOINT", default=None,
              metavar="ENDPOINT", show_envvar=True, type=Endpoint(),
              help="the supervisor's control endpoint  [default: ipc://<runtime dir>/control.sock]")
@click.option("--json", "as_json", is_flag=True,
              help="print the supervisor's reply as one JSON object")
@click.option("--timeout", type=FiniteFloat(min=0, min_open=True), default=5.0,
              show_default=True, metavar="SECONDS", help="how long to wait for the supervisor")
@click.option("--keys", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHARDCTL_KEYS", show_envvar=True,
              help="CURVE key directory of a supervisor run with --keys (its operator keypair, "
                   "clients/operator)")
def status_command(control_endpoint: str | None, as_json: bool, timeout: float,
                   keys: Path | None) -> None:
    """Ask a running supervisor for every shard's state; exit 1 unless all are READY.

    One row per shard (id, worker pid, state, heartbeat latency, seq, guilds, age of its
    last event) and a summary line.  Exit codes: 0 every shard READY, 1 some shard is not,
    3 no supervisor answered.
    """
    import anyio
    import orjson

    from shardctl.cli.statusview import format_table
    from shardctl.errors import ConfigurationError, ProtocolError
    from shardctl.ipc import endpoints
    from shardctl.ipc.security import load_client
    from shardctl.ipc.status import request_status

    try:
        endpoint = control_endpoint or endpoints.ipc_endpoint("control.sock")
        curve = None if keys is None else load_client(keys, "operator")
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None

    async def ask() -> dict[str, Any]:
        with anyio.fail_after(timeout):
            return await request_status(endpoint, curve=curve)

    try:
        body = anyio.run(ask, backend="asyncio")
    except (TimeoutError, ProtocolError) as exc:
        click.echo(f"shardctl: no supervisor answered on {endpoint} within {timeout:g} s"
                   + (f" ({exc})" if str(exc) else ""), err=True)
        sys.exit(EXIT_STATUS_UNREACHABLE)
    if as_json:
        click.echo(orjson.dumps(body).decode())
    else:
        click.echo(format_table(body))
    if not body.get("summary", {}).get("all_ready"):
        sys.exit(EXIT_STATUS_NOT_READY)


# -- keys and worker commands (owned by the security work: shardctl/cli/remote.py) ---------

from shardctl.cli.remote import keys_group, worker_command  # noqa: E402

main.add_command(keys_group)
main.add_command(worker_command)

# -- send command (gateway commands from the command line: shardctl/cli/send.py) -----------

from shardctl.cli.send import send_group  # noqa: E402

main.add_command(send_group)

# -- drain and restart-workers (live operations: shardctl/cli/operations.py) ---------------

from shardctl.cli.operations import drain_command, restart_workers_command  # noqa: E402

main.add_command(drain_command)
main.add_command(restart_workers_command)
# -- reshard command (a running cluster to a new shard count: shardctl/cli/reshard.py) ------

from shardctl.cli.reshard import reshard_command  # noqa: E402

main.add_command(reshard_command)
# -- nats command (the durable stream: shardctl/cli/stream.py) ------------------------------

from shardctl.cli.stream import nats_command  # noqa: E402

main.add_command(nats_command)

if __name__ == "__main__":
    main()
