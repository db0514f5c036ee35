"""Where a RESUME may be sent: the one rule for ``resume_gateway_url`` (issue 12, item 2).

A RESUME carries the bot token, to whatever ``resume_gateway_url`` names.  That URL comes in
READY (protocol §4) and then travels: over the event bus, in a worker's state reports,
through the state file, back into the next worker's assignment.  Any of those could hand
over a URL that is not Discord's, so before a RESUME goes there the URL must be

- ``wss://`` on a Discord gateway host: ``discord.gg`` or one of its subdomains (the values
  seen live look like ``wss://gateway-us-east1-b.discord.gg``), or
- on the host of a gateway we already trust -- the URL ``GET /gateway/bot`` returned, the
  configured API's host -- by ``wss://``, or by plain ``ws://`` only when that trusted URL
  is plain itself (``ws://``/``http://``: a local sandbox, which already gets the token in
  every IDENTIFY).

Anything else is refused: no RESUME there, IDENTIFY instead (through the session limiter).
The reason names the host only, never the rest of the URL.  Pure: no I/O, nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

__all__ = ["DISCORD_GATEWAY_DOMAIN", "resume_url_refusal"]

#: Discord's gateway hosts: ``gateway.discord.gg`` and the per-region resume hosts.
DISCORD_GATEWAY_DOMAIN: Final = "discord.gg"
#: URL schemes that carry no TLS, for the trusted-host rule.
_PLAIN: Final = frozenset({"ws", "http"})


def _parts(url: str) -> tuple[str, str] | None:
    """(scheme, host) of a plain printable-ASCII URL, lower-cased; None if it is not one."""
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return None
    host = (parts.hostname or "").rstrip(".")
    return (parts.scheme.lower(), host) if host else None


def resume_url_refusal(url: str, trusted: Iterable[str] = ()) -> str | None:
    """None if a RESUME may go to ``url``; otherwise why not, naming its host.

    ``trusted``: gateway (or API) URLs whose host we already send the token to.
    """
    parts = _parts(url)
    if parts is None:
        return "resume_gateway_url is not a plain ws:// or wss:// URL"
    scheme, host = parts
    if host == DISCORD_GATEWAY_DOMAIN or host.endswith("." + DISCORD_GATEWAY_DOMAIN):
        return None if scheme == "wss" else f"resume_gateway_url on {host!r} is not wss://"
    for known in trusted:
        theirs = _parts(known)
        if theirs is not None and theirs[1] == host and (
                scheme == "wss" or (scheme == "ws" and theirs[0] in _PLAIN)):
            return None
    return (f"resume_gateway_url host {host!r} is not a Discord gateway host "
            f"(wss:// on *.{DISCORD_GATEWAY_DOMAIN}) nor the configured gateway's host")
