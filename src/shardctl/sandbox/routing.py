"""Which session gets which dispatch: guild routing (§10) and intent filtering (§12).

Pure functions over event names, payloads and sessions; the server applies them per event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from shardctl.gateway.intents import Intents

I = Intents  # noqa: E741 - the table below reads better with a short name

#: event → (intent needed in a guild, intent needed in a DM); None = always sent.
_EVENT_INTENTS: Final[dict[str, tuple[int | None, int | None]]] = {
    **{t: (I.GUILDS, None) for t in (
        "GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE", "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE", "GUILD_ROLE_DELETE", "CHANNEL_CREATE", "CHANNEL_UPDATE",
        "CHANNEL_DELETE", "THREAD_CREATE", "THREAD_UPDATE", "THREAD_DELETE",
        "THREAD_LIST_SYNC", "THREAD_MEMBER_UPDATE", "STAGE_INSTANCE_CREATE",
        "STAGE_INSTANCE_UPDATE", "STAGE_INSTANCE_DELETE")},
    "CHANNEL_PINS_UPDATE": (I.GUILDS, I.DIRECT_MESSAGES),
    **{t: (I.GUILD_MEMBERS, None) for t in (
        "GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE",
        "THREAD_MEMBERS_UPDATE")},
    **{t: (I.GUILD_MODERATION, None) for t in (
        "GUILD_AUDIT_LOG_ENTRY_CREATE", "GUILD_BAN_ADD", "GUILD_BAN_REMOVE")},
    **{t: (I.GUILD_EXPRESSIONS, None) for t in (
        "GUILD_EMOJIS_UPDATE", "GUILD_STICKERS_UPDATE", "GUILD_SOUNDBOARD_SOUND_CREATE",
        "GUILD_SOUNDBOARD_SOUND_UPDATE", "GUILD_SOUNDBOARD_SOUND_DELETE",
        "GUILD_SOUNDBOARD_SOUNDS_UPDATE")},
    **{t: (I.GUILD_INTEGRATIONS, None) for t in (
        "GUILD_INTEGRATIONS_UPDATE", "INTEGRATION_CREATE", "INTEGRATION_UPDATE",
        "INTEGRATION_DELETE")},
    "WEBHOOKS_UPDATE": (I.GUILD_WEBHOOKS, None),
    "INVITE_CREATE": (I.GUILD_INVITES, None),
    "INVITE_DELETE": (I.GUILD_INVITES, None),
    "VOICE_STATE_UPDATE": (I.GUILD_VOICE_STATES, None),
    "VOICE_CHANNEL_EFFECT_SEND": (I.GUILD_VOICE_STATES, None),
    "PRESENCE_UPDATE": (I.GUILD_PRESENCES, None),
    **{t: (I.GUILD_MESSAGES, I.DIRECT_MESSAGES) for t in (
        "MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK")},
    **{t: (I.GUILD_MESSAGE_REACTIONS, I.DIRECT_MESSAGE_REACTIONS) for t in (
        "MESSAGE_REACTION_ADD", "MESSAGE_REACTION_REMOVE", "MESSAGE_REACTION_REMOVE_ALL",
        "MESSAGE_REACTION_REMOVE_EMOJI")},
    "TYPING_START": (I.GUILD_MESSAGE_TYPING, I.DIRECT_MESSAGE_TYPING),
    **{t: (I.GUILD_SCHEDULED_EVENTS, None) for t in (
        "GUILD_SCHEDULED_EVENT_CREATE", "GUILD_SCHEDULED_EVENT_UPDATE",
        "GUILD_SCHEDULED_EVENT_DELETE", "GUILD_SCHEDULED_EVENT_USER_ADD",
        "GUILD_SCHEDULED_EVENT_USER_REMOVE")},
    **{t: (I.AUTO_MODERATION_CONFIGURATION, None) for t in (
        "AUTO_MODERATION_RULE_CREATE", "AUTO_MODERATION_RULE_UPDATE",
        "AUTO_MODERATION_RULE_DELETE")},
    "AUTO_MODERATION_ACTION_EXECUTION": (I.AUTO_MODERATION_EXECUTION, None),
    "MESSAGE_POLL_VOTE_ADD": (I.GUILD_MESSAGE_POLLS, I.DIRECT_MESSAGE_POLLS),
    "MESSAGE_POLL_VOTE_REMOVE": (I.GUILD_MESSAGE_POLLS, I.DIRECT_MESSAGE_POLLS),
}

_CONTENT_FIELDS: Final = ("content", "embeds", "attachments", "components", "poll")
_MESSAGE_EVENTS: Final = frozenset({"MESSAGE_CREATE", "MESSAGE_UPDATE"})


def guild_id_of(d: Any) -> int | None:
    if isinstance(d, Mapping):
        raw = d.get("guild_id")
        if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw).isdigit():
            return int(raw)
    return None


def route_shard(guild_id: int | None, num_shards: int) -> int:
    """§10: ``(guild_id >> 22) % num_shards``; events without a guild go to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % num_shards


