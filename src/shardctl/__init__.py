"""shardctl: a multiprocess Discord gateway shard cluster manager."""

from __future__ import annotations

from shardctl._version import __version__
from shardctl.cluster.commands import CommandReply
from shardctl.cluster.config import RunConfig
from shardctl.cluster.supervisor import CrashLoopError, ShardStatus, Supervisor
from shardctl.errors import (
    AuthenticationError,
    ConfigurationError,
    DisallowedIntentsError,
    DiscordError,
    GatewayFatalError,
    InvalidIntentsError,
    PayloadError,
    ProtocolError,
    RateLimitedError,
    SessionBudgetError,
    ShardctlError,
    ShardingError,
)
from shardctl.gateway.intents import Intents
from shardctl.ipc.consumer import Consumer, Gap
from shardctl.ipc.events import Event
from shardctl.worker.limiter import LocalSessionLimiter
from shardctl.worker.shard import Shard

__all__ = [
    "AuthenticationError",
    "CommandReply",
    "ConfigurationError",
    "Consumer",
    "CrashLoopError",
    "DisallowedIntentsError",
    "DiscordError",
    "Event",
    "Gap",
    "GatewayFatalError",
    "Intents",
    "InvalidIntentsError",
    "LocalSessionLimiter",
    "PayloadError",
    "ProtocolError",
    "RateLimitedError",
    "RunConfig",
    "SessionBudgetError",
    "Shard",
    "ShardStatus",
    "ShardctlError",
    "ShardingError",
    "Supervisor",
    "__version__",
]

