from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardctl.stream.server import NatsServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """One ``nats-server -js`` on loopback with its store in tmp_path; stopped after."""
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
