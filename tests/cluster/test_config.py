from __future__ import annotations

import math

import pytest

from shardctl.cluster.config import (
    MAX_DRAIN_TIMEOUT,
    MAX_IDENTIFY_INTERVAL,
    RunConfig,
    check_api_url_for_token,
    check_identify_interval,
    is_loopback_url,
    parse_compression,
    parse_intents,
    parse_shards,
)
from shardctl.cluster.discovery import SessionStartLimit
from shardctl.errors import ConfigurationError
from shardctl.gateway.intents import Intents
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import IdentifyMargin


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


@pytest.mark.parametrize("interval", [math.nan, math.inf, -math.inf, -1.0,
                                      MAX_IDENTIFY_INTERVAL * 1.01, 1e308])
def test_an_identify_interval_that_is_not_a_sane_number_is_refused(interval: float) -> None:
    with pytest.raises(ConfigurationError, match="positive number of seconds"):
        check_identify_interval(interval, "http://127.0.0.1/api/v10")
    with pytest.raises(ConfigurationError, match="--identify-interval"):
        RunConfig(token="t", identify_interval=interval)


@pytest.mark.parametrize("bound", [math.nan, math.inf, -0.5, MAX_DRAIN_TIMEOUT + 1])
def test_a_drain_timeout_outside_zero_to_an_hour_is_refused(bound: float) -> None:
    with pytest.raises(ConfigurationError, match="--drain-timeout"):
        RunConfig(token="t", drain_timeout=bound)
    assert RunConfig(token="t", drain_timeout=0).drain_timeout == 0


@pytest.mark.parametrize("url", ["http://example.com/api/v10", "http://10.0.0.5/api",
                                 "http://[2001:db8::1]/api"])
def test_the_token_never_goes_to_another_host_over_plain_http(url: str) -> None:
    with pytest.raises(ConfigurationError, match="https://") as info:
        RunConfig(token="MTIz.very-secret", api_url=url)
    assert "very-secret" not in str(info.value)
    with pytest.raises(ConfigurationError):
        check_api_url_for_token(url)
    # Tests may point at a sandbox in another network namespace, and say so.
    assert RunConfig(token="t", api_url=url, allow_http_api=True).api_url == url


@pytest.mark.parametrize("url", ["https://discord.com/api/v10", "http://127.0.0.1:8765/api",
                                 "http://localhost/api", "http://[::1]:1/api"])
def test_https_and_loopback_http_are_accepted_for_the_token(url: str) -> None:
    assert RunConfig(token="t", api_url=url).api_url == url


def test_a_shard_count_beyond_any_bot_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at most"):
        parse_shards(str(10**20))
    with pytest.raises(ConfigurationError, match="at most"):
        RunConfig(token="t", shards=10**20)


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


def test_the_built_in_limiter_paces_by_this_run_and_budgets_by_discord() -> None:
    config = RunConfig(token="t", api_url="http://127.0.0.1:1", identify_interval=0.2,
                       identify_margin_ms=30, identify_margin_percent=2)
    start = SessionStartLimit(total=1000, remaining=990, reset_after=3600.0,
                              max_concurrency=16)
    assert config.limits(start) == Limits(
        max_concurrency=16, interval=0.2, remaining=990, total=1000, reset_after=3600.0,
        margin=IdentifyMargin(floor=0.03, relative=0.02))


@pytest.mark.parametrize("window", [-1.0, 100.5, math.nan, math.inf])
@pytest.mark.parametrize("field", ["events_batch_window_ms", "publish_window_ms"])
def test_a_batching_window_outside_zero_to_100_ms_is_refused(field: str, window: float) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigurationError, match=f"{flag} must be from 0 to 100 "):
        RunConfig(token="t", **{field: window})
    assert getattr(RunConfig(token="t", **{field: 100}), field) == 100
