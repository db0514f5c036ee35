"""Server-side validation of client frames (checklist §16 items 7-9, 15-20, §11).

Strict where Discord is strict, lenient where it is lenient.  Each validator returns a typed
request or raises :class:`Reject` naming the close code and the rule broken; the connection
handler records the violation and closes.  What Discord accepts and ignores (legacy keys such
as a presence's ``game``, undocumented keys such as hikari's ``capabilities``, activity
fields bots may not set) is accepted and handed back as :class:`Note` values, which the
connection records as ``note`` (never a violation, never a close).

Every rule names its source: a section of ``shared/gateway-protocol.md`` with its tag
([doc]: Discord's docs, [observed]: the live service, [choice]: the sandbox's pick where
Discord says nothing), and, where it decides what is lenient, which real clients send the
shape.  The clients read for this (their payload builders, 2025): discord.py 2.x
``gateway.py``; hikari 2.x ``impl/shard.py``; @discordjs/ws 2.x ``WebSocketShard``;
twilight-model ``gateway/payload/outgoing``; JDA ``WebSocketClient`` / ``PresenceImpl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

import orjson

from shardctl.gateway.intents import ALL_INTENTS
from shardctl.gateway.opcodes import CLIENT_OPS

#: §11 [doc]: the five statuses.
STATUSES: Final = frozenset({"online", "dnd", "idle", "invisible", "offline"})
#: §11 [doc]: activity types 0-5.
ACTIVITY_TYPES: Final = range(6)
#: §11 [doc]: bots may set only these activity keys; Discord ignores the rest.
ACTIVITY_KEYS: Final = frozenset({"name", "state", "type", "url"})
MAX_NONCE_BYTES: Final = 32
MAX_ID_REQUEST: Final = 100
CHANNEL_INFO_FIELDS: Final = frozenset({"status", "voice_start_time"})

#: §4 [doc]: the IDENTIFY fields.  Anything else is undocumented and ignored: hikari sends
#: ``capabilities``, JDA 3 sent ``v``.
IDENTIFY_KEYS: Final = frozenset(
    {"token", "properties", "intents", "compress", "large_threshold", "shard", "presence"})
#: §4 [doc]: the connection properties, and their legacy ``$`` spellings (still accepted).
PROPERTY_KEYS: Final = ("os", "browser", "device")
LEGACY_PROPERTY_KEYS: Final = tuple("$" + k for k in PROPERTY_KEYS)
#: §11 [doc]: the presence object (op 3 and IDENTIFY's ``presence``).
PRESENCE_KEYS: Final = frozenset({"since", "activities", "status", "afk"})
#: §5 [doc]: RESUME's fields.
RESUME_KEYS: Final = frozenset({"token", "session_id", "seq"})
#: §11 [doc]: op 4 and op 8 fields.
VOICE_KEYS: Final = frozenset({"guild_id", "channel_id", "self_mute", "self_deaf"})
MEMBERS_KEYS: Final = frozenset({"guild_id", "query", "limit", "presences", "user_ids", "nonce"})


class Reject(Exception):
    """The client broke a rule: close with ``code`` and record ``rule``."""

    def __init__(self, code: int, rule: str, detail: str) -> None:
        super().__init__(f"{code} {rule}: {detail}")
        self.code, self.rule, self.detail = code, rule, detail


@dataclass(frozen=True, slots=True)
class Note:
    """Accepted as Discord accepts it, but worth a line in the record (``kind="note"``)."""

    rule: str
    detail: str


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _snowflake(v: object) -> int | None:
    # §14 [doc]: IDs are strings; clients also send JSON numbers (discord.py's op 8 and op 4
    # guild_id are ints) and Discord reads both.
    if _is_int(v) and v >= 0:
        return int(v)
    if isinstance(v, str) and v.isdigit() and len(v) <= 20:
        return int(v)
    return None


def _unknown_keys(d: Mapping[str, Any], known: frozenset[str], rule: str,
                  notes: list[Note]) -> None:
    """Keys Discord does not document are ignored there: a note names them (never values,
    which could hold a token)."""
    extra = sorted(str(k) for k in d if k not in known)
    if extra:
        notes.append(Note(rule, "ignored keys: " + ", ".join(extra)))


def parse_frame(raw: bytes, max_bytes: int) -> tuple[int, Any]:
    """§2: an object with int ``op`` and a ``d`` key, at most ``max_bytes`` bytes.

    The envelope's ``s``/``t`` (and any other key) are ignored, §2 [choice]: JDA and others
    send ``s``/``t`` on client frames.
    """
    # §2/§9 [doc]: > 4096 bytes → 4002; exactly 4096 passes [choice: boundary].
    if len(raw) > max_bytes:
        raise Reject(4002, "frame_too_large", f"{len(raw)} bytes > {max_bytes}")
    # §2 [doc]: undecodable → 4002.
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reject(4002, "decode_error", f"not JSON: {exc}") from None
    # §16 item 8 [choice]: JSON that is not an object → 4002.
    if not isinstance(obj, dict):
        raise Reject(4002, "decode_error", f"frame is a JSON {type(obj).__name__}, not object")
    # §2 [doc] "an object with op and d"; §16 items 8-9 [choice]: 4001 for a missing or
    # non-int op, an op outside {1,2,3,4,6,8,31,43} (server-only ops too), a missing d.
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
    notes: tuple[Note, ...] = ()


def validate_identify(d: Any, *, strict: bool) -> Identify:
    """Structure (4001), intents bitfield (4013), shard shape (4010); token/4014 elsewhere.

    §4 [doc] fields; the 4001 for a malformed one is §4 [choice].  All five clients send
    token, properties, intents; the optional fields vary (discord.py ``compress: true``,
    @discordjs/ws no ``large_threshold``, twilight ``presence: null`` and ``shard: null``).
    """
    if not isinstance(d, Mapping):
        raise Reject(4001, "identify_shape", "d is not an object")
    notes: list[Note] = []
    _unknown_keys(d, IDENTIFY_KEYS, "identify_unknown_key", notes)
    # §4 [doc]: token required (its value is judged by the caller: 4004 [doc]).
    token = d.get("token")
    if not isinstance(token, str):
        raise Reject(4001, "identify_shape", "token missing or not a string")
    props = _properties(d.get("properties"), strict, notes)
    # §4 [doc]: compress is an optional bool (discord.py true, others false or absent).
    compress = d.get("compress", False)
    if not isinstance(compress, bool):
        raise Reject(4001, "identify_shape", "compress is not a bool")
    # §4 [doc]: large_threshold 50-250, default 50 (discord.py, hikari, JDA, twilight: 250).
    large = d.get("large_threshold", 50)
    if not _is_int(large) or not 50 <= large <= 250:
        raise Reject(4001, "identify_shape", f"large_threshold {large!r} not in 50-250")
    # §4 [doc]: presence optional; null = none (twilight sends null).
    if d.get("presence") is not None:
        notes.extend(validate_presence(d["presence"]))
    return Identify(token, _intents(d.get("intents"), strict), _shard(d.get("shard")),
                    compress, int(large), dict(props), tuple(notes))


def _properties(props: object, strict: bool, notes: list[Note]) -> Mapping[str, Any]:
    """§4 [doc]: ``{os, browser, device}`` required; legacy ``$os/$browser/$device`` still
    accepted (§16 item 20); extra keys (``$referrer``, ``$referring_domain`` of older JDA
    and Javacord) are ignored."""
    if not isinstance(props, Mapping):
        raise Reject(4001, "identify_shape", "properties missing or not an object")
    for key in PROPERTY_KEYS:
        value = props.get(key, props.get("$" + key))
        # §4 [choice]: strict mode wants all three strings; every client read sends them.
        if strict and not isinstance(value, str):
            raise Reject(4001, "identify_shape", f"properties.{key} missing or not a string")
    legacy = [k for k in LEGACY_PROPERTY_KEYS if k in props]
    if legacy:
        notes.append(Note("properties_legacy_keys", "legacy keys: " + ", ".join(legacy)))
    _unknown_keys(props, frozenset(PROPERTY_KEYS + LEGACY_PROPERTY_KEYS),
                  "properties_unknown_key", notes)
    return props


def _intents(intents: object, strict: bool) -> int:
    """§4/§12 [doc]: intents required since v8; 4013 for a missing/non-int value [choice];
    strict also for negative or undefined bits (§12 [choice: the documented mask])."""
    if not _is_int(intents):
        raise Reject(4013, "invalid_intents", f"intents missing or not an int: {intents!r}")
    if strict and (intents < 0 or intents & ~ALL_INTENTS):
        raise Reject(4013, "invalid_intents", f"undefined intent bits in {intents}")
    return intents


def _shard(shard: object) -> tuple[int, int] | None:
    """§10 [doc]: 4010 for a malformed pair or ``shard_id`` outside ``[0, num_shards)``;
    absent or null (twilight without sharding) = ``[0, 1]``."""
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
    notes: tuple[Note, ...] = ()


def validate_resume(d: Any) -> Resume:
    """§5 [doc]: token, session_id, seq (int, or null before any dispatch: discord.py and
    @discordjs/ws send their stored seq as is).  4001 for a malformed one, §16 item 8
    [choice]; extra keys (catnip sent ``compress``/``properties``) are ignored."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "resume_shape", "d is not an object")
    token, sid, seq = d.get("token"), d.get("session_id"), d.get("seq")
    if not isinstance(token, str) or not isinstance(sid, str):
        raise Reject(4001, "resume_shape", "token/session_id missing or not strings")
    if seq is not None and not _is_int(seq):
        raise Reject(4001, "resume_shape", f"seq {seq!r} is not an int or null")
    notes: list[Note] = []
    _unknown_keys(d, RESUME_KEYS, "resume_unknown_key", notes)
    return Resume(token, sid, seq, tuple(notes))