#: How guild events are routed while sessions of two shard counts run (a reshard):
#: ``every`` session whose own ``[shard_id, num_shards]`` owns the guild gets it (what
#: Discord does as far as we know); ``newest``: only the owner under the newest count.
ROUTINGS: Final = ("every", "newest")


class Routable(Protocol):
    @property
    def shard_id(self) -> int: ...
    @property
    def num_shards(self) -> int: ...
    @property
    def created_at(self) -> float: ...


S = TypeVar("S", bound=Routable)


def recipients(sessions: Sequence[S], guild_id: int | None, routing: str) -> list[S]:
    """The sessions (started, live) that get an event of ``guild_id``, in ``sessions`` order.

    ``every``: each session whose own ``[shard_id, num_shards]`` owns the guild.
    ``newest``: the owners under the newest shard count only -- the count whose oldest live
    session was created last (a reshard's new set, up or down, from its first READY on);
    when no session of that count owns the guild yet (its shard is not READY), the owners
    under the next newest count, and so on.  A detached but resumable session still owns
    its guilds (it buffers them for replay): nothing falls back to an older count then.
    """
    if routing == "every":
        return [s for s in sessions if route_shard(guild_id, s.num_shards) == s.shard_id]
    introduced: dict[int, float] = {}
    for s in sessions:
        introduced[s.num_shards] = min(introduced.get(s.num_shards, s.created_at),
                                       s.created_at)
    for count in sorted(introduced, key=lambda n: introduced[n], reverse=True):
        owner = route_shard(guild_id, count)
        owners = [s for s in sessions if s.num_shards == count and s.shard_id == owner]
        if owners:
            return owners
    return []


def allowed(t: str, d: Any, intents: int, *, bot_user_id: int) -> bool:
    """Whether a session with ``intents`` receives dispatch ``t`` (§12, checklist 48)."""
    need = _EVENT_INTENTS.get(t)
    if need is None:
        return True
    if t == "GUILD_MEMBER_UPDATE" and _user_id(d) == bot_user_id:
        return True  # the bot's own member update always arrives
    guild_intent, dm_intent = need
    bit = guild_intent if guild_id_of(d) is not None else dm_intent
    return bit is None or bool(intents & bit)


def _user_id(d: Any) -> int | None:
    if isinstance(d, Mapping):
        user = d.get("user") or d.get("author")
        if isinstance(user, Mapping) and str(user.get("id", "")).isdigit():
            return int(user["id"])
    return None


def needs_content_strip(t: str, d: Any, intents: int, *, bot_user_id: int) -> bool:
    """Without MESSAGE_CONTENT, guild messages lose content, except the bot's own/mentions."""
    if t not in _MESSAGE_EVENTS or intents & I.MESSAGE_CONTENT:
        return False
    if guild_id_of(d) is None or _user_id(d) == bot_user_id:
        return False
    mentions = d.get("mentions") if isinstance(d, Mapping) else None
    mentioned = isinstance(mentions, list) and any(
        isinstance(m, Mapping) and str(m.get("id")) == str(bot_user_id) for m in mentions)
    return not mentioned


def strip_content(d: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(d)
    for key in _CONTENT_FIELDS:
        if key in out:
            out[key] = "" if key == "content" else ([] if key != "poll" else None)
    if out.get("poll") is None:
        out.pop("poll", None)
    return out
