"""The validated settings of one supervisor run (what ``shardctl run`` flags turn into)."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from shardctl.cluster.discovery import DEFAULT_API_URL, SessionStartLimit
from shardctl.cluster.planner import MAX_SHARDS
from shardctl.errors import ConfigurationError
from shardctl.gateway.intents import Intents
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import DEFAULT_MARGIN, IdentifyMargin
from shardctl.ipc.assignment import MAX_PUBLISH_WINDOW
from shardctl.ipc.control import check_control_endpoint
from shardctl.stream.settings import StreamSettings

Compression = Literal["zlib-stream", "zstd-stream"] | None
COMPRESSIONS: Final = ("zlib-stream", "zstd-stream", "none")
#: Discord's pace: one IDENTIFY per 5 s per bucket.  Faster only against a local sandbox.
DISCORD_IDENTIFY_INTERVAL: Final = 5.0
#: The identify margin's parts as the command line spells them (README "IDENTIFY pace").
DEFAULT_MARGIN_MS: Final = DEFAULT_MARGIN.floor * 1000
DEFAULT_MARGIN_PERCENT: Final = DEFAULT_MARGIN.relative * 100
#: Slower than this and a bot would take days to start; near float's limit the limiter's
#: arithmetic overflows to inf.
MAX_IDENTIFY_INTERVAL: Final = 3600.0
#: A graceful stop's drain: long enough for a consumer a few seconds behind, short enough
#: for a service manager's stop timeout.
DEFAULT_DRAIN_TIMEOUT: Final = 30.0
#: A stop must end: libzmq's LINGER is a 32-bit count of milliseconds, and an hour is plenty.
MAX_DRAIN_TIMEOUT: Final = 3600.0
#: The longest batching window, events-batch's or the workers' (ms): coalescing is worth a
#: little latency, not a lot.
MAX_BATCH_WINDOW_MS: Final = MAX_PUBLISH_WINDOW * 1000  # the assignment checks it again


@dataclass(frozen=True, slots=True)
class RunConfig:
    token: str = field(repr=False)
    api_url: str = DEFAULT_API_URL
    #: None = Discord's recommended count.
    shards: int | None = None
    #: "A-B,C" subset of shard ids run by this instance; None = all.
    shard_ids: str | None = None
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    intents: Intents = field(default_factory=Intents.default)
    compression: Compression = "zlib-stream"
    identify_interval: float = DISCORD_IDENTIFY_INTERVAL
    #: What each bucket's gap gets on top of the interval: this many ms, plus
    #: ``identify_margin_percent`` % of the interval (the built-in limiter's; it widens on op 9).
    identify_margin_ms: float = DEFAULT_MARGIN_MS
    identify_margin_percent: float = DEFAULT_MARGIN_PERCENT
    large_threshold: int = 50
    events_endpoint: str | None = None
    #: Events-batch (one message per worker batch, README "Batched consumers"); None: next
    #: to ``events_endpoint`` (``events-batch.sock``, or another port on its tcp host).
    events_batch_endpoint: str | None = None
    #: How long events-batch holds a small worker batch for others to join it (ms; 0: never):
    #: fewer, fuller messages at a steady load, for at most this much latency.
    events_batch_window_ms: float = 0.0
    #: How long a worker holds an event for others to travel with it to the supervisor (ms;
    #: 0: never): fewer messages on every hop at a steady load, for at most this much
    #: latency on both endpoints (README "Batched consumers").
    publish_window_ms: float = 0.0
    control_endpoint: str | None = None
    #: A remote limiter service (``shardctl limiter``); None runs one in the supervisor.
    limiter: str | None = None
    state_file: Path | None = None
    #: Seconds between session checkpoints while running (cluster/checkpoint.py): the most
    #: of the seq record a crash loses (Discord replays it; consumers see it as replays).
    checkpoint_interval: float = 1.0
    #: Seconds a graceful stop gives consumers and ``output`` to take what they can still
    #: read before the sessions are saved at what was sent (cluster/stop_drain.py).
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    ignore_session_start_limit: bool = False
    #: CURVE key directory (``shardctl keys generate``): every endpoint runs CURVE, and
    #: binds other hosts can reach are allowed.  None: private ipc:// or loopback only.
    curve_keys: Path | None = None
    #: Worker slots filled by ``shardctl worker --supervisor ...`` from other hosts
    #: (shardctl.cluster.remote), on top of the ``processes`` spawned here.
    remote_workers: int = 0
    #: Seconds a shared ``limiter`` has to acknowledge our limits before the start fails.
    limiter_timeout: float = 5.0
    #: Serve loopback ``tcp://`` control and limiter endpoints without CURVE: every local
    #: user can reach them (they get a redacted status, take no slot and may not configure
    #: the limiter; README "Security model").
    insecure_loopback: bool = False
    #: Reshard by itself (cluster/reshard.py) when ``GET /gateway/bot`` recommends more
    #: shards than run (checked every ``reshard_check_interval`` seconds) or a shard is
    #: closed with 4011.
    auto_reshard: bool = False
    reshard_check_interval: float = 300.0
    #: Tests only: let the token go over plain http to a non-loopback API (a sandbox in
    #: another network namespace).  Never for Discord: the token would cross in clear.
    allow_http_api: bool = False
    #: ``--stream``: every event also goes into this JetStream stream, and what it stored
    #: is the durable "forwarded" seq (shardctl.stream).  None: the event bus only.
    stream: StreamSettings | None = None

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise ConfigurationError("the bot token is empty")
        if self.shards is not None and not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigurationError(
                f"--shards must be at least 1 and at most {MAX_SHARDS}, or 'auto' "
                f"(got {self.shards})")
        if not self.allow_http_api:
            check_api_url_for_token(self.api_url)
        if self.remote_workers < 0:
            raise ConfigurationError(
                f"--remote-workers must be at least 0 (got {self.remote_workers})")
        if self.processes < (0 if self.remote_workers else 1):
            raise ConfigurationError(
                f"--processes must be at least {0 if self.remote_workers else 1} "
                f"(got {self.processes})")
        if not 50 <= self.large_threshold <= 250:
            raise ConfigurationError("large_threshold must be between 50 and 250")
        if not (math.isfinite(self.limiter_timeout) and self.limiter_timeout > 0):
            raise ConfigurationError(
                f"--limiter-timeout must be a positive number of seconds "
                f"(got {self.limiter_timeout})")
        if not (math.isfinite(self.reshard_check_interval)
                and self.reshard_check_interval > 0):
            raise ConfigurationError(
                f"--reshard-check-interval must be a positive number of seconds "
                f"(got {self.reshard_check_interval})")
        check_identify_interval(self.identify_interval, self.api_url)
        if not 0 <= self.drain_timeout <= MAX_DRAIN_TIMEOUT:  # nan fails this too
            raise ConfigurationError(
                f"--drain-timeout must be a number of seconds from 0 to "
                f"{MAX_DRAIN_TIMEOUT:g} (got {self.drain_timeout})")
        if self.control_endpoint is not None:
            check_control_endpoint(self.control_endpoint, curve=self.curve_keys is not None,
                                   insecure_loopback=self.insecure_loopback)
        check_margin_ms(self.identify_margin_ms)
        check_margin_percent(self.identify_margin_percent)
        for flag, window in (("--events-batch-window-ms", self.events_batch_window_ms),
                             ("--publish-window-ms", self.publish_window_ms)):
            if not 0 <= window <= MAX_BATCH_WINDOW_MS:  # nan fails too
                raise ConfigurationError(
                    f"{flag} must be from 0 to {MAX_BATCH_WINDOW_MS:g} (got {window})")

    @property
    def identify_margin(self) -> IdentifyMargin:
        return identify_margin(self.identify_margin_ms, self.identify_margin_percent)

    def limits(self, start_limit: SessionStartLimit) -> Limits:
        """The built-in limiter's limits: this run's pace and margin, Discord's budget."""
        return Limits(max_concurrency=start_limit.max_concurrency,
                      interval=self.identify_interval, remaining=start_limit.remaining,
                      total=start_limit.total, reset_after=start_limit.reset_after,
                      margin=self.identify_margin)


