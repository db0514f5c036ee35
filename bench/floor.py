"""The floor of figures 1 and 6: the least a pipeline of shardctl's shape can cost.

Figures 1 and 6 hold the whole pipeline (workers, the supervisor, a consumer process that
reads ``d``) to a multiple of one process doing websocket receive + inflate + JSON parse.
This runs the same streams through the *least* pipeline of that shape, so the table shows
which part of the gap belongs to the shape and which to our code:

- 2 **floor workers**: the reference's own shards (:mod:`bench.reference`: websockets, the
  same inflater), each message inflated and published as it is, one ZeroMQ message per
  loop pass (or per ``BATCH`` events) holding every payload read in it, joined with
  newlines (compact JSON holds none: the cheapest framing there is).  No envelope read,
  no seq, no numbering, no session, no heartbeat check: less than any correct worker does.
- the **proxy**: libzmq's C proxy (XSUB → XPUB, :func:`bench.hop_floor.proxy`), no Python.
- the **consumer**: a plain SUB socket, every payload parsed whole (orjson), ``d`` read.

If this pipeline alone costs more than a figure's limit times the reference, no pipeline of
this shape in Python meets the limit on this machine; the pipeline against the floor is
what our code adds.  Figures 1 and 6 run it after their reference and their pipeline,
full runs only (``--quick`` must stay under two minutes).  The pieces are this module's
``worker``, ``consumer`` and ``proxy`` commands (``python -m bench.floor ROLE --help``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import zmq
import zmq.asyncio

from bench import steady, throughput
from bench.common import INTENTS, Figure, child, log, percentile
from bench.hop_floor import proxy
from bench.reference import Shard, open_shard
from shardctl.sandbox import Sandbox

_PR_SET_PDEATHSIG = 1
#: at most this many events a message (the size of a full worker batch in figure 1)
BATCH = 64
#: the consumer reports what it has after this long without a message
IDLE_MS = 10_000
#: digits of the receive stamp (ns) a stamping worker puts before each payload
STAMP = 19


# -- the pieces (child processes) ------------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """Open ``--first``..``--first + --shards - 1``; publish what they read, a message per
    loop pass or per ``BATCH`` payloads."""
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(args.pub)
    loop = asyncio.get_running_loop()
    pending: list[bytes] = []

    def flush() -> None:
        if not pending:
            return
        pub.send(b"\n".join(pending), copy=False)
        pending.clear()

    async with anyio.create_task_group() as tg:
        shards = [await open_shard(args.url, args.compress, i, args.count,
                                   intents=args.intents, tg=tg)
                  for i in range(args.first, args.first + args.shards)]

        async def pump(shard: Shard) -> None:
            recv, mono = shard.recv, time.monotonic_ns
            while True:
                payload = await recv()
                if args.stamp:  # the receive time, as figure 4's workers stamp it
                    payload = b"%019d" % mono() + payload
                if not pending:
                    loop.call_soon(flush)
                pending.append(payload)
                if len(pending) >= BATCH:
                    flush()

        for shard in shards:
            tg.start_soon(pump, shard)
        print(json.dumps({"ready": len(shards)}), flush=True)
        await anyio.sleep_forever()


async def consumer(args: argparse.Namespace) -> None:
    """Every payload parsed whole; ``{"count", "messages", "last_ns"}`` after ``--expect``
    MESSAGE_CREATE."""
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(args.sub)
    print(json.dumps({"open": 1}), flush=True)
    count, messages, loads, mono = 0, 0, orjson.loads, time.monotonic_ns
    added: list[int] = []
    while count < args.expect:
        if not await sub.poll(IDLE_MS):
            break  # lost on the way: report what came (the figure counts it)
        messages += 1
        now = mono()
        for payload in (await sub.recv(copy=False)).bytes.split(b"\n"):
            if args.stamps:
                added.append(now - int(payload[:STAMP]))
                payload = payload[STAMP:]  # noqa: PLW2901
            obj = loads(payload)
            obj.get("d")
            if obj.get("t") == "MESSAGE_CREATE":
                count += 1
    if args.stamps:
        _write_lines(args.stamps, added)
    print(json.dumps({"count": count, "messages": messages, "last_ns": mono()}), flush=True)


def _write_lines(path: str, values: list[int]) -> None:
    with open(path, "w") as f:
        f.writelines(f"{v}\n" for v in values)


def run_proxy(args: argparse.Namespace) -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # no orphan
    print(json.dumps({"open": 1}), flush=True)
    proxy(args.inbound, args.outbound)


# -- the figure -------------------------------------------------------------------------------


async def measure(compression: str, shards: int, paced_rate: float | None, per_shard: int,
                  stamps: Path | None = None) -> dict[str, Any]:
    """The floor pipeline on figure 1's blast (``paced_rate`` None) or figure 6's pace;
    with ``stamps``, each event's worker receive → consumer receive (ns) is written there."""
    stamping = ["--stamps", str(stamps)] if stamps else []
    expect = shards * per_shard
    regime = None if paced_rate is None else steady.Regime(shards, paced_rate / shards)
    config = throughput.sandbox_config() if regime is None else steady.sandbox_config(regime)
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        inbound, outbound = f"ipc://{Path(tmp) / 'in'}", f"ipc://{Path(tmp) / 'out'}"
        async with Sandbox(config) as sb, \
                child("floor", "proxy", "--inbound", inbound, "--outbound", outbound) as px:
            await px.expect("open")
            async with child("floor", "consumer", "--sub", outbound,
                             "--expect", str(expect), *stamping) as reader:
                await reader.expect("open")
                half = shards // 2
                common = ["--url", sb.gateway_url, "--compress", compression, "--count",
                          str(shards), "--intents", str(INTENTS), "--pub", inbound,
                          *(["--stamp"] if stamps else [])]
                async with child("floor", "worker", *common, "--first", "0",
                                 "--shards", str(half)) as w1, \
                        child("floor", "worker", *common, "--first", str(half),
                              "--shards", str(shards - half)) as w2:
                    await w1.expect("ready", 120.0)
                    await w2.expect("ready", 120.0)
                    await anyio.sleep(0.5)
                    pids = [px.pid, w1.pid, w2.pid, reader.pid]
                    report: dict[str, Any] = {}

                    async def finished(timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
                        report.update(await reader.expect("count", timeout))
                        return report

                    if regime is None:
                        got = await throughput.blast(sb, per_shard, pids,
                                                     lambda: finished(300.0))
                        sent = got["blasted"]
                    else:
                        seconds = per_shard / regime.per_shard
                        got = await steady.paced(sb, regime, seconds, pids,
                                                 lambda: finished(seconds + 60.0))
                        sent = got["sent"]
                    got["lost"] = sent - report["count"]
                    got["events_per_message"] = round(report["count"]
                                                      / max(1, report["messages"]), 1)
                    return got


async def against(name: str, ref: dict[str, Any], got: dict[str, Any], *, compression: str,
                  shards: int, paced_rate: float | None, per_shard: int, limit: str,
                  digits: int = 2) -> list[Figure]:
    """Figure 1's or 6's run again through the floor (:func:`measure`), and its rows."""
    low = await measure(compression, shards, paced_rate, per_shard)
    log(f"  floor pipeline: {low['cpu_us']:.{digits}f} µs/event ({split(low)})")
    return rows(name, ref, got, low, limit=limit, digits=digits)


def rows(name: str, ref: dict[str, Any], got: dict[str, Any], floor: dict[str, Any], *,
         limit: str, digits: int = 2) -> list[Figure]:
    """The floor against the reference (what the shape alone costs), and the pipeline
    against the floor (what our code adds to it), all three from the same run."""
    return [
        Figure(f"{name} floor cpu/event ({split(floor)})", round(floor["cpu_us"], digits),
               "µs", round(ref["cpu_us"], digits),
               f"informational: the least pipeline of this shape (the limit is {limit})",
               extra={"floor": floor}),
        Figure(f"{name} cpu/event against the floor", round(got["cpu_us"], digits), "µs",
               round(floor["cpu_us"], digits), "informational: what our code adds to the "
               "shape's cost"),
    ]


def split(got: dict[str, Any]) -> str:
    """µs per event: proxy / workers / consumer (measure's pid order)."""
    per = got["cpu_us_per_process"]
    lost = f", {got['lost']} lost" if got["lost"] else ""
    return (f"proxy {per[0]}, workers {per[1] + per[2]:.2f}, consumer {per[3]}; "
            f"{got['events_per_message']} events a message{lost}")


async def added_latency_p99(shards: int, rate: float, seconds: float) -> float:
    """Figure 4's added latency (worker receive → consumer receive, ms, p99) through the
    floor, at figure 4's rate; the first tenth of the samples is warm-up."""
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        path = Path(tmp) / "added"
        await measure("zlib-stream", shards, rate, int(rate / shards * seconds), stamps=path)
        added = [int(line) / 1e6 for line in path.read_text().split()]
    return percentile(added[len(added) // 10:], 99)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--url", required=True)
    w.add_argument("--compress", default="zlib-stream")
    w.add_argument("--first", type=int, required=True)
    w.add_argument("--shards", type=int, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--intents", type=int, required=True)
    w.add_argument("--pub", required=True)
    w.add_argument("--stamp", action="store_true", help="put the receive time before each")
    c = sub.add_parser("consumer")
    c.add_argument("--sub", required=True)
    c.add_argument("--expect", type=int, required=True)
    c.add_argument("--stamps", default="", help="write each event's added latency (ns)")
    x = sub.add_parser("proxy")
    x.add_argument("--inbound", required=True)
    x.add_argument("--outbound", required=True)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    if arguments.role == "proxy":
        run_proxy(arguments)
    else:
        anyio.run(worker if arguments.role == "worker" else consumer, arguments)
