"""Server-side validation of client frames (checklist §16 items 7-9, 15-20, §11).

Each validator returns a typed request or raises :class:`Reject` naming the close code and
the rule broken; the connection handler records the violation and closes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

from shardctl.gateway.intents import ALL_INTENTS
from shardctl.gateway.opcodes import CLIENT_OPS

STATUSES: Final = frozenset({"online", "dnd", "idle", "invisible", "offline"})
#: Bots may set only these activity keys; type 0-5 (§11).
ACTIVITY_TYPES: Final = range(6)
MAX_NONCE_BYTES: Final = 32
MAX_ID_REQUEST: Final = 100
CHANNEL_INFO_FIELDS: Final = frozenset({"status", "voice_start_time"})


class Reject(Exception):
    """The client broke a rule: close with ``code`` and record ``rule``."""

    def __init__(self, code: int, rule: str, detail: str) -> None:
        super().__init__(f"{code} {rule}: {detail}")
        self.code, self.rule, self.detail = code, rule, detail


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _snowflake(v: object) -> int | None:
    if _is_int(v) and v >= 0:
        return int(v)
    if isinstance(v, str) and v.isdigit() and len(v) <= 20:
        return int(v)
    return None


def parse_frame(raw: bytes, max_bytes: int) -> tuple[int, Any]:
    """§2: an object with int ``op`` and a ``d`` key, at most ``max_bytes`` bytes."""
    if len(raw) > max_bytes:
        raise Reject(4002, "frame_too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reject(4002, "decode_error", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Reject(4002, "decode_error", f"frame is a JSON {type(obj).__name__}, not object")
    op = obj.get("op")
    if not _is_int(op):
        raise Reject(4001, "bad_op", f"missing or non-int op: {op!r}")
    if op not in CLIENT_OPS:
        raise Reject(4001, "unknown_op", f"op {op} is not a client opcode")
    if "d" not in obj:
        raise Reject(4001, "missing_d", f"op {op} without d")
    return int(op), obj["d"]


@dataclass(frozen=True, slots=True)
class Identify:
    token: str
    intents: int
    shard: tuple[int, int] | None
    compress: bool
    large_threshold: int
    properties: dict[str, Any]


def validate_identify(d: Any, *, strict: bool) -> Identify:
    """Structure (4001), intents bitfield (4013), shard shape (4010); token/4014 elsewhere."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "identify_shape", "d is not an object")
    token = d.get("token")
    if not isinstance(token, str):
        raise Reject(4001, "identify_shape", "token missing or not a string")
    props = d.get("properties")
    if not isinstance(props, Mapping):
        raise Reject(4001, "identify_shape", "properties missing or not an object")
    for key in ("os", "browser", "device"):
        value = props.get(key, props.get("$" + key))
        if strict and not isinstance(value, str):
            raise Reject(4001, "identify_shape", f"properties.{key} missing or not a string")
    compress = d.get("compress", False)
    if not isinstance(compress, bool):
        raise Reject(4001, "identify_shape", "compress is not a bool")
    large = d.get("large_threshold", 50)
    if not _is_int(large) or not 50 <= large <= 250:
        raise Reject(4001, "identify_shape", f"large_threshold {large!r} not in 50-250")
    if "presence" in d and d["presence"] is not None:
        validate_presence(d["presence"])
    return Identify(token, _intents(d.get("intents"), strict), _shard(d.get("shard")),
                    compress, int(large), dict(props))


def _intents(intents: object, strict: bool) -> int:
    """4013 for a missing/non-int value; strict also for negative or undefined bits (§12)."""
    if not _is_int(intents):
        raise Reject(4013, "invalid_intents", f"intents missing or not an int: {intents!r}")
    if strict and (intents < 0 or intents & ~ALL_INTENTS):
        raise Reject(4013, "invalid_intents", f"undefined intent bits in {intents}")
    return intents


def _shard(shard: object) -> tuple[int, int] | None:
    """4010 for a malformed pair or ``shard_id`` outside ``[0, num_shards)`` (§10)."""
    if shard is None:
        return None
    if (not isinstance(shard, list) or len(shard) != 2
            or not all(_is_int(x) for x in shard)):
        raise Reject(4010, "invalid_shard", f"shard is not [id, count]: {shard!r}")
    sid, count = shard
    if count < 1 or not 0 <= sid < count:
        raise Reject(4010, "invalid_shard", f"shard {shard} out of range")
    return (sid, count)


@dataclass(frozen=True, slots=True)
class Resume:
    token: str
    session_id: str
    seq: int | None


def validate_resume(d: Any) -> Resume:
    if not isinstance(d, Mapping):
        raise Reject(4001, "resume_shape", "d is not an object")
    token, sid, seq = d.get("token"), d.get("session_id"), d.get("seq")
    if not isinstance(token, str) or not isinstance(sid, str):
        raise Reject(4001, "resume_shape", "token/session_id missing or not strings")
    if seq is not None and not _is_int(seq):
        raise Reject(4001, "resume_shape", f"seq {seq!r} is not an int or null")
    return Resume(token, sid, seq)