def validate_heartbeat(d: Any) -> int | None:
    """§3 [doc]: ``d`` is the last ``s`` or null; anything else → 4001 (§3 [choice]).

    A ``d`` that differs from the last ``s`` is only a warning (the caller's); JDA sends
    its own received-count there.
    """
    if d is None or _is_int(d):
        return d
    raise Reject(4001, "heartbeat_shape", f"heartbeat d {d!r} is neither int nor null")


def validate_presence(d: Any) -> list[Note]:
    """§11 op 3 (and IDENTIFY's ``presence``): what Discord reads, and how leniently.

    - ``since``, ``afk``, ``status``: required [doc] and sent by every client read.
      ``since`` is unix ms or null [doc]; a float passes (discord.py's ``change_presence``
      sends ``0.0``).  ``status`` null passes with a note: discord.py's IDENTIFY sends
      ``status: null`` when only an activity was configured.
    - ``activities``: [doc] required, yet Discord accepts a presence without it: hikari
      2.x and discord.py's IDENTIFY send the legacy ``game`` (one activity or null)
      instead, as JDA did before v5.  Either is read; both absent = no activity.
    - an unknown status, a non-array ``activities``, an activity without a string
      ``name`` or with a ``type`` outside 0-5 → 4001 (§11 [choice]).
    """
    if not isinstance(d, Mapping):
        raise Reject(4001, "presence_shape", "presence is not an object")
    notes: list[Note] = []
    _unknown_keys(d, PRESENCE_KEYS | {"game"}, "presence_unknown_key", notes)
    for key in ("since", "status", "afk"):
        if key not in d:
            raise Reject(4001, "presence_shape", f"presence without {key}")
    if d["since"] is not None and not _is_number(d["since"]):
        raise Reject(4001, "presence_shape", "since is not a number or null")
    if d["status"] is None:
        notes.append(Note("presence_null_status", "status null (read as online)"))
    elif d["status"] not in STATUSES:
        raise Reject(4001, "presence_shape", f"unknown status {d['status']!r}")
    if not isinstance(d["afk"], bool):
        raise Reject(4001, "presence_shape", "afk is not a bool")
    if "game" in d:
        notes.append(Note("presence_legacy_game", "legacy game key (v6 presence shape)"))
        if d["game"] is not None:
            _activity(d["game"], notes)
    if "activities" not in d:
        notes.append(Note("presence_without_activities", "no activities key"))
        return notes
    acts = d["activities"]
    if not isinstance(acts, list):
        raise Reject(4001, "presence_shape", "activities is not an array")
    for act in acts:
        _activity(act, notes)
    return notes


