"""``python -m bench.limiter_load``: the session limiter under a 10,000-shard start-up.

Not a figure of the table: the measurement behind issue 14's "service lost the request"
finding.  One ``SessionLimiterService`` in this process (max_concurrency 256, the start
gate closed until every request waits, as the supervisor does), ``--workers`` client
processes with ``--per-worker`` identify waiters each.  ``--busy F`` blocks this process's
event loop for that fraction of every 100 ms, as a supervisor busy with its other work
does.  Prints the start-up time, the service's CPU, requests asked again (the clients'
``reasked``), grants sent, reconnects; ``--pong`` instead times building one pong with
10,000 requests waiting.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.gateway.limits import Limits
from shardctl.ipc.limiter import LimiterClient, LimiterWireServer

MC = 256


class _Reasks(logging.Handler):
    """Requests asked again, from the client's log (one line per shard before issue 14's
    fix, one per pong with the count after)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "asking again" in message:
            found = re.search(r"lost (\d+) request", message)
            self.count += int(found.group(1)) if found else 1


def _client(endpoint: str, first: int, step: int, count: int, out: Any) -> None:
    reasks = _Reasks()
    client_log = logging.getLogger("shardctl.ipc.limiter")
    client_log.addHandler(reasks)
    client_log.setLevel(logging.INFO)

    async def run() -> None:
        async with LimiterClient(endpoint) as client:
            async def one(shard: int) -> None:
                async with client.identify(shard):
                    pass

            async with anyio.create_task_group() as tg:
                for shard in range(first, first + count * step, step):
                    tg.start_soon(one, shard)

    cpu = time.process_time()
    anyio.run(run)
    out.put((first, reasks.count, time.process_time() - cpu))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _load(args: argparse.Namespace) -> None:
    lines = _Lines()
    service_log = logging.getLogger("shardctl.cluster.limiter_service")
    service_log.addHandler(lines)
    service_log.setLevel(logging.INFO)
    sent = 0
    real_send = LimiterWireServer.send_grant

    def counting(self: LimiterWireServer, *a: Any, **k: Any) -> bool:
        nonlocal sent
        ok = real_send(self, *a, **k)
        sent += ok
        return ok

    LimiterWireServer.send_grant = counting  # type: ignore[method-assign]
    total = args.workers * args.per_worker
    with tempfile.TemporaryDirectory(prefix="limload-") as d:
        endpoint = f"ipc://{Path(d) / 'l.sock'}"
        server = SessionLimiterService(
            endpoint, Limits(interval=args.interval, max_concurrency=MC), last_grants={})
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            server.gate(anyio.current_time() + 300)

            async def burn() -> None:
                while True:
                    time.sleep(0.1 * args.busy)  # noqa: ASYNC251 -- the busy loop
                    await anyio.sleep(0.1 * (1 - args.busy))

            if args.busy:
                tg.start_soon(burn)
            cpu, started = time.process_time(), time.monotonic()
            procs = [ctx.Process(target=_client, args=(endpoint, i, args.workers,
                                                       args.per_worker, out))
                     for i in range(args.workers)]
            for p in procs:
                p.start()
            await server.open_gate_when_asked(total, quiet=5.0)
            asked = time.monotonic() - started
            results = [await anyio.to_thread.run_sync(out.get) for _ in procs]
            elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
            for p in procs:
                p.join()
            tg.cancel_scope.cancel()
    reconnects = sum("reconnected" in line or "is back" in line for line in lines.lines)
    print(f"{total} shards in {args.workers} processes, interval {args.interval} s, "
          f"busy {args.busy:.0%}: all asked in {asked:.1f} s, all granted in {elapsed:.1f} s "
          f"(ideal {total / MC * args.interval:.1f} s); service CPU {cpu:.1f} s "
          f"(the process's, busy loop excluded: it sleeps); grants sent {sent}; "
          f"re-asked {sum(r[1] for r in results)}; reconnects {reconnects}; {server.stats}")


def _pong() -> None:
    from shardctl.cluster.limiter import IdentifyScheduler

    s = IdentifyScheduler[tuple[str, int]](now=0.0, limits=Limits(max_concurrency=MC),
                                           owner=lambda key: key[0])
    for n in range(10_000):
        s.request((f"w{n % 4}", n), n)
    rounds = 200
    cpu = time.process_time()
    for _ in range(rounds):
        whole = [r for (c, r), _ in s.waiting() if c == "w1"]  # the pong before issue 14
    sorted_ms = (time.process_time() - cpu) / rounds * 1000
    cpu = time.process_time()
    for _ in range(rounds):
        own = [r for _, r in s.waiting_of("w1")]
    own_ms = (time.process_time() - cpu) / rounds * 1000
    assert sorted(whole) == sorted(own)
    print(f"one pong's list, 10,000 waiting in 4 clients: sort-and-filter {sorted_ms:.2f} ms, "
          f"per-client index {own_ms:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--per-worker", type=int, default=2500)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--busy", type=float, default=0.0)
    parser.add_argument("--pong", action="store_true")
    args = parser.parse_args()
    if args.pong:
        _pong()
    else:
        anyio.run(_load, args)


if __name__ == "__main__":
    main()
