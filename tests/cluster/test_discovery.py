from __future__ import annotations

import json

import httpx
import pytest

from shardctl.cluster.discovery import USER_AGENT, authorization, fetch_gateway_bot
from shardctl.errors import AuthenticationError, DiscordError, RateLimitedError

TOKEN = "MTIzNDU2Nzg5.secret-token-value"
BODY = {
    "url": "wss://gateway.example/",
    "shards": 4,
    "session_start_limit": {"total": 1000, "remaining": 996, "reset_after": 51200000,
                            "max_concurrency": 2},
}


class FakeAPI:
    """A handler for httpx.MockTransport replaying a scripted list of responses."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.calls.append(delay)


def ok() -> httpx.Response:
    return httpx.Response(200, json=BODY)


@pytest.mark.anyio
async def test_parses_body_and_sends_bot_authorization() -> None:
    api = FakeAPI(ok())
    info = await fetch_gateway_bot(TOKEN, api_url="http://api.test/api/v10",
                                   transport=httpx.MockTransport(api))
    assert info.url == "wss://gateway.example/"
    assert info.shards == 4
    assert info.session_start_limit.remaining == 996
    assert info.session_start_limit.reset_after == pytest.approx(51200.0)
    assert info.session_start_limit.max_concurrency == 2
    request = api.requests[0]
    assert str(request.url) == "http://api.test/api/v10/gateway/bot"
    assert request.headers["Authorization"] == f"Bot {TOKEN}"
    assert request.headers["User-Agent"] == USER_AGENT


def test_authorization_keeps_existing_prefix() -> None:
    assert authorization("Bot abc") == "Bot abc"
    assert authorization(" abc ") == "Bot abc"


@pytest.mark.anyio
async def test_401_is_fatal_at_once_and_hides_the_token() -> None:
    api = FakeAPI(httpx.Response(401, json={"message": "401: Unauthorized", "code": 0}), ok())
    with pytest.raises(AuthenticationError) as info:
        await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(api))
    assert len(api.requests) == 1
    assert TOKEN not in str(info.value)
    assert "401" in str(info.value)


@pytest.mark.anyio
async def test_429_waits_retry_after_then_succeeds() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "3"},
                             content=json.dumps({"message": "You are being rate limited.",
                                                 "retry_after": 2.5, "global": False}))
    sleeps = Sleeps()
    info = await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(FakeAPI(limited, ok())),
                                   sleep=sleeps)
    assert info.shards == 4
    assert sleeps.calls == [2.5]


@pytest.mark.anyio
async def test_429_with_huge_retry_after_gives_up() -> None:
    limited = httpx.Response(429, json={"retry_after": 3600.0, "global": True})
    with pytest.raises(RateLimitedError) as info:
        await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(FakeAPI(limited)),
                                sleep=Sleeps())
    assert info.value.retry_after == 3600.0


@pytest.mark.anyio
async def test_5xx_retries_a_bounded_number_of_times() -> None:
    api = FakeAPI(*(httpx.Response(502) for _ in range(3)))
    sleeps = Sleeps()
    with pytest.raises(DiscordError, match="HTTP 502"):
        await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(api), attempts=3,
                                sleep=sleeps)
    assert len(api.requests) == 3
    assert len(sleeps.calls) == 2


@pytest.mark.anyio
async def test_network_error_names_the_api_not_the_token() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(DiscordError, match="cannot reach") as info:
        await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(refuse), attempts=2,
                                sleep=Sleeps())
    assert TOKEN not in str(info.value)


@pytest.mark.anyio
async def test_malformed_body_is_reported() -> None:
    bad = httpx.Response(200, json={"url": "wss://x", "shards": "four"})
    with pytest.raises(DiscordError, match="unexpected body"):
        await fetch_gateway_bot(TOKEN, transport=httpx.MockTransport(FakeAPI(bad)))


@pytest.mark.anyio
@pytest.mark.parametrize(("api_url", "gateway"), [
    ("https://discord.com/api/v10", "ws://gateway.discord.gg"),
    ("https://discord.com/api/v10", "http://gateway.discord.gg"),
    ("https://discord.com/api/v10", "gateway.discord.gg"),
    ("http://127.0.0.1:8765/api/v10", "https://gateway.example"),
])
async def test_a_gateway_url_the_token_would_cross_in_clear_is_refused(
        api_url: str, gateway: str) -> None:
    api = FakeAPI(httpx.Response(200, json={**BODY, "url": gateway}))
    with pytest.raises(DiscordError, match="refusing to send the token") as info:
        await fetch_gateway_bot(TOKEN, api_url=api_url, transport=httpx.MockTransport(api))
    assert TOKEN not in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize(("api_url", "gateway"), [
    ("https://discord.com/api/v10", "wss://gateway.discord.gg"),
    ("http://127.0.0.1:8765/api/v10", "ws://127.0.0.1:8765/"),  # the sandbox
])
async def test_wss_and_a_sandbox_ws_gateway_are_accepted(api_url: str, gateway: str) -> None:
    api = FakeAPI(httpx.Response(200, json={**BODY, "url": gateway}))
    info = await fetch_gateway_bot(TOKEN, api_url=api_url, transport=httpx.MockTransport(api))
    assert info.url == gateway
