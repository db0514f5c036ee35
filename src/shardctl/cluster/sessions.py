"""The supervisor's durable per-shard session state and the state file.

The supervisor alone knows, per shard, the session and the last sequence number it forwarded
(DESIGN.md §7): a respawned worker, or the next run after a graceful stop, RESUMEs from there,
so Discord replays exactly what no consumer has seen.  The state file carries no token: it is
keyed by a one-way fingerprint so a file written for another bot is never used.

The file is written continuously (cluster/checkpoint.py) and at a stop, always by
:func:`save`: atomically (temp file, fsync, rename, fsync of the directory) and, given the
writer's shard ids, *merged* under a lock -- only those shards' entries are replaced, so
several instances sharing a file (``--shard-ids``) never erase each other's sessions.  Each
entry carries its own ``saved_at``; the file also names the local worker processes that held
the sessions (cluster/orphans.py), so a start after a crash waits until they are gone.

A RESUME carries the token to the session's ``resume_gateway_url``, so every URL the
supervisor records -- from the bus, a state report, this file -- must pass
:func:`~shardctl.gateway.resume_url.resume_url_refusal` (:class:`ResumeUrlCheck`); a session
whose URL does not is not resumed, its shard IDENTIFYs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from shardctl.gateway.resume_url import resume_url_refusal

log = logging.getLogger(__name__)

STATE_FORMAT: Final = 1
#: Discord keeps a dropped session for "a few minutes"; older saved sessions are not tried.
RESUME_WINDOW: Final = 300.0
#: A ``saved_at`` further than this in the future is refused: the clock went back, or the file
#: is not what it claims, and its seqs cannot be trusted.
CLOCK_SKEW: Final = 60.0


@dataclass(slots=True)
class SessionRecord:
    shard_id: int
    session_id: str
    resume_gateway_url: str
    seq: int


@dataclass(frozen=True, slots=True)
class WorkerMark:
    """A local worker process that held ``shards``: ``started`` (its start time, from
    /proc) tells it apart from a later process that reuses the pid."""

    pid: int
    started: str
    shards: tuple[int, ...] = field(default=())


class ResumeUrlCheck:
    """The resume rule for one supervisor: trusts the hosts of ``trusted`` (the gateway URL
    from GET /gateway/bot, the configured API) besides Discord's, logs each refusal once."""

    #: distinct refusals logged; more are refused just as well, silently
    MAX_LOGGED: Final = 32
    #: URLs found allowed, remembered: every state report repeats every shard's URL, and
    #: a bot has a handful of resume hosts (parsing each again cost a 10,000-shard cluster)
    MAX_ALLOWED: Final = 256

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.trusted = tuple(trusted)
        self._logged: set[str] = set()
        self._allowed: set[str] = set()

    def __call__(self, url: str) -> bool:
        """Whether a RESUME may go to ``url``."""
        if url in self._allowed:
            return True
        refusal = resume_url_refusal(url, self.trusted)
        if refusal is None:
            if len(self._allowed) < self.MAX_ALLOWED:
                self._allowed.add(url)
            return True
        if refusal not in self._logged and len(self._logged) < self.MAX_LOGGED:
            self._logged.add(refusal)
            log.warning("supervisor: %s; its shard will IDENTIFY instead of resuming", refusal)
        return False


def token_fingerprint(token: str) -> str:
    """A one-way tag telling whether a state file belongs to this bot."""
    bare = token.removeprefix("Bot ").strip()
    return hashlib.sha256(b"shardctl-state\0" + bare.encode()).hexdigest()[:24]


