"""Build the commands a client sends, refusing any Discord would close the socket for.

Each ``*_frame`` function returns the encoded JSON bytes of ``{"op": .., "d": ..}``, ready to
send as a text message.  Validation follows gateway-protocol.md §4 (IDENTIFY), §11 (op 3, 4,
8, 31, 43) and §9 (4096-byte frames): a bad field costs a 4001/4002/4013 close and, for some,
a wasted IDENTIFY from the daily budget, so we raise :class:`~shardctl.errors.PayloadError`
here instead.  Error messages name the field, never its value when it could be the token.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from shardctl.errors import ConfigurationError, PayloadError
from shardctl.gateway.intents import validate_intents
from shardctl.gateway.sharding import parse_snowflake

__all__ = [
    "ACTIVITY_KEYS",
    "ACTIVITY_TYPES",
    "MAX_NONCE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_USER_IDS",
    "STATUSES",
    "STREAMING_HOSTS",
    "channel_info_frame",
    "encode_command",
    "heartbeat_frame",
    "identify_frame",
    "presence",
    "presence_frame",
    "request_guild_members_frame",
    "resume_frame",
    "soundboard_sounds_frame",
    "validate_presence",
    "voice_state_frame",
]

#: Client frames over 4096 bytes get close 4002; exactly 4096 passes (§9).
MAX_PAYLOAD_BYTES: Final = 4096
#: Op 3 ``status`` values; "invisible" shows as offline (§11).
STATUSES: Final = frozenset({"online", "dnd", "idle", "invisible", "offline"})
#: Activity types: 0 Playing, 1 Streaming, 2 Listening, 3 Watching, 4 Custom, 5 Competing.
ACTIVITY_TYPES: Final = range(6)
#: Bots may set only these activity fields (§11).
ACTIVITY_KEYS: Final = frozenset({"name", "state", "type", "url"})
#: A streaming activity's ``url`` must be a Twitch or YouTube link (§11).
STREAMING_HOSTS: Final = ("twitch.tv", "youtube.com", "youtu.be")
#: Op 8 nonces longer than this are silently dropped by Discord (§11).
MAX_NONCE_BYTES: Final = 32
#: Op 8 ``user_ids`` replies are capped at 100 members (§11).
MAX_USER_IDS: Final = 100
#: IDENTIFY ``large_threshold`` range (§4).
LARGE_THRESHOLD_RANGE: Final = range(50, 251)
_PRESENCE_KEYS: Final = frozenset({"since", "activities", "status", "afk"})
_STREAMING: Final = 1
_CHANNEL_INFO_FIELDS: Final = frozenset({"status", "voice_start_time"})


def encode_command(op: int, d: Any) -> bytes:
    """Encode ``{"op": op, "d": d}`` and refuse it if Discord would close with 4002 (> 4096)."""
    try:
        data = orjson.dumps({"op": op, "d": d})
    except orjson.JSONEncodeError as exc:
        # orjson's messages name types, not values, so they cannot leak a token.
        raise PayloadError(f"op {op} payload cannot be encoded as JSON: {exc}") from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"op {op} payload is {len(data)} bytes; the gateway closes with 4002 above "
            f"{MAX_PAYLOAD_BYTES}"
        )
    return data


# -- field checks -------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise PayloadError(f"{what} must be a bool, got {type(value).__name__}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _snowflake(value: int | str, what: str) -> str:
    """Snowflakes are JSON strings on the wire (§14)."""
    try:
        return str(parse_snowflake(value, what))
    except ConfigurationError as exc:
        raise PayloadError(str(exc)) from None


def _token(token: object) -> str:
    # Never format the token into a message; only say what is wrong with it.
    if not isinstance(token, str) or not token:
        raise PayloadError("token must be a non-empty string")
    if token != token.strip():
        # A token read from a file with its newline gets 4004, which is fatal.
        raise PayloadError("token has leading or trailing whitespace")
    return token


# -- presence (op 3, and IDENTIFY's presence) ----------------------------------------------


def _activity(activity: object, index: int) -> dict[str, Any]:
    where = f"activities[{index}]"
    if not isinstance(activity, Mapping):
        raise PayloadError(f"{where} must be an object, got {type(activity).__name__}")
    unknown = set(activity) - ACTIVITY_KEYS
    if unknown:
        raise PayloadError(
            f"{where} has fields bots may not set: {sorted(map(str, unknown))} "
            f"(allowed: {sorted(ACTIVITY_KEYS)})"
        )
    if "name" not in activity or "type" not in activity:
        raise PayloadError(f"{where} needs both 'name' and 'type'")
    out: dict[str, Any] = {"name": _str(activity["name"], f"{where}.name")}
    kind = activity["type"]
    if not _is_int(kind) or kind not in ACTIVITY_TYPES:
        raise PayloadError(f"{where}.type must be an int in 0..5, got {kind!r}")
    out["type"] = int(kind)
    state = activity.get("state")
    if state is not None:
        out["state"] = _str(state, f"{where}.state")
    url = activity.get("url")
    if url is not None:
        out["url"] = _str(url, f"{where}.url")
    if kind == _STREAMING and not _is_streaming_url(url):
        raise PayloadError(f"{where} is type 1 (Streaming): 'url' must be a Twitch or YouTube link")
    return out


def _is_streaming_url(url: object) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    return parts.scheme in ("http", "https") and any(
        host == allowed or host.endswith("." + allowed) for allowed in STREAMING_HOSTS
    )


def validate_presence(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Check an op 3 ``d`` (also IDENTIFY's ``presence``) and return a normalised copy.

    All four keys are required (§11); a missing one, an unknown status, a non-array
    ``activities`` or a ``type`` outside 0..5 gets close 4001.
    """
    if not isinstance(obj, Mapping):
        raise PayloadError(f"presence must be an object, got {type(obj).__name__}")
    keys = set(obj)
    if keys != _PRESENCE_KEYS:
        missing, extra = _PRESENCE_KEYS - keys, keys - _PRESENCE_KEYS
        raise PayloadError(
            "presence needs exactly the keys since, activities, status, afk"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unknown {sorted(map(str, extra))}" if extra else "")
        )
    since = obj["since"]
    if since is not None and (not _is_int(since) or since < 0):
        raise PayloadError(f"presence.since must be null or unix ms >= 0, got {since!r}")
    activities = obj["activities"]
    if isinstance(activities, str | bytes | Mapping) or not isinstance(activities, Sequence):
        raise PayloadError(
            f"presence.activities must be an array, got {type(activities).__name__}"
        )
    status = obj["status"]
    if not isinstance(status, str) or status not in STATUSES:
        raise PayloadError(f"presence.status must be one of {sorted(STATUSES)}, got {status!r}")
    return {
        "since": None if since is None else int(since),
        "activities": [_activity(a, i) for i, a in enumerate(activities)],
        "status": status,
        "afk": _bool(obj["afk"], "presence.afk"),
    }


