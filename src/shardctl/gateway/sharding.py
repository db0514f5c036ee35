"""Guild routing, identify buckets and snowflakes (gateway-protocol.md §10, §14).

Shared by the client (which shard owns a guild, which bucket an IDENTIFY waits in) and the
sandbox (which session a guild event goes to), so both sides use one formula.
"""

from __future__ import annotations

from typing import Final

from shardctl.errors import ConfigurationError

__all__ = [
    "DISCORD_EPOCH_MS",
    "MAX_SNOWFLAKE",
    "bucket_for",
    "parse_snowflake",
    "shard_for",
    "snowflake_timestamp_ms",
]

#: Snowflake timestamps count milliseconds from 2015-01-01T00:00:00Z (§14).
DISCORD_EPOCH_MS: Final = 1420070400000
#: Snowflakes are unsigned 64-bit integers (sent as JSON strings).
MAX_SNOWFLAKE: Final = (1 << 64) - 1


def parse_snowflake(value: int | str, what: str = "snowflake") -> int:
    """Accept an int or a string of ASCII digits in the unsigned 64-bit range.

    IDs are JSON strings on the wire (§14), so both forms reach us; anything else (a bool, a
    float, ``"12a"``, a negative number) is a caller bug caught here, before Discord sees it.
    """
    if type(value) is int:
        number = value
    elif (isinstance(value, str) and value.isascii() and value.isdigit()) or (
            isinstance(value, int) and not isinstance(value, bool)):
        number = int(value)
    else:
        raise ConfigurationError(
            f"{what} must be an int or a string of digits, got {type(value).__name__}"
        )
    if not 0 <= number <= MAX_SNOWFLAKE:
        raise ConfigurationError(f"{what} must be in 0..2**64-1, got {number}")
    return number


def shard_for(guild_id: int | str, shard_count: int) -> int:
    """The shard that receives a guild's events: ``(guild_id >> 22) % shard_count`` (§10)."""
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise ConfigurationError(f"shard_count must be a positive int, got {shard_count!r}")
    return (parse_snowflake(guild_id, "guild_id") >> 22) % shard_count


def bucket_for(shard_id: int, max_concurrency: int) -> int:
    """The identify bucket of a shard: ``shard_id % max_concurrency`` (§9).

    Shards in one bucket share a single 5 s IDENTIFY slot bot-wide.
    """
    if isinstance(shard_id, bool) or not isinstance(shard_id, int) or shard_id < 0:
        raise ConfigurationError(f"shard_id must be a non-negative int, got {shard_id!r}")
    if (isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int)
            or max_concurrency < 1):
        raise ConfigurationError(
            f"max_concurrency must be a positive int, got {max_concurrency!r}"
        )
    return shard_id % max_concurrency


def snowflake_timestamp_ms(snowflake: int | str) -> int:
    """Unix milliseconds at which a snowflake was created (§14)."""
    return (parse_snowflake(snowflake) >> 22) + DISCORD_EPOCH_MS
