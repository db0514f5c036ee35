"""A consumer process: counts MESSAGE_CREATE off the bus, optionally stamps each arrival.

With ``--parse`` it reads each event's ``d`` (orjson), as a bot does: the whole pipeline's
CPU then includes the JSON parse the one-process reference also does.

Lines: ``{"open": 1}`` once subscribed, ``{"probe": 1}`` at the first probe event, and
``{"count", "missed", "first_ns", "last_ns"}`` when ``--expect`` events arrived or the bus
was idle for ``--idle`` seconds.  With ``--stamps FILE`` it writes ``shard seq monotonic_ns
worker_ns`` per event: CLOCK_MONOTONIC is one clock for every process on the machine, and the
worker's wall-clock receive stamp is moved onto it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator

import anyio

from shardctl.heap import freeze_startup_heap
from shardctl.ipc.consumer import Consumer
from shardctl.ipc.events import Event

PROBE = "TYPING_START"


def write_stamps(path: str, stamps: list[tuple[int, int, int, int]]) -> None:
    # The worker stamps with the wall clock: note its offset from CLOCK_MONOTONIC here.
    offset = time.time_ns() - time.monotonic_ns()
    with open(path, "w") as f:
        f.writelines(f"{s} {q} {t} {w - offset}\n" for s, q, t, w in stamps)


async def one_by_one(bus: Consumer) -> AsyncIterator[list[Event]]:
    async for event in bus:
        yield [event]


async def main(args: argparse.Namespace) -> None:
    count = 0
    first_ns = last_ns = 0
    stamps: list[tuple[int, int, int, int]] = []
    progress = time.monotonic()
    mono = time.monotonic_ns
    parse = args.parse
    freeze_startup_heap()  # as the cluster's processes do: no full collection of imports
    async with Consumer(args.endpoint, types=["MESSAGE_CREATE", PROBE],
                        hwm=1_000_000, batched=args.batched) as bus:
        print(json.dumps({"open": 1}), flush=True)
        probed = False
        async with anyio.create_task_group() as tg:
            async def watchdog() -> None:
                while True:
                    await anyio.sleep(0.25)
                    if probed and count and time.monotonic() - progress > args.idle:
                        tg.cancel_scope.cancel()

            tg.start_soon(watchdog)
            # --batched: one await per batch (Consumer.batches); else one per event
            async for events in (bus.batches() if args.batched else one_by_one(bus)):
                now = mono()
                for event in events:
                    if event.type == PROBE:
                        if not probed:
                            probed = True
                            progress = time.monotonic()
                            print(json.dumps({"probe": 1}), flush=True)
                        continue
                    if parse:
                        event.d  # noqa: B018 - the parse is the work being measured
                    if not count:
                        first_ns = now
                    last_ns = now
                    count += 1
                    if args.stamps:
                        stamps.append((event.shard, event.seq or 0, now, event.received_at_ns))
                    if count % 1024 == 0:
                        progress = time.monotonic()
                if count >= args.expect > 0:
                    break
            tg.cancel_scope.cancel()
        missed = bus.missed
    if args.stamps:
        write_stamps(args.stamps, stamps)
    print(json.dumps({"count": count, "missed": missed, "first_ns": first_ns,
                      "last_ns": last_ns}), flush=True)
    if args.stay:  # until SIGTERM: its CPU stays readable after the report
        await anyio.sleep_forever()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--stamps", default="")
    p.add_argument("--parse", action="store_true", help="read each event's d (orjson)")
    p.add_argument("--batched", action="store_true", help="--endpoint is events-batch")
    p.add_argument("--stay", action="store_true", help="keep running after the report")
    return p.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse())
