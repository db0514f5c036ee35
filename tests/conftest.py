from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # pyzmq's async sockets exist for asyncio only, so everything runs anyio on asyncio.
    return "asyncio"
