"""Where a RESUME (and the token in it) may go: gateway/resume_url.py."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.gateway.resume_url import resume_url_refusal

SANDBOX = ("ws://127.0.0.1:8123/", "http://127.0.0.1:8123/api/v10")
DISCORD = ("wss://gateway.discord.gg", "https://discord.com/api/v10")


@pytest.mark.parametrize("url", [
    "wss://gateway-us-east1-b.discord.gg",       # what READY carries live
    "wss://gateway-us-east1-c.discord.gg/?v=10&encoding=json",
    "wss://gateway.discord.gg/",
    "wss://GATEWAY-US-EAST1-D.Discord.GG:443",   # hosts are case-insensitive
])
def test_discord_gateway_hosts_over_wss_are_resumed_at(url: str) -> None:
    assert resume_url_refusal(url) is None
    assert resume_url_refusal(url, SANDBOX) is None


@pytest.mark.parametrize("url", [
    "ws://gateway-us-east1-b.discord.gg",        # no TLS: the token in clear
    "wss://attacker.invalid/",
    "wss://discord.gg.attacker.invalid",
    "wss://attackerdiscord.gg",
    "wss://gateway.discord.gg@attacker.invalid/",  # userinfo: the host is the attacker's
    "https://gateway.discord.gg",
    "wss://gateway.discord.gg\n.attacker.invalid",
    "wss://gateway.discord.gg:99999",
    "wss://[::1",
    "wss:///resume",
    "",
])
def test_other_hosts_and_schemes_are_refused(url: str) -> None:
    reason = resume_url_refusal(url, DISCORD)
    assert reason is not None and "resume_gateway_url" in reason


def test_the_configured_gateway_s_host_is_trusted_with_its_own_scheme() -> None:
    assert resume_url_refusal("ws://127.0.0.1:8123/resume/", SANDBOX) is None
    assert resume_url_refusal("wss://127.0.0.1:9/x", SANDBOX) is None
    # the same host, but plain ws:// while the trusted gateway is wss://: refused
    assert resume_url_refusal("ws://gw.example/", ["wss://gw.example/"]) is not None
    assert resume_url_refusal("wss://gw.example/r", ["wss://gw.example/"]) is None
    # a sandbox's host is trusted only when it is configured
    assert resume_url_refusal("ws://127.0.0.1:8123/resume/", DISCORD) is not None


def test_the_reason_names_the_host_and_nothing_else_of_the_url() -> None:
    reason = resume_url_refusal("wss://evil.example/steal?token=Bot%20abc.def", DISCORD)
    assert reason is not None
    assert "'evil.example'" in reason and "abc" not in reason and "steal" not in reason


@given(st.text(max_size=80), st.lists(st.text(max_size=40), max_size=3))
def test_anything_is_judged_without_raising(url: str, trusted: list[str]) -> None:
    resume_url_refusal(url, trusted)


_hosts = st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)


@given(st.sampled_from(["ws", "wss", "http"]), _hosts, st.sampled_from(["", ":443", ":8123"]),
       st.sampled_from(["", "/", "/resume/?v=10"]))
def test_an_accepted_url_is_wss_on_discord_or_on_a_trusted_host(
        scheme: str, host: str, port: str, path: str) -> None:
    url = f"{scheme}://{host}{port}{path}"
    if resume_url_refusal(url, SANDBOX) is None:
        got = (urlsplit(url).hostname or "").rstrip(".")
        assert (scheme == "wss" and (got == "discord.gg" or got.endswith(".discord.gg"))) \
            or (got == "127.0.0.1" and scheme in ("ws", "wss"))
