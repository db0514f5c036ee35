"""unused_port: a port another process binds later, never one the kernel hands out itself."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from shardctl.ports import ephemeral_range, unused_port


def test_the_port_is_below_the_ephemeral_range_and_bindable() -> None:
    first, _ = ephemeral_range()
    for seed in range(20):
        port = unused_port(rng=random.Random(seed))
        assert port < first
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free when returned


class _Picks(random.Random):
    """Picks the given ports in turn."""

    def __init__(self, *ports: int) -> None:
        super().__init__()
        self.ports = list(ports)

    def randint(self, a: int, b: int) -> int:
        port = self.ports.pop(0)
        assert a <= port <= b
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_taken_port_is_skipped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        free = next(p for p in range(port - 1, port - 100, -1) if _bindable(p))
        got = unused_port(ephemeral=(port + 1, 65535), rng=_Picks(port, free))
    assert got == free


def test_a_range_that_leaves_no_room_below_falls_back_to_the_kernel() -> None:
    port = unused_port(ephemeral=(1024, 65535))
    assert 1024 <= port <= 65535


def test_the_range_is_read_from_the_kernel_file(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("40000\t50000\n")
    assert ephemeral_range(path) == (40000, 50000)
    path.write_text("junk")
    assert ephemeral_range(path) == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