def identify_margin(ms: float, percent: float) -> IdentifyMargin:
    """The margin policy of ``--identify-margin-ms`` and ``--identify-margin-percent``."""
    return IdentifyMargin(floor=check_margin_ms(ms) / 1000,
                          relative=check_margin_percent(percent) / 100)


def check_margin_ms(value: float | str) -> float:
    ms = _number(value, "--identify-margin-ms")
    if not (math.isfinite(ms) and ms >= 0):
        raise ConfigurationError(
            f"--identify-margin-ms must be a finite number of milliseconds >= 0 (got {value})")
    return ms


def check_margin_percent(value: float | str) -> float:
    percent = _number(value, "--identify-margin-percent")
    if not (math.isfinite(percent) and 0 <= percent < 100):
        raise ConfigurationError(
            f"--identify-margin-percent must be a percentage of the interval in [0, 100) "
            f"(got {value})")
    return percent


def _number(value: float | str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{flag} must be a number (got {value!r})") from None


def check_identify_interval(interval: float, api_url: str) -> None:
    """Refuse a pace faster than Discord's unless the API is on this machine (a sandbox)."""
    if not 0 < interval <= MAX_IDENTIFY_INTERVAL:  # nan fails this too
        raise ConfigurationError(
            f"--identify-interval must be a positive number of seconds, at most "
            f"{MAX_IDENTIFY_INTERVAL:g} (got {interval})")
    if interval < DISCORD_IDENTIFY_INTERVAL and not is_loopback_url(api_url):
        raise ConfigurationError(
            f"--identify-interval {interval:g} is faster than Discord allows "
            f"(one IDENTIFY per {DISCORD_IDENTIFY_INTERVAL:g} s per bucket); smaller values are "
            "only accepted when --api-url points at a loopback address (a local sandbox)")


def check_api_url_for_token(api_url: str) -> None:
    """Refuse to send a token over plain http to anything but this machine (a sandbox)."""
    try:
        scheme = urlsplit(api_url).scheme
    except ValueError:
        raise ConfigurationError(f"--api-url {api_url!r} is not a URL") from None
    if scheme == "http" and not is_loopback_url(api_url):
        raise ConfigurationError(
            f"--api-url {api_url}: plain http would send the bot token unencrypted; use "
            "https:// (http:// is accepted only for a loopback host, such as a local sandbox)")


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_compression(text: str) -> Compression:
    if text not in COMPRESSIONS:
        raise ConfigurationError(
            f"unknown compression {text!r}: choose one of {', '.join(COMPRESSIONS)}")
    return None if text == "none" else text  # type: ignore[return-value]


def parse_shards(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"--shards must be a number or 'auto' (got {text!r})") from None
    if not 1 <= value <= MAX_SHARDS:
        raise ConfigurationError(
            f"--shards must be at least 1 and at most {MAX_SHARDS}, or 'auto' (got {value})")
    return value


def parse_intents(text: str) -> Intents:
    try:
        return Intents.parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"--intents: {exc}") from None
