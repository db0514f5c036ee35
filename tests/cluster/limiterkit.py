"""What the limiter service's tests share: serving one for the length of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from shardctl.cluster.limiter_service import SessionLimiterService


@asynccontextmanager
async def serving(server: SessionLimiterService) -> AsyncIterator[SessionLimiterService]:
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        yield server
        tg.cancel_scope.cancel()
