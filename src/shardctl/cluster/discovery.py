"""Gateway discovery: ``GET /gateway/bot``, the only REST call a shard cluster needs.

Failures are mapped to the exception tree so the CLI can give one specific message and exit
code: 401 is fatal and never retried (each 401 counts toward Discord's invalid-request IP ban),
429 waits ``retry_after`` a bounded number of times, 5xx and network errors retry with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx

from shardctl._version import __version__
from shardctl.errors import AuthenticationError, DiscordError, RateLimitedError

log = logging.getLogger(__name__)

DEFAULT_API_URL: Final = "https://discord.com/api/v10"
#: Discord may block REST callers without a `DiscordBot (url, version)` agent.
USER_AGENT: Final = f"DiscordBot (https://github.com/shardctl/shardctl, {__version__})"
#: Give up instead of sleeping longer than this on one 429.
MAX_RETRY_AFTER: Final = 60.0


@dataclass(frozen=True, slots=True)
class SessionStartLimit:
    total: int
    remaining: int
    #: Seconds until ``remaining`` is refilled to ``total`` (Discord sends milliseconds).
    reset_after: float
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    url: str
    shards: int
    session_start_limit: SessionStartLimit


def authorization(token: str) -> str:
    """The Authorization header value; accepts a token with or without its ``Bot `` prefix."""
    token = token.strip()
    return token if token.startswith("Bot ") else f"Bot {token}"


def parse_gateway_bot(body: Any) -> GatewayInfo:
    """Validate the body of ``GET /gateway/bot``; a malformed body is Discord's fault."""
    try:
        ssl = body["session_start_limit"]
        limit = SessionStartLimit(
            total=_int(ssl["total"]),
            remaining=_int(ssl["remaining"]),
            reset_after=_int(ssl["reset_after"]) / 1000.0,
            max_concurrency=max(1, _int(ssl["max_concurrency"])),
        )
        url = body["url"]
        if not isinstance(url, str) or not url:
            raise TypeError("url")
        return GatewayInfo(url=url, shards=max(1, _int(body["shards"])), session_start_limit=limit)
    except (KeyError, TypeError) as exc:
        raise DiscordError(f"GET /gateway/bot returned an unexpected body (field {exc})") from None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(repr(value))
    return value


async def fetch_gateway_bot(
    token: str,
    *,
    api_url: str = DEFAULT_API_URL,
    transport: httpx.AsyncBaseTransport | None = None,
    attempts: int = 4,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> GatewayInfo:
    """Fetch the recommended shard count, gateway URL and session budget."""
    url = api_url.rstrip("/") + "/gateway/bot"
    headers = {"Authorization": authorization(token), "User-Agent": USER_AGENT}
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        for attempt in range(1, attempts + 1):
            delay = await _attempt(client, url, headers, attempt == attempts)
            if isinstance(delay, GatewayInfo):
                check_gateway_url(delay.url, api_url)
                return delay
            await sleep(delay)
    raise AssertionError("unreachable: the last attempt raises")


def check_gateway_url(gateway_url: str, api_url: str) -> None:
    """Every IDENTIFY carries the token: the gateway must be ``wss://``.  Plain ``ws://`` is
    accepted only from a plain-http API (a sandbox; whether that API may be spoken to in
    clear was decided before the token was sent to it)."""
    try:
        scheme = urlsplit(gateway_url).scheme
        api_scheme = urlsplit(api_url).scheme
    except ValueError:
        scheme = api_scheme = ""
    if scheme == "wss" or (scheme == "ws" and api_scheme == "http"):
        return
    raise DiscordError(
        f"GET /gateway/bot returned the gateway URL {gateway_url!r}; refusing to send the "
        "token there: expected wss:// (ws:// only from a plain-http sandbox API)")


async def _attempt(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], last: bool
) -> GatewayInfo | float:
    """One request: the info, or how long to wait before the next try (raises when final)."""
    try:
        response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        if last:
            raise DiscordError(f"cannot reach the Discord API at {url}: {type(exc).__name__}") \
                from None
        log.warning("GET %s failed (%s); retrying", url, type(exc).__name__)
        return 2.0
    status = response.status_code
    if status == 200:
        return parse_gateway_bot(_json(response))
    if status == 401:
        raise AuthenticationError(
            "the bot token was rejected (HTTP 401 from GET /gateway/bot): check the token, "
            "it may have been reset", code=401)
    if status == 429:
        retry_after = _retry_after(response)
        if last or retry_after > MAX_RETRY_AFTER:
            raise RateLimitedError(
                f"rate limited by GET /gateway/bot; retry after {retry_after:.1f} s",
                retry_after=retry_after)
        log.warning("GET /gateway/bot rate limited; retrying in %.2f s", retry_after)
        return retry_after
    if status >= 500 and not last:
        log.warning("GET /gateway/bot answered HTTP %d; retrying", status)
        return 2.0
    raise DiscordError(f"GET /gateway/bot answered HTTP {status}", code=status)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise DiscordError("GET /gateway/bot returned a body that is not JSON") from None


def _retry_after(response: httpx.Response) -> float:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("retry_after"), int | float):
            return float(body["retry_after"])
    except ValueError:
        pass
    try:
        return float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
