"""The supervisor's durable per-shard session state and the state file.

The supervisor alone knows, per shard, the session and the last sequence number it forwarded
(DESIGN.md §7): a respawned worker, or the next run after a graceful stop, RESUMEs from there,
so Discord replays exactly what no consumer has seen.  The state file carries no token: it is
keyed by a one-way fingerprint so a file written for another bot is never used.

A RESUME carries the token to the session's ``resume_gateway_url``, so every URL the
supervisor records -- from the bus, a state report, this file -- must pass
:func:`~shardctl.gateway.resume_url.resume_url_refusal` (:class:`ResumeUrlCheck`); a session
whose URL does not is not resumed, its shard IDENTIFYs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from shardctl.gateway.resume_url import resume_url_refusal

log = logging.getLogger(__name__)

STATE_FORMAT: Final = 1
#: Discord keeps a dropped session for "a few minutes"; older saved sessions are not tried.
RESUME_WINDOW: Final = 300.0


@dataclass(slots=True)
class SessionRecord:
    shard_id: int
    session_id: str
    resume_gateway_url: str
    seq: int


class ResumeUrlCheck:
    """The resume rule for one supervisor: trusts the hosts of ``trusted`` (the gateway URL
    from GET /gateway/bot, the configured API) besides Discord's, logs each refusal once."""

    #: distinct refusals logged; more are refused just as well, silently
    MAX_LOGGED: Final = 32

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.trusted = tuple(trusted)
        self._logged: set[str] = set()

    def __call__(self, url: str) -> bool:
        """Whether a RESUME may go to ``url``."""
        refusal = resume_url_refusal(url, self.trusted)
        if refusal is None:
            return True
        if refusal not in self._logged and len(self._logged) < self.MAX_LOGGED:
            self._logged.add(refusal)
            log.warning("supervisor: %s; its shard will IDENTIFY instead of resuming", refusal)
        return False


def token_fingerprint(token: str) -> str:
    """A one-way tag telling whether a state file belongs to this bot."""
    bare = token.removeprefix("Bot ").strip()
    return hashlib.sha256(b"shardctl-state\0" + bare.encode()).hexdigest()[:24]


def default_state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shardctl" / "sessions.json"


def save(path: Path, token: str, shard_count: int, sessions: dict[int, SessionRecord],
         *, now: float | None = None) -> None:
    """Write atomically with mode 0600: a torn or world-readable file is worse than none."""
    body = {
        "format": STATE_FORMAT,
        "bot": token_fingerprint(token),
        "shard_count": shard_count,
        "saved_at": time.time() if now is None else now,
        "sessions": [asdict(s) for s in sorted(sessions.values(), key=lambda s: s.shard_id)],
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".sessions-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path, token: str, shard_count: int, *,
         now: float | None = None, window: float = RESUME_WINDOW,
         resume_allowed: ResumeUrlCheck | None = None) -> dict[int, SessionRecord]:
    """Sessions still worth a RESUME; anything stale, foreign or unreadable yields none, and
    a session whose resume URL ``resume_allowed`` refuses is left out (it IDENTIFYs)."""
    check = resume_allowed if resume_allowed is not None else ResumeUrlCheck()
    try:
        body: Any = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return {}
    now = time.time() if now is None else now
    reason = _reject_reason(body, token, shard_count, now, window)
    if reason:
        log.info("not resuming from %s: %s", path, reason)
        return {}
    out: dict[int, SessionRecord] = {}
    for item in body["sessions"]:
        try:
            record = SessionRecord(int(item["shard_id"]), str(item["session_id"]),
                                   str(item["resume_gateway_url"]), int(item["seq"]))
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed session entry in %s", path)
            continue
        if check(record.resume_gateway_url):
            out[record.shard_id] = record
    return out


def _reject_reason(body: Any, token: str, shard_count: int, now: float, window: float) -> str:
    if not isinstance(body, dict) or body.get("format") != STATE_FORMAT:
        return "unknown format"
    if body.get("bot") != token_fingerprint(token):
        return "written for another bot token"
    if body.get("shard_count") != shard_count:
        return f"written for {body.get('shard_count')} shards, now {shard_count}"
    saved_at = body.get("saved_at")
    if not isinstance(saved_at, int | float) or now - saved_at > window:
        return "sessions are older than the resume window"
    if not isinstance(body.get("sessions"), list):
        return "no session list"
    return ""
