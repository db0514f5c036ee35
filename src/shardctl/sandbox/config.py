"""SandboxConfig: every [choice] of gateway-protocol.md as a knob, the doc's pick as default.

One frozen dataclass so a test, a benchmark and the ``shardctl sandbox`` command all describe
the emulated Discord the same way (the CLI builds one option per field from ``FIELD_HELP``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Final

from shardctl.gateway.intents import PRIVILEGED_INTENTS
from shardctl.sandbox.faults import ScheduledFault
from shardctl.sandbox.routing import ROUTINGS

#: Discord's documented per-shard guild cap (§10): more routed guilds → 4011.
DEFAULT_MAX_GUILDS_PER_SHARD: Final = 2500
#: How a client frame's arrival is stamped (what IDENTIFY pacing is judged by): ``loop`` when
#: the connection's handler gets round to it, as a busy server's event loop does; ``kernel``
#: the kernel's receive time (``SO_TIMESTAMPNS``), kinder than any loaded server.
ARRIVAL_STAMPS: Final = ("loop", "kernel")


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """What the emulated Discord looks like and how strictly it polices the client."""

    token: str = field(default="sandbox-token", repr=False)
    shard_count: int = 1
    max_concurrency: int = 1
    identify_interval: float = 5.0
    session_start_total: int = 1000
    session_start_remaining: int | None = None
    session_start_window: float = 86400.0
    heartbeat_interval_ms: int = 41250
    heartbeat_tolerance: float = 0.25
    heartbeat_request_grace: float = 1.0
    guilds_per_shard: int = 2
    down_guilds: int = 0
    down_duration: float = 1.0
    members_per_guild: int = 50
    max_guilds_per_shard: int = DEFAULT_MAX_GUILDS_PER_SHARD
    required_shard_multiple: int = 1
    dispatch_rate: float = 0.0
    dispatch_total: int = 0
    privileged_intents: int = PRIVILEGED_INTENTS
    session_ttl: float = 120.0
    replay_buffer: int = 10000
    op9_delay: float = 0.0
    op9_idle_timeout: float = 5.0
    reconnect_close_after: float = 3.0
    strict: bool = True
    seed: int | None = None
    frame_limit: int = 120
    frame_window: float = 60.0
    frame_window_fixed: bool = False
    presence_limit: int = 5
    presence_window: float = 20.0
    member_request_window: float = 30.0
    max_payload_bytes: int = 4096
    hello_before_version_close: bool = False
    resume_seq_ahead_op9: bool = False
    resume_path: str = "/resume/"
    resume_host: str | None = None
    zlib_split: int = 1
    zstd_level: int = 1
    payload_compress_threshold: int = 1024
    rest_429_count: int = 0
    rest_retry_after: float = 1.5
    application_id: int = 1100000000000000001
    application_flags: int = 0
    bot_user_id: int = 1100000000000000001
    bot_username: str = "sandbox-bot"
    full_voice_channels: bool = False
    record_dispatches: bool = True
    arrival_stamp: str = "loop"
    arrival_jitter_ms: float = 0.0
    routing: str = "every"
    faults: tuple[ScheduledFault, ...] = ()

    def __post_init__(self) -> None:
        checks = (
            (self.shard_count >= 1, "shard_count must be >= 1"),
            (self.max_concurrency >= 1, "max_concurrency must be >= 1"),
            (self.identify_interval >= 0, "identify_interval must be >= 0"),
            (self.heartbeat_interval_ms > 0, "heartbeat_interval_ms must be > 0"),
            (self.heartbeat_tolerance >= 0, "heartbeat_tolerance must be >= 0"),
            (self.guilds_per_shard >= 0, "guilds_per_shard must be >= 0"),
            (self.members_per_guild >= 1, "members_per_guild must be >= 1 (the bot)"),
            (self.dispatch_rate >= 0, "dispatch_rate must be >= 0"),
            (self.replay_buffer >= 0, "replay_buffer must be >= 0"),
            (self.zlib_split >= 1, "zlib_split must be >= 1"),
            (self.frame_limit >= 1, "frame_limit must be >= 1"),
            (self.arrival_stamp in ARRIVAL_STAMPS,
             f"arrival_stamp must be one of {', '.join(ARRIVAL_STAMPS)}"),
            (0 <= self.arrival_jitter_ms < math.inf,
             "arrival_jitter_ms must be a finite number >= 0"),
            (self.routing in ROUTINGS, f"routing must be one of {', '.join(ROUTINGS)}"),
            (self.resume_path.startswith("/") and self.resume_path != "/",
             "resume_path must be an absolute path other than /"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def heartbeat_interval(self) -> float:
        """HELLO's interval in seconds."""
        return self.heartbeat_interval_ms / 1000.0

    @property
    def initial_remaining(self) -> int:
        if self.session_start_remaining is None:
            return self.session_start_total
        return self.session_start_remaining


