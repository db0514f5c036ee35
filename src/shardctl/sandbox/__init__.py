"""A local Discord: REST + gateway emulator with fault injection for tests and benchmarks.

Usage::

    async with Sandbox(SandboxConfig(shard_count=2), port=0) as sb:
        ...connect a client to sb.gateway_url / sb.api_url...
        await sb.wait_for(lambda: len(sb.records("ready")) == 2, timeout=5)
        await sb.inject(0, "reconnect")

The names load on first use (PEP 562): the CLI reads :class:`SandboxConfig` and the fault
parser to build its options, and must not load the websocket server for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardctl._lazy import exports

if TYPE_CHECKING:
    from shardctl.sandbox.blast import Blast
    from shardctl.sandbox.config import SandboxConfig
    from shardctl.sandbox.faults import (
        Close,
        CorruptFrame,
        Drop,
        Fault,
        GuildOutage,
        InvalidSession,
        NotJson,
        Reconnect,
        RefuseConnections,
        RequestHeartbeat,
        ScheduledFault,
        Zombie,
        parse_fault,
    )
    from shardctl.sandbox.record import Record, Violation
    from shardctl.sandbox.server import Sandbox

_FAULTS: Final = "shardctl.sandbox.faults"
#: Public name → the module that defines it; mirrors the TYPE_CHECKING imports above.
_WHERE: Final[dict[str, str]] = {
    "Blast": "shardctl.sandbox.blast",
    "Close": _FAULTS,
    "CorruptFrame": _FAULTS,
    "Drop": _FAULTS,
    "Fault": _FAULTS,
    "GuildOutage": _FAULTS,
    "InvalidSession": _FAULTS,
    "NotJson": _FAULTS,
    "Reconnect": _FAULTS,
    "Record": "shardctl.sandbox.record",
    "RefuseConnections": _FAULTS,
    "RequestHeartbeat": _FAULTS,
    "Sandbox": "shardctl.sandbox.server",
    "SandboxConfig": "shardctl.sandbox.config",
    "ScheduledFault": _FAULTS,
    "Violation": "shardctl.sandbox.record",
    "Zombie": _FAULTS,
    "parse_fault": _FAULTS,
}

__all__ = [
    "Blast",
    "Close",
    "CorruptFrame",
    "Drop",
    "Fault",
    "GuildOutage",
    "InvalidSession",
    "NotJson",
    "Reconnect",
    "Record",
    "RefuseConnections",
    "RequestHeartbeat",
    "Sandbox",
    "SandboxConfig",
    "ScheduledFault",
    "Violation",
    "Zombie",
    "parse_fault",
]


__getattr__, __dir__ = exports('shardctl.sandbox', _WHERE, globals(), __all__)