def validate_heartbeat(d: Any) -> int | None:
    """§3: ``d`` is the last ``s`` or null; anything else → 4001."""
    if d is None or _is_int(d):
        return d
    raise Reject(4001, "heartbeat_shape", f"heartbeat d {d!r} is neither int nor null")


def validate_presence(d: Any) -> None:
    """§11 op 3: all four keys, a known status, activities typed 0-5."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "presence_shape", "presence is not an object")
    for key in ("since", "activities", "status", "afk"):
        if key not in d:
            raise Reject(4001, "presence_shape", f"presence without {key}")
    if d["since"] is not None and not _is_int(d["since"]):
        raise Reject(4001, "presence_shape", "since is not an int or null")
    if d["status"] not in STATUSES:
        raise Reject(4001, "presence_shape", f"unknown status {d['status']!r}")
    if not isinstance(d["afk"], bool):
        raise Reject(4001, "presence_shape", "afk is not a bool")
    acts = d["activities"]
    if not isinstance(acts, list):
        raise Reject(4001, "presence_shape", "activities is not an array")
    for act in acts:
        if (not isinstance(act, Mapping) or not isinstance(act.get("name"), str)
                or act.get("type") not in ACTIVITY_TYPES or isinstance(act.get("type"), bool)):
            raise Reject(4001, "presence_shape", f"bad activity {act!r}")


@dataclass(frozen=True, slots=True)
class VoiceState:
    guild_id: int
    channel_id: int | None
    self_mute: bool
    self_deaf: bool


def validate_voice(d: Any) -> VoiceState:
    if not isinstance(d, Mapping):
        raise Reject(4001, "voice_shape", "d is not an object")
    for key in ("guild_id", "channel_id", "self_mute", "self_deaf"):
        if key not in d:
            raise Reject(4001, "voice_shape", f"voice state without {key}")
    gid = _snowflake(d["guild_id"])
    cid = None if d["channel_id"] is None else _snowflake(d["channel_id"])
    if gid is None or (d["channel_id"] is not None and cid is None):
        raise Reject(4001, "voice_shape", "guild_id/channel_id are not snowflakes")
    if not isinstance(d["self_mute"], bool) or not isinstance(d["self_deaf"], bool):
        raise Reject(4001, "voice_shape", "self_mute/self_deaf are not bools")
    return VoiceState(gid, cid, d["self_mute"], d["self_deaf"])


@dataclass(frozen=True, slots=True)
class MembersRequest:
    guild_id: int
    query: str | None
    limit: int
    user_ids: tuple[int | str, ...] | None  # as sent, for the not_found number quirk
    presences: bool
    nonce: str | None

    @property
    def all_members(self) -> bool:
        return self.query == "" and self.limit == 0


def validate_members_request(d: Any, *, strict: bool) -> MembersRequest:
    """§11 op 8: one guild, exactly one of query/user_ids; an invalid nonce is ignored."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "members_shape", "d is not an object")
    gid = _snowflake(d.get("guild_id"))
    if gid is None:
        raise Reject(4001, "members_shape", "guild_id missing or not one snowflake")
    has_q, has_ids = d.get("query") is not None, d.get("user_ids") is not None
    if has_q == has_ids:
        raise Reject(4001, "members_shape", "need exactly one of query / user_ids")
    nonce = d.get("nonce")
    if not isinstance(nonce, str) or len(nonce.encode()) > MAX_NONCE_BYTES:
        nonce = None
    presences = d.get("presences", False) is True
    if has_q:
        query, limit = d["query"], d.get("limit")
        if not isinstance(query, str) or not _is_int(limit) or limit < 0:
            raise Reject(4001, "members_shape", "query needs a string and an int limit >= 0")
        return MembersRequest(gid, query, int(limit), None, presences, nonce)
    raw = d["user_ids"]
    ids = raw if isinstance(raw, list) else [raw]
    if not ids or any(_snowflake(i) is None for i in ids):
        raise Reject(4001, "members_shape", "user_ids are not snowflakes")
    if len(ids) > MAX_ID_REQUEST and strict:
        raise Reject(4001, "members_shape", f"{len(ids)} user_ids > {MAX_ID_REQUEST}")
    return MembersRequest(gid, None, 0, tuple(ids[:MAX_ID_REQUEST]), presences, nonce)


def validate_soundboard(d: Any) -> list[int]:
    ids = d.get("guild_ids") if isinstance(d, Mapping) else None
    if not isinstance(ids, list) or any(_snowflake(i) is None for i in ids):
        raise Reject(4001, "soundboard_shape", "guild_ids is not an array of snowflakes")
    return [int(i) for i in ids]


def validate_channel_info(d: Any) -> tuple[int, list[str]]:
    if not isinstance(d, Mapping):
        raise Reject(4001, "channel_info_shape", "d is not an object")
    gid = _snowflake(d.get("guild_id"))
    fields = d.get("fields")
    if gid is None or not isinstance(fields, list) or not all(
            f in CHANNEL_INFO_FIELDS for f in fields):
        raise Reject(4001, "channel_info_shape",
                     "need guild_id and fields within status/voice_start_time")
    return gid, list(fields)
