"""The supervisor's decisions, without I/O: inputs in, actions out (``machine.py``).

``inputs`` are the facts the supervisor observes, ``actions`` what it must do about them,
``book`` which session and seq each shard resumes, ``machine`` the core that joins them.
"""

from __future__ import annotations

from shardctl.cluster.core.actions import (
    Action,
    Adopt,
    Assign,
    CrashLoopError,
    Fail,
    Kill,
    Lost,
    NoAdopter,
    Refuse,
    SaveSessions,
    Send,
    Spawn,
    StopPeer,
)
from shardctl.cluster.core.book import SessionBook, settle
from shardctl.cluster.core.inputs import (
    Beat,
    Input,
    ShardFailed,
    StopRequested,
    Stray,
    Tick,
    Watermark,
    WorkerExited,
    WorkerRegistered,
)
from shardctl.cluster.core.machine import WORKER_STARTUP_GRACE, SupervisorCore

__all__ = ["WORKER_STARTUP_GRACE", "Action", "Adopt", "Assign", "Beat", "CrashLoopError",
           "Fail", "Input", "Kill", "Lost", "NoAdopter", "Refuse", "SaveSessions", "Send",
           "SessionBook", "ShardFailed", "Spawn", "StopPeer", "StopRequested", "Stray",
           "SupervisorCore", "Tick", "Watermark", "WorkerExited", "WorkerRegistered",
           "settle"]
