from __future__ import annotations

import pytest

from shardctl.cluster.config import (
    RunConfig,
    check_identify_interval,
    is_loopback_url,
    parse_compression,
    parse_intents,
    parse_shards,
)
from shardctl.errors import ConfigurationError
from shardctl.gateway.intents import Intents


def test_repr_hides_the_token() -> None:
    config = RunConfig(token="MTIz.very-secret")
    assert "very-secret" not in repr(config)


def test_fast_identify_only_against_loopback() -> None:
    check_identify_interval(0.2, "http://127.0.0.1:8080/api/v10")
    check_identify_interval(0.2, "http://localhost:1/api/v10")
    with pytest.raises(ConfigurationError, match="faster than Discord allows"):
        check_identify_interval(4.9, "https://discord.com/api/v10")
    with pytest.raises(ConfigurationError, match="positive"):
        check_identify_interval(0.0, "http://127.0.0.1/api/v10")


def test_loopback_detection() -> None:
    assert is_loopback_url("http://[::1]:80/")
    assert not is_loopback_url("http://10.0.0.1/")
    assert not is_loopback_url("https://discord.com/api/v10")


def test_parsers() -> None:
    assert parse_compression("none") is None
    assert parse_compression("zstd-stream") == "zstd-stream"
    assert parse_shards("auto") is None
    assert parse_shards("16") == 16
    assert parse_intents("GUILDS,guild_messages") == Intents.GUILDS | Intents.GUILD_MESSAGES
    assert parse_intents("513") == Intents.GUILDS | Intents.GUILD_MESSAGES


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: parse_compression("gzip"), "unknown compression"),
        (lambda: parse_shards("many"), "number or 'auto'"),
        (lambda: parse_shards("0"), "at least 1"),
        (lambda: parse_intents("GUILDS,NOPE"), "unknown intent"),
        (lambda: parse_intents("131072"), "undocumented bits"),
        (lambda: RunConfig(token=" "), "token is empty"),
        (lambda: RunConfig(token="t", processes=0), "processes"),
    ],
)
def test_bad_values_are_named(call: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        call()  # type: ignore[operator]
