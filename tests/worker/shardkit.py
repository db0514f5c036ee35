"""Helpers for Shard integration tests against the sandbox over loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from shardctl.gateway.intents import Intents
from shardctl.gateway.limits import Limits
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.worker.limiter import LocalSessionLimiter
from shardctl.worker.shard import Shard

TOKEN = "sandbox-token"
INTENTS = int(Intents.GUILDS | Intents.GUILD_MESSAGES)


def config(**kw: Any) -> SandboxConfig:
    args: dict[str, Any] = {"token": TOKEN, "heartbeat_interval_ms": 600,
                            "identify_interval": 0.3, "session_ttl": 30.0, "seed": 1}
    args.update(kw)
    return SandboxConfig(**args)


class Events:
    """The shard's output: (name, data, shard.seq at that moment), with a condition wait."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any, int | None]] = []
        self._changed = anyio.Event()

    def __call__(self, shard: Shard, name: str, data: Any) -> None:
        self.items.append((name, data, shard.seq))
        self._changed.set()
        self._changed = anyio.Event()

    def names(self) -> list[str]:
        return [n for n, _, _ in self.items]

    def count(self, name: str) -> int:
        return sum(1 for n, _, _ in self.items if n == name)

    async def wait_for(self, predicate: Callable[[], bool],
                       timeout: float = 5.0) -> None:  # noqa: ASYNC109 - like Sandbox.wait_for
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()


def make_shard(sb: Sandbox, events: Any, *, shard_id: int = 0, shard_count: int = 1,
               limiter: Any = None, **kw: Any) -> Shard:
    args: dict[str, Any] = {
        "id": shard_id, "token": TOKEN, "total_shard_count": shard_count,
        "gateway": sb.gateway_url, "output": events, "intents": INTENTS,
        "session_limiter": limiter or LocalSessionLimiter(Limits(interval=0.35)),
        "receive_timeout": 10.0,
    }
    args.update(kw)
    return Shard(**args)


def dispatch_seqs(events: Events) -> list[int]:
    """``s`` of every dispatch the output saw (lifecycle events excluded)."""
    lifecycle = {"SHARD_READY", "SHARD_RESUMED", "INVALID_SESSION", "DISCONNECT"}
    return [s for n, _, s in events.items if n not in lifecycle and s is not None]
