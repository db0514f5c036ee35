"""Click parameter types that refuse a wrong value while the command line is parsed.

A wrong value must end in one line naming the option and what it accepts (exit code 2),
before a command starts anything: not in a traceback from libzmq, asyncio or urllib once
workers run.  Each type here checks what click's own types let through -- ``nan`` and
``inf`` pass every ``FloatRange`` (each comparison with nan is false), and any string passes
as an endpoint or URL -- and is also what ``settings`` uses to check the TOML file, so a
mistake there names the key and the file the same way.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import click

from shardctl.errors import ConfigurationError

__all__ = ["ApiUrl", "Endpoint", "FiniteFloat", "ShardIds", "StrParamType"]

if TYPE_CHECKING:  # click >= 8.2 types ParamType by its value; older click is not generic
    StrParamType = click.ParamType[str, Any]
else:
    StrParamType = click.ParamType

#: sun_path is 108 bytes on Linux including the NUL (as ipc/endpoints.py checks for binds).
_MAX_IPC_PATH_BYTES: Final = 107
#: A DNS name: labels of letters, digits and inner hyphens (RFC 1123), dot-separated.
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


class FiniteFloat(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses ``nan`` and ``inf``."""

    name = "number"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        if isinstance(value, bool):  # TOML true is not 1.0 seconds
            self.fail(f"{value!r} is not a number", param, ctx)
        number: float = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number in the range "
                      f"{self._describe_range()}", param, ctx)
        return number


def _is_host(host: str) -> bool:
    if _HOSTNAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 literal may carry a scope
    except ValueError:
        return False
    return True


class Endpoint(StrParamType):
    """A ZeroMQ endpoint another process can reach: ``ipc://PATH`` or ``tcp://HOST:PORT``.

    ``bind``: the endpoint is bound here, so ``tcp://HOST:*`` (any free port) and a ``*``
    host are allowed; a connecting end needs a concrete host and port.  Whether a bind is
    allowed at all (reachable from other hosts without CURVE) is decided where it is bound.
    """

    name = "endpoint"

    def __init__(self, *, bind: bool = False) -> None:
        self.bind = bind

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"expected an endpoint string, got {value!r}", param, ctx)
        problem = self._problem(value)
        if problem is not None:
            accepted = "ipc://PATH or tcp://HOST:PORT" + (
                " (tcp://HOST:* for any free port)" if self.bind else "")
            self.fail(f"{problem}; expected {accepted}", param, ctx)
        return value

    def _problem(self, value: str) -> str | None:
        from shardctl.ipc.endpoints import parse_endpoint  # zmq is imported only when needed

        if "\x00" in value or value != value.strip():
            return f"{value!r} has NUL or surrounding blanks"
        try:
            parsed = parse_endpoint(value)
        except ConfigurationError as exc:
            return str(exc).split(": use ", 1)[0]  # what is accepted here is said once
        if parsed.transport == "inproc":
            return f"{value!r} is reachable from this process only"
        if parsed.transport == "ipc":
            if len(os.fsencode(parsed.address)) > _MAX_IPC_PATH_BYTES:
                return f"the path of {value!r} is longer than {_MAX_IPC_PATH_BYTES} bytes"
            return None
        host = parsed.host or ""
        if host == "*":
            return None if self.bind else f"{value!r} names no host to connect to"
        if parsed.port is None and not self.bind:
            return f"{value!r} names no port to connect to"
        if not _is_host(host):
            return f"{value!r}: {host!r} is not an IP address or host name"
        return None


class ApiUrl(StrParamType):
    """The REST base URL: ``https://HOST[:PORT]/PATH`` (``http://`` is checked against the
    token elsewhere: only loopback hosts may be spoken to in clear)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        if not isinstance(value, str):
            self.fail(f"expected a URL string, got {value!r}", param, ctx)
        accepted = "expected https://HOST[:PORT]/PATH, e.g. https://discord.com/api/v10"
        try:
            parts = urlsplit(value)
            port = parts.port  # ValueError for a port outside 0-65535 or not a number
        except ValueError as exc:
            self.fail(f"{value!r} is not a URL ({exc}); {accepted}", param, ctx)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            self.fail(f"{value!r}: {accepted}", param, ctx)
        if port == 0 or not _is_host(parts.hostname) or not _printable(value):
            self.fail(f"{value!r} has an invalid host, port or character; {accepted}",
                      param, ctx)
        import httpx  # what will send the request has the last word

        try:
            httpx.URL(value)
        except httpx.InvalidURL as exc:
            self.fail(f"{value!r} is not a URL ({exc}); {accepted}", param, ctx)
        return value


def _printable(text: str) -> bool:
    return text.isprintable() and not any(c.isspace() for c in text)


class ShardIds(StrParamType):
    """``A-B[,C]``: the syntax is checked here, the range against the shard count once
    Discord's count is known."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        from shardctl.cluster.planner import parse_ranges

        if not isinstance(value, str):
            self.fail(f"expected a string like \"0-15,20\", got {value!r}", param, ctx)
        try:
            parse_ranges(value)
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)
        return value