def _activity(act: object, notes: list[Note]) -> None:
    """§11 [doc]: ``name`` and ``type`` 0-5; ``state``/``url`` optional (hikari sends them
    as null), strings when set ([choice]).  Other keys are ignored for bots (discord.py's
    Game sends ``timestamps``, ``assets``, ``platform``; twilight ``created_at``)."""
    if (not isinstance(act, Mapping) or not isinstance(act.get("name"), str)
            or act.get("type") not in ACTIVITY_TYPES or isinstance(act.get("type"), bool)):
        raise Reject(4001, "presence_shape", f"bad activity {act!r}")
    for key in ("state", "url"):
        if act.get(key) is not None and not isinstance(act[key], str):
            raise Reject(4001, "presence_shape", f"activity {key} is not a string or null")
    _unknown_keys(act, ACTIVITY_KEYS, "activity_ignored_key", notes)


@dataclass(frozen=True, slots=True)
class VoiceState:
    guild_id: int
    channel_id: int | None
    self_mute: bool
    self_deaf: bool
    notes: tuple[Note, ...] = ()


def validate_voice(d: Any) -> VoiceState:
    """§11 op 4: ``guild_id`` and ``channel_id`` (null = leave) required → 4001 (§11
    [choice]).  ``self_mute``/``self_deaf`` are [doc] required, but hikari's leave
    (``update_voice_state(guild, None)``, its voice disconnect) sends neither and Discord
    accepts it: absent = false, with a note; present, they must be bools."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "voice_shape", "d is not an object")
    for key in ("guild_id", "channel_id"):
        if key not in d:
            raise Reject(4001, "voice_shape", f"voice state without {key}")
    gid = _snowflake(d["guild_id"])
    cid = None if d["channel_id"] is None else _snowflake(d["channel_id"])
    if gid is None or (d["channel_id"] is not None and cid is None):
        raise Reject(4001, "voice_shape", "guild_id/channel_id are not snowflakes")
    notes: list[Note] = []
    missing = [k for k in ("self_mute", "self_deaf") if k not in d]
    if missing:
        notes.append(Note("voice_default_self_flags", f"no {'/'.join(missing)} (read as false)"))
    mute, deaf = d.get("self_mute", False), d.get("self_deaf", False)
    if not isinstance(mute, bool) or not isinstance(deaf, bool):
        raise Reject(4001, "voice_shape", "self_mute/self_deaf are not bools")
    _unknown_keys(d, VOICE_KEYS, "voice_unknown_key", notes)
    return VoiceState(gid, cid, mute, deaf, tuple(notes))


@dataclass(frozen=True, slots=True)
class MembersRequest:
    guild_id: int
    query: str | None
    limit: int
    user_ids: tuple[int | str, ...] | None  # as sent, for the not_found number quirk
    presences: bool
    nonce: str | None
    notes: tuple[Note, ...] = ()

    @property
    def all_members(self) -> bool:
        return self.query == "" and self.limit == 0


def validate_members_request(d: Any, *, strict: bool) -> MembersRequest:
    """§11 op 8: one guild, exactly one of query/user_ids; an invalid nonce is ignored.

    - ``guild_id``: one snowflake [doc]; an array (the retired multi-guild form) → 4001.
    - query or user_ids: exactly one [doc], 4001 otherwise (§11 [choice]); except that
      hikari sends its defaults ``query: ""``, ``limit: 0`` beside ``user_ids``, which
      Discord serves as a user_ids request: that passes, with a note.
    - ``limit``: required with ``query`` [doc] (every client sends it there); twilight and
      JDA send none with ``user_ids``, where it is not read.
    - ``user_ids``: one snowflake or an array [doc] (twilight's single form); > 100 →
      strict 4001, else the first 100 (§11 [choice]).
    - ``nonce`` over 32 bytes or not a string: ignored [doc].
    """
    if not isinstance(d, Mapping):
        raise Reject(4001, "members_shape", "d is not an object")
    gid = _snowflake(d.get("guild_id"))
    if gid is None:
        raise Reject(4001, "members_shape", "guild_id missing or not one snowflake")
    notes: list[Note] = []
    _unknown_keys(d, MEMBERS_KEYS, "members_unknown_key", notes)
    has_q, has_ids = d.get("query") is not None, d.get("user_ids") is not None
    if has_q and has_ids and d["query"] == "" and d.get("limit", 0) == 0:
        notes.append(Note("members_default_query_with_user_ids",
                          "query \"\" beside user_ids (user_ids served)"))
        has_q = False
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
        return MembersRequest(gid, query, int(limit), None, presences, nonce, tuple(notes))
    raw = d["user_ids"]
    ids = raw if isinstance(raw, list) else [raw]
    if not ids or any(_snowflake(i) is None for i in ids):
        raise Reject(4001, "members_shape", "user_ids are not snowflakes")
    if len(ids) > MAX_ID_REQUEST and strict:
        raise Reject(4001, "members_shape", f"{len(ids)} user_ids > {MAX_ID_REQUEST}")
    return MembersRequest(gid, None, 0, tuple(ids[:MAX_ID_REQUEST]), presences, nonce,
                          tuple(notes))


def validate_soundboard(d: Any) -> list[int]:
    """§11 op 31 [doc]: ``guild_ids``, an array of snowflakes; 4001 otherwise [choice]."""
    ids = d.get("guild_ids") if isinstance(d, Mapping) else None
    if not isinstance(ids, list) or any(_snowflake(i) is None for i in ids):
        raise Reject(4001, "soundboard_shape", "guild_ids is not an array of snowflakes")
    return [int(i) for i in ids]


def validate_channel_info(d: Any) -> tuple[int, list[str]]:
    """§11 op 43 [doc]: ``guild_id`` and ``fields`` within status/voice_start_time; 4001
    otherwise [choice]."""
    if not isinstance(d, Mapping):
        raise Reject(4001, "channel_info_shape", "d is not an object")
    gid = _snowflake(d.get("guild_id"))
    fields = d.get("fields")
    if gid is None or not isinstance(fields, list) or not all(
            f in CHANNEL_INFO_FIELDS for f in fields):
        raise Reject(4001, "channel_info_shape",
                     "need guild_id and fields within status/voice_start_time")
    return gid, list(fields)
