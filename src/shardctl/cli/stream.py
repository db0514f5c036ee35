"""``shardctl events --stream`` and ``shardctl nats``: the durable stream at the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


def print_stream(servers: str, *, durable: str, types: tuple[str, ...],
                 shards: tuple[int, ...], count: int | None, stream_name: str,
                 prefix: str, ack_wait: float = 30.0) -> None:
    """The ``shardctl events`` JSON lines from the stream; each event is acknowledged once
    its line is flushed, so a kill costs at most the unflushed lines' redelivery."""
    import anyio

    from shardctl.errors import ConfigurationError, ProtocolError
    from shardctl.ipc.events import Event
    from shardctl.stream.consumer import StreamConsumer

    try:
        consumer = StreamConsumer(servers, durable, types=types or None,
                                  shards=shards or None, stream=stream_name, prefix=prefix,
                                  ack_wait=ack_wait)
    except (ConfigurationError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None

    async def run() -> None:
        out = sys.stdout.buffer
        printed = 0
        unacked: list[Event] = []
        async with consumer:
            async for event in consumer:
                if event.replayed:  # delivered before, never acknowledged
                    click.echo(f"redelivered: shard {event.shard} seq {event.seq} "
                               f"{event.type}", err=True)
                try:
                    out.write(event.to_json_line() + b"\n")
                    printed += 1
                except ProtocolError as exc:
                    click.echo(f"skipped an event of shard {event.shard}: {exc}", err=True)
                unacked.append(event)
                done = count is not None and printed >= count
                if done or not consumer.pending:  # flush per burst, then acknowledge
                    out.flush()
                    for e in unacked:
                        await consumer.ack(e)
                    unacked.clear()
                if done:
                    break

    from shardctl.heap import freeze_startup_heap

    freeze_startup_heap()
    try:
        anyio.run(run, backend="asyncio")
    except ConfigurationError as exc:
        click.echo(f"shardctl: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


@click.command("nats")
@click.option("--port", type=click.IntRange(1, 65535), default=4222, show_default=True,
              help="client port on 127.0.0.1")
@click.option("--store-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="JetStream data  [default: <state directory>/nats]")
def nats_command(port: int, store_dir: Path | None) -> None:
    """Run a local NATS JetStream server for `shardctl run --stream nats://127.0.0.1:PORT`.

    One machine, durable: the stream's data lives in the state directory and outlives
    restarts of the server, the supervisor and the bot.  For several hosts run a NATS
    cluster instead (README "The durable stream").  Replaces this process with nats-server.
    """
    from shardctl.cli.preflight import check_listen
    from shardctl.cluster.sessions import state_dir
    from shardctl.errors import ConfigurationError
    from shardctl.stream.server import server_args

    check_listen("127.0.0.1", port, host_option="--port", port_option="--port")
    store = store_dir or state_dir() / "nats"
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {store}: {exc.strerror or exc}",
                                 param_hint="--store-dir") from None
    try:
        args = server_args(store, host="127.0.0.1", port=port)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"nats: nats://127.0.0.1:{port} (JetStream data in {store})", err=True)
    sys.stderr.flush()
    os.execv(args[0], args)
