"""A TCP port for a server that another process binds later (``shardctl nats``, the tests).

A port from ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the same range
it takes the source port of every outgoing connection from.  Between the pick and the other
process's bind, any ``connect()`` on the machine may take that port (a busy test run does
thousands), and the server fails with EADDRINUSE: seen in CI.  So :func:`unused_port` picks
below that range, where the kernel never hands a port out by itself, and checks it is free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Final

__all__ = ["unused_port"]

#: Linux's default ephemeral range, when /proc cannot say (other systems use 49152-65535).
_DEFAULT_RANGE: Final = (32768, 60999)
#: How far below the ephemeral range to look (and the lowest port ever picked).
_SPAN: Final = 16384
_LOWEST: Final = 10000
_TRIES: Final = 200


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")
                    ) -> tuple[int, int]:
    """The kernel's (first, last) ephemeral port."""
    try:
        first, last = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_RANGE
    return first, last


def unused_port(host: str = "127.0.0.1", *, rng: random.Random | None = None,
                ephemeral: tuple[int, int] | None = None) -> int:
    """A port of ``host`` nothing is bound to now, outside the ephemeral range when it can.

    Random rather than sequential, so two runs picking at once rarely try the same ports.
    Falls back to a kernel-picked port when no port below the range is free (a range that
    starts too low to leave any).
    """
    pick = rng or random.SystemRandom()
    first, _ = ephemeral or ephemeral_range()
    low, high = max(_LOWEST, first - _SPAN), first - 1
    if low <= high:
        for _ in range(_TRIES):
            port = pick.randint(low, high)
            if _free(host, port):
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
