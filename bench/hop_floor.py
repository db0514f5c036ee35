"""The floor of a ZeroMQ hop: CPU per message of libzmq's own C proxy at a steady rate.

Figure 6 asks the supervisor for ≤ 1 µs of CPU per event at a steady load, where every event
arrives alone.  This measures what any forwarding process pays there before a line of
Python: ``zmq.proxy`` (XSUB → XPUB, all in C, in the process measured) fed by 2 publishers
(the workers' share of the stream) at the same rate, one ~1.5 KB message per event, a
subscriber reading everything.  What remains is libzmq's I/O threads waking per message
(eventfd signalling, one read and one write system call per message on each side).  Its
CPU per message is the reference the supervisor's figure is printed against.

Run alone: ``python -m bench.hop_floor --rate 4000 --count 10000`` prints
``{"count", "cpu_us"}``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import zmq

from bench.common import cpu_seconds

PAYLOAD = b"MESSAGE_CREATE\0" + b"x" * 1500
PUBLISHERS = 2
_PR_SET_PDEATHSIG = 1


def proxy(inbound: str, outbound: str) -> None:
    """The measured process: libzmq's proxy until killed (it holds nothing to clean up; a
    Python signal handler would never run while the proxy blocks in C)."""
    ctx = zmq.Context()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    for sock in (xsub, xpub):  # queue, never drop (libzmq's default is 1,000 messages)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    xsub.bind(inbound)
    xpub.bind(outbound)
    zmq.proxy(xsub, xpub)


def publish(pub: zmq.Socket[bytes], rate: float, count: int, start: float) -> None:
    interval, due = 1.0 / rate, start
    for _ in range(count):
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pub.send(PAYLOAD)


def measure(rate: float, count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hop-") as tmp:
        inbound, outbound = f"ipc://{Path(tmp) / 'in'}", f"ipc://{Path(tmp) / 'out'}"
        pid = os.fork()
        if pid == 0:
            try:
                ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # no orphan
                proxy(inbound, outbound)
            finally:
                os._exit(0)
        try:
            return _drive(pid, inbound, outbound, rate, count)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _drive(pid: int, inbound: str, outbound: str, rate: float, count: int
           ) -> dict[str, float]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(outbound)
    pubs = [ctx.socket(zmq.PUB) for _ in range(PUBLISHERS)]
    try:
        for pub in pubs:
            pub.setsockopt(zmq.SNDHWM, 0)
            pub.connect(inbound)
            _until_through(pub, sub)
        per = count // PUBLISHERS
        before = cpu_seconds(pid)
        start = time.monotonic()
        senders = [threading.Thread(target=publish, args=(pub, rate / PUBLISHERS, per, start))
                   for pub in pubs]
        for sender in senders:
            sender.start()
        for _ in range(per * PUBLISHERS):
            sub.recv()
        used = cpu_seconds(pid) - before
        for sender in senders:
            sender.join()
        return {"count": per * PUBLISHERS, "cpu_us": used * 1e6 / (per * PUBLISHERS)}
    finally:
        for sock in (*pubs, sub):
            sock.close(linger=0)
        ctx.term()


def _until_through(pub: zmq.Socket[bytes], sub: zmq.Socket[bytes]) -> None:
    """PUB/SUB's slow joiner: probe until a message of ``pub`` makes the whole trip."""
    while True:
        pub.send(b"PROBE\0")
        if sub.poll(50):
            while sub.poll(20):
                sub.recv()
            return


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--count", type=int, required=True)
    args = p.parse_args()
    print(json.dumps(measure(args.rate, args.count)), flush=True)


if __name__ == "__main__":
    main()
