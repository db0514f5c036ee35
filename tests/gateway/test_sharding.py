"""Guild routing, identify buckets and snowflakes (protocol §9, §10, §14)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ConfigurationError
from shardctl.gateway import sharding
from shardctl.gateway.sharding import (
    DISCORD_EPOCH_MS,
    MAX_SNOWFLAKE,
    bucket_for,
    parse_snowflake,
    shard_for,
    snowflake_timestamp_ms,
)

#: The worked example of gateway-protocol.md §14.
EXAMPLE = 41771983423143937


def test_public_names_exist() -> None:
    for name in sharding.__all__:
        assert hasattr(sharding, name)


def test_documented_example_routes_to_shard_zero_of_two_and_three() -> None:
    assert EXAMPLE >> 22 == 9959216934
    assert shard_for(EXAMPLE, 2) == 0
    assert shard_for(EXAMPLE, 3) == 0
    assert shard_for(str(EXAMPLE), 3) == 0


def test_documented_example_timestamp() -> None:
    ms = snowflake_timestamp_ms(str(EXAMPLE))
    assert ms == DISCORD_EPOCH_MS + 9959216934
    assert datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") == (
        "2015-04-26T06:26:56.934+00:00"
    )


def test_routing_uses_the_timestamp_bits_only() -> None:
    # Worker/process/increment bits (the low 22) never change the shard.
    base = 1234 << 22
    assert {shard_for(base | low, 7) for low in (0, 1, 0x3FFFFF)} == {1234 % 7}


@given(guild=st.integers(0, MAX_SNOWFLAKE), count=st.integers(1, 10_000),
       as_text=st.booleans())
def test_shard_for_is_the_documented_formula(guild: int, count: int, as_text: bool) -> None:
    shard = shard_for(str(guild) if as_text else guild, count)
    assert shard == (guild >> 22) % count
    assert 0 <= shard < count


@pytest.mark.parametrize("count", [0, -1, True, 1.0, "2"])
def test_shard_count_must_be_a_positive_int(count: object) -> None:
    with pytest.raises(ConfigurationError, match="shard_count"):
        shard_for(1, count)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, MAX_SNOWFLAKE + 1, "", "12a", "-5", " 12", "\u0663",
                                   1.0, True, None, b"12"])
def test_invalid_snowflakes_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match="guild_id"):
        shard_for(value, 2)  # type: ignore[arg-type]


def test_parse_snowflake_accepts_both_wire_forms() -> None:
    assert parse_snowflake("0") == 0
    assert parse_snowflake(str(MAX_SNOWFLAKE)) == MAX_SNOWFLAKE
    assert parse_snowflake(EXAMPLE) == EXAMPLE


def test_buckets_follow_the_max_concurrency_example() -> None:
    # 32 shards with max_concurrency 16: shards k and k+16 share bucket k.
    buckets = [bucket_for(s, 16) for s in range(32)]
    assert buckets == list(range(16)) * 2
    assert {bucket_for(s, 1) for s in range(10)} == {0}


@given(shard_id=st.integers(0, 10**6), mc=st.integers(1, 1024))
def test_bucket_for_is_shard_id_mod_max_concurrency(shard_id: int, mc: int) -> None:
    assert bucket_for(shard_id, mc) == shard_id % mc


@pytest.mark.parametrize(("shard_id", "mc", "field"),
                         [(-1, 1, "shard_id"), (True, 1, "shard_id"), (0, 0, "max_concurrency"),
                          (0, -2, "max_concurrency"), (0, False, "max_concurrency")])
def test_bucket_for_refuses_nonsense(shard_id: int, mc: int, field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        bucket_for(shard_id, mc)