def bot_id(token: str) -> str | None:
    """The bot's user id: the first dot-separated part of a Discord token is its base64.

    Only that part is read, and only digits are returned: never the token, nor a hash of it.
    """
    first = token.removeprefix("Bot ").strip().split(".", 1)[0]
    try:
        decoded = base64.b64decode(first + "=" * (-len(first) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    text = decoded.decode("ascii", "replace")
    return text if text.isdigit() and len(text) <= 20 else None


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shardctl"


def legacy_state_file() -> Path:
    """The default before it was keyed by bot and shard set: read once, never written."""
    return state_dir() / "sessions.json"


def default_state_file(token: str, shard_count: int, shard_ids: Iterable[int]) -> Path:
    """``state-<bot id>-<shard count>-<all | hash of the shard ids>.json`` in the state dir:
    two instances on one host (other bots, other ``--shard-ids``) never share a default."""
    ids = sorted(set(shard_ids))
    if ids == list(range(shard_count)):
        tag = "all"
    else:
        tag = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:12]
    return state_dir() / f"state-{bot_id(token) or 'bot'}-{shard_count}-{tag}.json"


def save(path: Path, token: str, shard_count: int, sessions: dict[int, SessionRecord],
         *, shard_ids: Iterable[int] | None = None, workers: Iterable[WorkerMark] = (),
         now: float | None = None) -> None:
    """Write atomically and durably with mode 0600: a torn, lost or world-readable file is
    worse than none.

    With ``shard_ids`` (the writer's shards) the file is merged under a lock: entries of
    other shards, written by another instance for the same bot and shard count, are kept.
    Without, the file is replaced.
    """
    now = time.time() if now is None else now
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    mine = None if shard_ids is None else frozenset(shard_ids)
    with _locked(path):
        kept, kept_workers = ([], []) if mine is None else _others(path, token, shard_count, mine)
        entries = kept + [{**asdict(s), "saved_at": now} for s in sessions.values()]
        body = {
            "format": STATE_FORMAT,
            "bot": token_fingerprint(token),
            "shard_count": shard_count,
            "saved_at": now,
            "sessions": sorted(entries, key=lambda e: int(e["shard_id"])),
            "workers": kept_workers + [
                {"pid": w.pid, "started": w.started, "shards": list(w.shards)}
                for w in workers],
        }
        _write_atomic(path, orjson.dumps(body, option=orjson.OPT_INDENT_2))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (never a symlink), held across read-merge-write."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _others(path: Path, token: str, shard_count: int, mine: frozenset[int]
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The entries of ``path`` that belong to other shards of this bot and shard count."""
    try:
        body: Any = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return [], []
    if (not isinstance(body, dict) or body.get("format") != STATE_FORMAT
            or body.get("bot") != token_fingerprint(token)
            or body.get("shard_count") != shard_count):
        return [], []
    file_saved_at = body.get("saved_at")
    sessions = [dict(e, saved_at=e.get("saved_at", file_saved_at))
                for e in body.get("sessions") or () if isinstance(e, dict)
                and isinstance(e.get("shard_id"), int) and e["shard_id"] not in mine]
    workers = [w for w in body.get("workers") or () if isinstance(w, dict)
               and isinstance(w.get("shards"), list) and mine.isdisjoint(w["shards"])]
    return sessions, workers


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".sessions-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory is.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
        (log.warning if "future" in reason else log.info)(
            "not resuming from %s: %s", path, reason)
        return {}
    out: dict[int, SessionRecord] = {}
    for item in body["sessions"]:
        try:
            record = SessionRecord(int(item["shard_id"]), str(item["session_id"]),
                                   str(item["resume_gateway_url"]), int(item["seq"]))
            saved_at = float(item.get("saved_at", body["saved_at"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("ignoring a malformed session entry in %s", path)
            continue
        if now - saved_at > window or saved_at - now > CLOCK_SKEW:
            continue  # another instance's, merged in long ago (or from the future)
        if check(record.resume_gateway_url):
            out[record.shard_id] = record
    return out


def load_workers(path: Path) -> list[WorkerMark]:
    """The local worker processes the file says held its sessions (any bot: a pid is a pid)."""
    try:
        body: Any = orjson.loads(path.read_bytes())
        items = body.get("workers") or () if isinstance(body, dict) else ()
    except (OSError, orjson.JSONDecodeError):
        return []
    out = []
    for item in items:
        try:
            out.append(WorkerMark(int(item["pid"]), str(item["started"]),
                                  tuple(int(s) for s in item["shards"])))
        except (KeyError, TypeError, ValueError):
            continue
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
    if saved_at - now > CLOCK_SKEW:
        return (f"its saved_at is {saved_at - now:.0f} s in the future (a clock set back, or "
                "a file from elsewhere); its seqs cannot be trusted, its shards IDENTIFY")
    if not isinstance(body.get("sessions"), list):
        return "no session list"
    return ""