#: One line per knob, used by ``shardctl sandbox --help``.
FIELD_HELP: Final[dict[str, str]] = {
    "token": "bot token the emulator accepts (REST 'Bot <token>', IDENTIFY/RESUME)",
    "shard_count": "shard count /gateway/bot recommends; guilds are spread over it",
    "max_concurrency": "identify buckets (shard_id % max_concurrency)",
    "identify_interval": "seconds between IDENTIFYs of one bucket (faster → op 9 false)",
    "session_start_total": "session starts per window (going past it resets the token)",
    "session_start_remaining": "starts left at startup (default: total)",
    "session_start_window": "seconds of the session-start window (opens at first IDENTIFY)",
    "heartbeat_interval_ms": "HELLO heartbeat_interval in ms",
    "heartbeat_tolerance": "fraction of the interval a beat may be late before close 4000",
    "heartbeat_request_grace": "seconds a client has to answer a server op 1 (else violation)",
    "guilds_per_shard": "guilds routed to each of shard_count shards",
    "down_guilds": "guilds per session that are in an outage at READY (GUILD_DELETE first)",
    "down_duration": "seconds until a down guild's GUILD_CREATE",
    "members_per_guild": "members in each guild (the bot included)",
    "max_guilds_per_shard": "guilds a session may hold before close 4011",
    "required_shard_multiple": "num_shards must be a multiple of this (else 4010)",
    "dispatch_rate": "MESSAGE_CREATE per second per session (traffic generator)",
    "dispatch_total": "stop generating after this many per session (0 = unlimited)",
    "privileged_intents": "privileged intents enabled for the bot (others → 4014)",
    "session_ttl": "seconds a detached session stays resumable",
    "replay_buffer": "dispatches kept per session for RESUME replay",
    "op9_delay": "seconds before the op 9 answering a too-fast IDENTIFY",
    "op9_idle_timeout": "close 4003 if the client does nothing this long after op 9",
    "reconnect_close_after": "close 4000 if the client is still open this long after op 7",
    "strict": "strict checks: 4013 on unknown intent bits, 4008 on 6th presence, ...",
    "seed": "random seed for session ids (None: different every run)",
    "frame_limit": "client frames allowed per frame_window per connection (else 4008)",
    "frame_window": "seconds of the client frame window",
    "frame_window_fixed": "use a fixed window instead of a sliding one",
    "presence_limit": "op 3 updates per presence_window",
    "presence_window": "seconds of the presence window",
    "member_request_window": "seconds between all-member op 8 per guild (RATE_LIMITED)",
    "max_payload_bytes": "largest client frame in bytes (bigger → 4002)",
    "hello_before_version_close": "send HELLO before closing 4012 on a bad v",
    "resume_seq_ahead_op9": "answer a RESUME seq beyond the last s with op 9 instead of 4007",
    "resume_path": "path of resume_gateway_url (distinct from the connect URL /)",
    "resume_host": "host named in resume_gateway_url (default: the one it listens on)",
    "zlib_split": "spread each zlib-stream payload over this many messages",
    "zstd_level": "zstd-stream compression level (1 keeps ~0.1 MB per socket; 3 ~0.8 MB)",
    "payload_compress_threshold": "IDENTIFY compress:true zlib-compresses payloads this big",
    "rest_429_count": "answer the next N GET /gateway/bot with 429",
    "rest_retry_after": "retry_after (s) of injected 429s",
    "application_id": "READY application.id",
    "application_flags": "READY application.flags",
    "bot_user_id": "the bot user's id",
    "bot_username": "the bot user's name",
    "full_voice_channels": "voice channels are full: op 4 gets no answer",
    "record_dispatches": "record every dispatch sent (turn off for long benchmarks)",
    "arrival_stamp": "when a client frame counts as arrived: loop (when the handler reads it, "
                     "as a busy server does) or kernel (the kernel's receive time, kinder)",
    "arrival_jitter_ms": "each client frame is read a random 0..this many ms late (seeded by "
                         "seed), as on a loaded server",
    "routing": "guild events while two shard counts run (a reshard): every (each session "
               "whose own [shard_id, num_shards] owns the guild, as Discord does) or newest "
               "(the owner under the newest count only, else the older count's owner)",
    "faults": "scheduled faults (CLI: KIND[:ARG]@SECONDS[/SHARD], repeatable)",
}

assert set(FIELD_HELP) == {f.name for f in fields(SandboxConfig)}
