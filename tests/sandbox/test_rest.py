"""REST on the gateway port (protocol §1, checklist 1-4, 6)."""

from __future__ import annotations

import httpx
import pytest
from sandbox_client import RawClient
from websockets.exceptions import InvalidStatus

from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.anyio
BOT = {"Authorization": "Bot sandbox-token", "User-Agent": "DiscordBot (test, 1)"}


async def test_gateway_needs_no_auth_and_returns_the_connect_url() -> None:
    async with Sandbox(SandboxConfig()) as sb, httpx.AsyncClient() as http:
        r = await http.get(sb.api_url + "/gateway")
        assert r.status_code == 200
        assert r.json() == {"url": sb.gateway_url}
        assert sb.resume_gateway_url != sb.gateway_url


async def test_gateway_bot_body_and_remaining_drops_only_on_accepted_identify() -> None:
    cfg = SandboxConfig(shard_count=3, max_concurrency=2, session_start_total=10,
                        identify_interval=5.0)
    async with Sandbox(cfg) as sb, httpx.AsyncClient() as http:
        body = (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).json()
        assert body["url"] == sb.gateway_url and body["shards"] == 3
        limit = body["session_start_limit"]
        assert limit == {"total": 10, "remaining": 10, "reset_after": 86_400_000,
                         "max_concurrency": 2}
        a = await RawClient.open(sb.gateway_url)
        await a.ready(shard=[0, 3])
        b = await RawClient.open(sb.gateway_url)
        await b.hello()
        await b.identify(shard=[2, 3])  # same bucket, too soon → op 9, not counted
        assert (await b.recv_op(9))["d"] is False
        limit = (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).json()[
            "session_start_limit"]
        assert limit["remaining"] == 9
        assert 0 < limit["reset_after"] <= 86_400_000
        await a.close()
        await b.close()


@pytest.mark.parametrize("header", [None, "Bot wrong", "sandbox-token", "Bearer sandbox-token"])
async def test_bad_authorization_gets_the_exact_401_body(header: str | None) -> None:
    async with Sandbox(SandboxConfig()) as sb, httpx.AsyncClient() as http:
        headers = {} if header is None else {"Authorization": header}
        r = await http.get(sb.api_url + "/gateway/bot", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/json"
        assert r.content == b'{"message":"401: Unauthorized","code":0}'


async def test_injected_429_carries_retry_after_headers_and_json_body() -> None:
    async with Sandbox(SandboxConfig(rest_429_count=1, rest_retry_after=0.25)) as sb, \
            httpx.AsyncClient() as http:
        r = await http.get(sb.api_url + "/gateway/bot", headers=BOT)
        assert r.status_code == 429
        assert r.json() == {"message": "You are being rate limited.", "retry_after": 0.25,
                            "global": False}
        assert r.headers["retry-after"] == "1"
        for h in ("limit", "remaining", "reset", "reset-after", "bucket"):
            assert f"x-ratelimit-{h}" in r.headers
        assert (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).status_code == 200
        sb.inject_rest_429()
        assert (await http.get(sb.api_url + "/gateway/bot", headers=BOT)).status_code == 429


async def test_missing_user_agent_is_logged_not_rejected() -> None:
    async with Sandbox(SandboxConfig()) as sb, httpx.AsyncClient() as http:
        r = await http.get(sb.api_url + "/gateway", headers={"User-Agent": ""})
        del r
        req = http.build_request("GET", sb.api_url + "/gateway")
        del req.headers["User-Agent"]
        assert (await http.send(req)).status_code == 200
        assert any(w["rule"] == "missing_user_agent" for w in sb.records("warning"))


async def test_unknown_route_is_404() -> None:
    async with Sandbox(SandboxConfig()) as sb, httpx.AsyncClient() as http:
        assert (await http.get(sb.api_url + "/channels/1")).status_code == 404


@pytest.mark.parametrize(("encoding", "compress"), [("etf", None), ("json", "deflate")])
async def test_bad_encoding_or_compress_refuses_the_upgrade_with_400(
        encoding: str, compress: str | None) -> None:
    async with Sandbox(SandboxConfig()) as sb:
        with pytest.raises(InvalidStatus) as info:
            await RawClient.open(sb.gateway_url, encoding=encoding, compress=compress)
        assert info.value.response.status_code == 400
