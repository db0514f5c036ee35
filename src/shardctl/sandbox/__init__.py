"""A local Discord: REST + gateway emulator with fault injection for tests and benchmarks.

Usage::

    async with Sandbox(SandboxConfig(shard_count=2), port=0) as sb:
        ...connect a client to sb.gateway_url / sb.api_url...
        await sb.wait_for(lambda: len(sb.records("ready")) == 2, timeout=5)
        await sb.inject(0, "reconnect")
"""

from __future__ import annotations

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