def presence(status: str = "online", activities: Sequence[Mapping[str, Any]] = (),
             since: int | None = None, afk: bool = False) -> dict[str, Any]:
    """Build a validated op 3 ``d``, e.g. for IDENTIFY's ``presence`` or :func:`presence_frame`."""
    return validate_presence(
        {"since": since, "activities": activities, "status": status, "afk": afk}
    )


def presence_frame(presence: Mapping[str, Any]) -> bytes:
    """Op 3 Presence Update.  Also limited to 5 per 20 s (see ratelimit.PRESENCE_LIMIT)."""
    return encode_command(3, validate_presence(presence))


# -- session: IDENTIFY, RESUME, HEARTBEAT ---------------------------------------------------


def _properties(properties: Mapping[str, str] | None) -> dict[str, str]:
    if properties is None:
        # browser/device name the library (§4); os is the running platform.
        return {"os": sys.platform, "browser": "shardctl", "device": "shardctl"}
    if not isinstance(properties, Mapping):
        raise PayloadError(f"properties must be an object, got {type(properties).__name__}")
    for key in ("os", "browser", "device"):
        # The legacy "$os"/"$browser"/"$device" spellings are still accepted (§4).
        if key not in properties and "$" + key not in properties:
            raise PayloadError(f"properties needs {key!r}")
    return {_str(k, "properties key"): _str(v, f"properties[{k!r}]")
            for k, v in properties.items()}


def _shard(shard: object) -> list[int]:
    if (isinstance(shard, str | bytes) or not isinstance(shard, Sequence) or len(shard) != 2
            or not all(_is_int(x) for x in shard)):
        raise PayloadError("shard must be a pair of ints (shard_id, num_shards)")
    shard_id, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= shard_id < count:
        # Discord closes 4010 (fatal) for these.
        raise PayloadError(f"shard [{shard_id}, {count}] needs 0 <= shard_id < num_shards")
    return [shard_id, count]


def identify_frame(*, token: str, intents: int, shard: tuple[int, int] | None,
                   properties: Mapping[str, str] | None = None, large_threshold: int = 50,
                   presence: Mapping[str, Any] | None = None, compress: bool = False) -> bytes:
    """Op 2 IDENTIFY (§4).

    ``intents`` must be a valid bitfield (4013 is fatal); ``large_threshold`` 50..250;
    ``shard`` a zero-based ``(shard_id, num_shards)`` or None for an unsharded bot.
    """
    d: dict[str, Any] = {"token": _token(token)}
    d["properties"] = _properties(properties)
    try:
        d["intents"] = int(validate_intents(intents))
    except ValueError as exc:
        raise PayloadError(str(exc)) from None
    d["compress"] = _bool(compress, "compress")
    if not _is_int(large_threshold) or large_threshold not in LARGE_THRESHOLD_RANGE:
        raise PayloadError(f"large_threshold must be an int in 50..250, got {large_threshold!r}")
    d["large_threshold"] = int(large_threshold)
    if shard is not None:
        d["shard"] = _shard(shard)
    if presence is not None:
        d["presence"] = validate_presence(presence)
    return encode_command(2, d)


