"""shardctl: a multiprocess Discord gateway shard cluster manager."""

from __future__ import annotations

from shardctl._version import __version__
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

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DisallowedIntentsError",
    "DiscordError",
    "GatewayFatalError",
    "Intents",
    "InvalidIntentsError",
    "PayloadError",
    "ProtocolError",
    "RateLimitedError",
    "SessionBudgetError",
    "ShardctlError",
    "ShardingError",
    "__version__",
]

