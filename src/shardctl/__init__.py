"""shardctl: a multiprocess Discord gateway shard cluster manager."""

from __future__ import annotations

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
]

__version__ = "0.1.0"
