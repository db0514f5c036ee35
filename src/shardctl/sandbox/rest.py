"""Plain HTTP on the gateway's port: the REST routes a gateway client needs (§1) and the
upgrade checks that answer HTTP 400 (§1 Sandbox: bad ``encoding``/``compress``).

Runs as websockets' ``process_request``: return a Response to answer over HTTP, None to go on
with the WebSocket handshake.
"""

from __future__ import annotations

import http
import math
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from shardctl.sandbox.compress import TRANSPORT_MODES, zstd_available

if TYPE_CHECKING:
    from shardctl.sandbox.server import Sandbox

API_PREFIX: Final = "/api/v10"
#: The live body for a bad token (§1 [observed]); sent exactly.
UNAUTHORIZED_BODY: Final = {"message": "401: Unauthorized", "code": 0}
NOT_FOUND_BODY: Final = {"message": "404: Not Found", "code": 0}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    data = orjson.dumps(body)
    h = Headers()
    h["Content-Type"] = "application/json"
    h["Content-Length"] = str(len(data))
    h["Connection"] = "close"
    for key, value in (headers or {}).items():
        h[key] = value
    return Response(status, http.HTTPStatus(status).phrase, h, data)


def parse_query(path: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(path)
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))


def query_problem(query: dict[str, str]) -> str | None:
    """Why an upgrade gets HTTP 400, or None (JSON only; known compress modes only)."""
    encoding = query.get("encoding", "json")
    if encoding != "json":
        return f"unsupported encoding {encoding!r} (the sandbox speaks JSON only)"
    compress = query.get("compress")
    if compress is not None and compress not in TRANSPORT_MODES:
        return f"unsupported compress {compress!r}"
    if compress == "zstd-stream" and not zstd_available():
        return "zstd-stream needs the zstandard package on the sandbox host"
    return None


class RestApi:
    """``GET /api/v10/gateway``, ``/gateway/bot``, ``/users/@me``, ``/oauth2/applications/@me``."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.pending_429 = sb.config.rest_429_count
        #: Statuses ``/gateway/bot`` answers next, one per request (a REST outage).
        self.pending_errors: list[int] = []

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme == "Bot" and self.sb.token_ok(token)

    def __call__(self, conn: ServerConnection, request: Request) -> Response | None:
        path, query = parse_query(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if path not in ("/", self.sb.config.resume_path):
                return json_response(404, NOT_FOUND_BODY)
            if self.sb.now() < self.sb.refusing_until:
                self.sb.recorder.add("connection_refused", path=path)
                return json_response(503, {"message": "gateway unavailable", "code": 0})
            problem = query_problem(query)
            if problem is not None:
                self.sb.recorder.add("rest", path=request.path, status=400, detail=problem)
                return json_response(400, {"message": problem, "code": 0})
            return None
        response = self.route(path, request)
        self.sb.recorder.add("rest", path=path, status=response.status_code)
        return response

    def route(self, path: str, request: Request) -> Response:
        if "User-Agent" not in request.headers:
            # §1: requests without a DiscordBot User-Agent may be blocked; we only log it.
            self.sb.recorder.add("warning", rule="missing_user_agent", detail=path)
        if path == f"{API_PREFIX}/gateway":
            return json_response(200, {"url": self.sb.gateway_url})
        if path not in (f"{API_PREFIX}/gateway/bot", f"{API_PREFIX}/users/@me",
                        f"{API_PREFIX}/oauth2/applications/@me"):
            return json_response(404, NOT_FOUND_BODY)
        if not self.authorized(request):
            return json_response(401, UNAUTHORIZED_BODY)
        if path == f"{API_PREFIX}/users/@me":
            return json_response(200, self.sb.world.bot_user())
        if path == f"{API_PREFIX}/oauth2/applications/@me":
            return json_response(200, self.application())
        if self.pending_429 > 0:
            self.pending_429 -= 1
            return self.rate_limited()
        if self.pending_errors:
            status = self.pending_errors.pop(0)
            return json_response(status, {"message": http.HTTPStatus(status).phrase, "code": 0})
        return json_response(200, self.gateway_bot())

    def gateway_bot(self) -> dict[str, Any]:
        sb = self.sb
        now = sb.now()
        return {
            "url": sb.gateway_url,
            "shards": sb.recommended_shards,
            "session_start_limit": {
                "total": sb.budget.total,
                "remaining": sb.budget.remaining(now),
                "reset_after": sb.budget.reset_after_ms(now),
                "max_concurrency": sb.config.max_concurrency,
            },
        }

    def rate_limited(self) -> Response:
        retry = self.sb.config.rest_retry_after
        headers = {
            "Retry-After": str(math.ceil(retry)),
            "X-RateLimit-Limit": "1",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry:.3f}",
            "X-RateLimit-Reset-After": f"{retry:.3f}",
            "X-RateLimit-Bucket": "sandbox-gateway-bot",
            "X-RateLimit-Global": "false",
            "X-RateLimit-Scope": "user",
        }
        body = {"message": "You are being rate limited.", "retry_after": retry,
                "global": False}
        return json_response(429, body, headers)

    def application(self) -> dict[str, Any]:
        cfg = self.sb.config
        owner = self.sb.world.user(1) if self.sb.world.members_per_guild > 1 else \
            self.sb.world.user(0)
        return {"id": str(cfg.application_id), "name": cfg.bot_username, "icon": None,
                "description": "", "summary": "", "type": None, "bot_public": True,
                "bot_require_code_grant": False, "verify_key": "0" * 64, "owner": owner,
                "flags": cfg.application_flags, "team": None, "hook": True,
                "redirect_uris": [], "interactions_endpoint_url": None,
                "bot": self.sb.world.bot_user(), "tags": []}
