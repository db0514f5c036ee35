"""shardctl: a multiprocess Discord gateway shard cluster manager.

The public names load on first use (PEP 562): a worker process imports ``shardctl.worker``
and with it this package, and must not pay for the supervisor (``cluster/``, httpx) it
never runs; the supervisor must not load the websocket client its workers use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardctl._lazy import exports
from shardctl._version import __version__

if TYPE_CHECKING:
    from shardctl.cluster.config import RunConfig
    from shardctl.cluster.reshard import ReshardError, ReshardResult
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
    from shardctl.gateway.limits import Limits
    from shardctl.ipc.commands_client import CommandRefusedError, CommandReply, Commands
    from shardctl.ipc.consumer import Consumer, Gap
    from shardctl.ipc.events import Event
    from shardctl.stream.commands import StreamCommands
    from shardctl.stream.consumer import StreamConsumer
    from shardctl.stream.settings import StreamSettings
    from shardctl.worker.limiter import LocalSessionLimiter
    from shardctl.worker.shard import Shard

#: Public name → the module that defines it; mirrors the TYPE_CHECKING imports above.
_WHERE: Final[dict[str, str]] = {
    "AuthenticationError": "shardctl.errors",
    "CommandRefusedError": "shardctl.ipc.commands_client",
    "CommandReply": "shardctl.ipc.commands_client",
    "Commands": "shardctl.ipc.commands_client",
    "ConfigurationError": "shardctl.errors",
    "Consumer": "shardctl.ipc.consumer",
    "CrashLoopError": "shardctl.cluster.supervisor",
    "DisallowedIntentsError": "shardctl.errors",
    "DiscordError": "shardctl.errors",
    "Event": "shardctl.ipc.events",
    "Gap": "shardctl.ipc.consumer",
    "GatewayFatalError": "shardctl.errors",
    "Intents": "shardctl.gateway.intents",
    "InvalidIntentsError": "shardctl.errors",
    "Limits": "shardctl.gateway.limits",
    "LocalSessionLimiter": "shardctl.worker.limiter",
    "PayloadError": "shardctl.errors",
    "ProtocolError": "shardctl.errors",
    "RateLimitedError": "shardctl.errors",
    "ReshardError": "shardctl.cluster.reshard",
    "ReshardResult": "shardctl.cluster.reshard",
    "RunConfig": "shardctl.cluster.config",
    "SessionBudgetError": "shardctl.errors",
    "Shard": "shardctl.worker.shard",
    "StreamCommands": "shardctl.stream.commands",
    "StreamConsumer": "shardctl.stream.consumer",
    "StreamSettings": "shardctl.stream.settings",
    "ShardStatus": "shardctl.cluster.supervisor",
    "ShardctlError": "shardctl.errors",
    "ShardingError": "shardctl.errors",
    "Supervisor": "shardctl.cluster.supervisor",
}

__all__ = [
    "AuthenticationError",
    "CommandRefusedError",
    "CommandReply",
    "Commands",
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
    "Limits",
    "LocalSessionLimiter",
    "PayloadError",
    "ProtocolError",
    "RateLimitedError",
    "ReshardError",
    "ReshardResult",
    "RunConfig",
    "SessionBudgetError",
    "Shard",
    "ShardStatus",
    "ShardctlError",
    "ShardingError",
    "StreamCommands",
    "StreamConsumer",
    "StreamSettings",
    "Supervisor",
    "__version__",
]


__getattr__, __dir__ = exports('shardctl', _WHERE, globals(), __all__)
