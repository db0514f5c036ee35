"""What ``--stream`` and the ``[stream]`` table of the configuration turn into (no NATS here).

Defaults (README "The durable stream"): stream ``SHARDCTL`` on subjects ``shardctl.>``,
kept 24 h or 4 GiB, whichever ends first; a full stream refuses new events (discard "new"),
which the supervisor turns into back-pressure, never into silent loss.  The duplicate
window -- how long the server remembers a ``Nats-Msg-Id`` -- is 2 minutes, far longer than
a supervisor takes to restart and RESUME, so a replay after a crash is stored once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from shardctl.errors import ConfigurationError

DEFAULT_NAME: Final = "SHARDCTL"
DEFAULT_PREFIX: Final = "shardctl"
DEFAULT_MAX_AGE: Final = 24 * 3600.0
DEFAULT_MAX_BYTES: Final = 4 << 30
DEFAULT_DUPLICATE_WINDOW: Final = 120.0
DEFAULT_REPLICAS: Final = 1
#: Events the supervisor holds for the stream before it holds the workers back.
DEFAULT_BUFFER: Final = 20_000
#: JetStream allows 1..5 replicas (an odd count keeps a quorum).
MAX_REPLICAS: Final = 5
_SCHEMES: Final = ("nats", "tls")
#: Stream names may not hold these (JetStream: no whitespace, ".", "*", ">", path chars).
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Subject tokens separated by dots, each free of wildcards and whitespace.
_PREFIX: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """One JetStream stream of a bot's events and the servers that hold it."""

    servers: tuple[str, ...]
    name: str = DEFAULT_NAME
    prefix: str = DEFAULT_PREFIX
    max_age: float = DEFAULT_MAX_AGE
    max_bytes: int = DEFAULT_MAX_BYTES
    replicas: int = DEFAULT_REPLICAS
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
    buffer: int = DEFAULT_BUFFER
    #: serve gateway commands over NATS request-reply (stream/commands.py): whoever NATS
    #: lets publish on ``<prefix>-commands`` may send them, so only when asked for
    commands: bool = False

    def __post_init__(self) -> None:
        if not self.servers:
            raise ConfigurationError("--stream needs at least one nats://HOST:PORT")
        for url in self.servers:
            check_server(url)
        check_name(self.name)
        check_prefix(self.prefix)
        check_max_age(self.max_age)
        check_max_bytes(self.max_bytes)
        check_replicas(self.replicas)
        if self.buffer < 100:
            raise ConfigurationError(f"--stream-buffer must be at least 100 (got {self.buffer})")
        if not (math.isfinite(self.duplicate_window) and 0 < self.duplicate_window
                <= self.max_age):
            raise ConfigurationError(
                "the stream's duplicate window must be positive and at most its max age "
                f"(got {self.duplicate_window})")


def parse_servers(text: str) -> tuple[str, ...]:
    """``nats://a:4222,nats://b:4222`` → each URL checked (ConfigurationError names it)."""
    servers = tuple(part.strip() for part in text.split(","))
    if not text.strip() or not all(servers):
        raise ConfigurationError(
            f"--stream must be nats://HOST:PORT[,nats://HOST:PORT...] (got {text!r})")
    for url in servers:
        check_server(url)
    return servers


def check_servers(text: str) -> str:
    """``text`` itself once :func:`parse_servers` accepts it (an option's value)."""
    parse_servers(text)
    return text


def check_server(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme not in _SCHEMES or not parts.hostname
            or not port or parts.path not in ("", "/") or parts.query):
        raise ConfigurationError(
            f"--stream: {url!r} is not a NATS server URL; expected nats://HOST:PORT "
            "(or tls://HOST:PORT)")
    return url


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"--stream-name must be 1-64 letters, digits, '_' or '-' (got {name!r})")
    return name


def check_durable(name: str) -> str:
    """A durable consumer's name: what a stream name may hold."""
    if not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"--durable must be 1-64 letters, digits, '_' or '-' (got {name!r})")
    return name


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or len(prefix) > 128:
        raise ConfigurationError(
            "--stream-prefix must be dot-separated tokens of letters, digits, '_' or '-' "
            f"(got {prefix!r})")
    return prefix


def check_max_age(value: float | str) -> float:
    age = _number(value, "--stream-max-age")
    if not (math.isfinite(age) and age >= 1):
        raise ConfigurationError(
            f"--stream-max-age must be a number of seconds, at least 1 (got {value})")
    return age


def check_max_bytes(value: int | str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise ConfigurationError(
            f"--stream-max-bytes must be a whole number of bytes (got {value!r})") from None
    if size < 1 << 20:
        raise ConfigurationError(
            f"--stream-max-bytes must be at least 1048576 (1 MiB) (got {value})")
    return size


def check_replicas(value: int | str) -> int:
    try:
        replicas = int(value)
    except ValueError:
        replicas = 0
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigurationError(
            f"--stream-replicas must be 1..{MAX_REPLICAS} (got {value!r})")
    return replicas


def _number(value: float | str, flag: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ConfigurationError(f"{flag} must be a number (got {value!r})") from None