def resume_frame(*, token: str, session_id: str, seq: int | None) -> bytes:
    """Op 6 RESUME (§5): the session from READY and the last ``s`` received."""
    if not isinstance(session_id, str) or not session_id:
        raise PayloadError("session_id must be a non-empty string")
    if seq is not None and (not _is_int(seq) or seq < 0):
        raise PayloadError(f"seq must be null or an int >= 0, got {seq!r}")
    return encode_command(6, {"token": _token(token), "session_id": session_id, "seq": seq})


def heartbeat_frame(seq: int | None) -> bytes:
    """Op 1 HEARTBEAT (§3): ``d`` is the last sequence received, or null before any."""
    if seq is not None and (not _is_int(seq) or seq < 0):
        raise PayloadError(f"heartbeat seq must be null or an int >= 0, got {seq!r}")
    return b'{"op":1,"d":null}' if seq is None else b'{"op":1,"d":%d}' % seq


# -- guild commands: op 4, 8, 31, 43 --------------------------------------------------------


def voice_state_frame(guild_id: int | str, channel_id: int | str | None,
                      self_mute: bool = False, self_deaf: bool = False) -> bytes:
    """Op 4 Voice State Update (§11); ``channel_id=None`` leaves voice.  All fields are sent."""
    return encode_command(4, {
        "guild_id": _snowflake(guild_id, "guild_id"),
        "channel_id": None if channel_id is None else _snowflake(channel_id, "channel_id"),
        "self_mute": _bool(self_mute, "self_mute"),
        "self_deaf": _bool(self_deaf, "self_deaf"),
    })


def request_guild_members_frame(guild_id: int | str, *, query: str | None = None,
                                limit: int | None = None, presences: bool = False,
                                user_ids: int | str | Sequence[int | str] | None = None,
                                nonce: str | None = None) -> bytes:
    """Op 8 Request Guild Members (§11).

    Exactly one of ``query``/``user_ids``; with neither, ``query=""`` and ``limit=0`` ask for
    all members (limited to 1 per 30 s per guild, needs GUILD_MEMBERS).  ``limit`` is
    required with an explicit ``query``.  ``user_ids`` is always sent as an array of strings.
    """
    d: dict[str, Any] = {"guild_id": _snowflake(guild_id, "guild_id")}
    if query is not None and user_ids is not None:
        raise PayloadError("request_guild_members takes query or user_ids, not both")
    if limit is not None and (not _is_int(limit) or limit < 0):
        raise PayloadError(f"limit must be an int >= 0, got {limit!r}")
    if user_ids is None:
        if query is None:
            query, limit = "", 0 if limit is None else limit
        elif limit is None:
            raise PayloadError("limit is required with query (0 with query '' = all members)")
        d["query"] = _str(query, "query")
        d["limit"] = limit
    else:
        d["user_ids"] = _user_ids(user_ids)
        if limit is not None:
            d["limit"] = limit
    d["presences"] = _bool(presences, "presences")
    if nonce is not None:
        if len(_str(nonce, "nonce").encode()) > MAX_NONCE_BYTES:
            # Discord would drop an over-long nonce silently and the reply could not be matched.
            raise PayloadError(f"nonce must be at most {MAX_NONCE_BYTES} bytes of UTF-8")
        d["nonce"] = nonce
    return encode_command(8, d)


def _user_ids(user_ids: int | str | Sequence[int | str]) -> list[str]:
    if isinstance(user_ids, int | str):
        return [_snowflake(user_ids, "user_ids")]
    if not isinstance(user_ids, Sequence) or isinstance(user_ids, bytes):
        raise PayloadError(
            f"user_ids must be a snowflake or an array of them, got {type(user_ids).__name__}"
        )
    if not 1 <= len(user_ids) <= MAX_USER_IDS:
        raise PayloadError(f"user_ids must hold 1..{MAX_USER_IDS} ids, got {len(user_ids)}")
    return [_snowflake(u, f"user_ids[{i}]") for i, u in enumerate(user_ids)]


def soundboard_sounds_frame(guild_ids: Sequence[int | str]) -> bytes:
    """Op 31 Request Soundboard Sounds (§11): one SOUNDBOARD_SOUNDS dispatch per guild."""
    if isinstance(guild_ids, str | bytes) or not isinstance(guild_ids, Sequence) or not guild_ids:
        raise PayloadError("guild_ids must be a non-empty array of snowflakes")
    return encode_command(31, {
        "guild_ids": [_snowflake(g, f"guild_ids[{i}]") for i, g in enumerate(guild_ids)]
    })


def channel_info_frame(guild_id: int | str,
                       fields: Sequence[str] = ("status", "voice_start_time")) -> bytes:
    """Op 43 Request Channel Info (§11): one CHANNEL_INFO dispatch with the asked fields."""
    if (isinstance(fields, str) or not isinstance(fields, Sequence) or not fields
            or not all(isinstance(f, str) and f in _CHANNEL_INFO_FIELDS for f in fields)):
        raise PayloadError(f"fields must be a non-empty subset of {sorted(_CHANNEL_INFO_FIELDS)}")
    return encode_command(43, {"guild_id": _snowflake(guild_id, "guild_id"),
                               "fields": list(fields)})
