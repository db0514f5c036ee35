"""The emulated bot's world: snowflakes, guilds, members, and realistic ~1.5 KB messages.

Guild ids are built so that guild ``i`` routes to shard ``i % shard_count`` under
``(guild_id >> 22) % shard_count`` (§10), which makes the routing of every session checkable.
Messages are pre-encoded templates with holes for the id and timestamp, so the traffic
generator does byte concatenation, not JSON encoding, per dispatch.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import orjson

#: Discord epoch (§14), ms.
DISCORD_EPOCH_MS: Final = 1420070400000
_GUILD_BASE_MS: Final = 250_000_000_000
_USER_BASE_MS: Final = 150_000_000_000
_MESSAGE_BASE_MS: Final = 330_000_000_000


def snowflake(ms_since_epoch: int, worker: int = 1, process: int = 0, inc: int = 0) -> int:
    """``((ms - epoch) << 22) | worker << 17 | process << 12 | inc`` with ms already relative."""
    return (ms_since_epoch << 22) | ((worker & 31) << 17) | ((process & 31) << 12) | (inc & 0xFFF)


def iso(ms_since_epoch: int) -> str:
    stamp = dt.datetime.fromtimestamp((ms_since_epoch + DISCORD_EPOCH_MS) / 1000, dt.UTC)
    return stamp.isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Guild:
    id: int
    index: int
    name: str
    text_channel_id: int
    voice_channel_id: int
    member_count: int


class World:
    """Guilds and members of the bot, fixed for the sandbox's lifetime."""

    def __init__(self, *, shard_count: int, guilds_per_shard: int, members_per_guild: int,
                 bot_user_id: int, bot_username: str) -> None:
        base = _GUILD_BASE_MS - _GUILD_BASE_MS % shard_count
        self.bot_user_id, self.bot_username = bot_user_id, bot_username
        self.members_per_guild = members_per_guild
        self.guilds: dict[int, Guild] = {}
        for i in range(shard_count * guilds_per_shard):
            gid = snowflake(base + i, worker=1)
            self.guilds[gid] = Guild(gid, i, f"sandbox guild {i}", gid + 1, gid + 2,
                                     members_per_guild)

    def guilds_for(self, shard_id: int, num_shards: int) -> list[Guild]:
        return [g for g in self.guilds.values() if (g.id >> 22) % num_shards == shard_id]

    # -- users and members ------------------------------------------------------------------

    def user_id(self, index: int) -> int:
        """Member ``index`` of every guild; index 0 is the bot."""
        return self.bot_user_id if index == 0 else snowflake(_USER_BASE_MS + index, worker=2)

    def user_index(self, user_id: int) -> int | None:
        if user_id == self.bot_user_id:
            return 0
        index = (user_id >> 22) - _USER_BASE_MS
        if 0 < index < self.members_per_guild and self.user_id(index) == user_id:
            return index
        return None

    def username(self, index: int) -> str:
        return self.bot_username if index == 0 else f"member{index:05d}"

    def bot_user(self) -> dict[str, Any]:
        return {"id": str(self.bot_user_id), "username": self.bot_username,
                "discriminator": "0", "global_name": None, "avatar": None, "bot": True,
                "flags": 0, "public_flags": 0, "verified": True, "mfa_enabled": False,
                "email": None, "locale": "en-US", "premium_type": 0}

    def user(self, index: int) -> dict[str, Any]:
        if index == 0:
            return {k: v for k, v in self.bot_user().items()
                    if k in ("id", "username", "discriminator", "global_name", "avatar", "bot",
                             "public_flags")}
        return {"id": str(self.user_id(index)), "username": self.username(index),
                "discriminator": "0", "global_name": f"Member {index}", "avatar": None,
                "public_flags": 0}

    def member(self, index: int) -> dict[str, Any]:
        return {"user": self.user(index), "roles": [], "joined_at": iso(_GUILD_BASE_MS),
                "deaf": False, "mute": False, "flags": 0, "pending": False, "nick": None,
                "avatar": None, "premium_since": None, "communication_disabled_until": None}

    def presence(self, index: int, guild_id: int) -> dict[str, Any]:
        return {"user": {"id": str(self.user_id(index))}, "guild_id": str(guild_id),
                "status": "online", "activities": [],
                "client_status": {"desktop": "online"}}

    # -- guild objects ----------------------------------------------------------------------

    def unavailable(self, guild: Guild) -> dict[str, Any]:
        return {"id": str(guild.id), "unavailable": True}

    def guild_create(self, guild: Guild, *, presences: bool, large_threshold: int
                     ) -> dict[str, Any]:
        """GUILD_CREATE ``d``; member lists follow §13 (presences, 75k, large_threshold)."""
        gid = str(guild.id)
        large = guild.member_count > large_threshold
        # Without GUILD_PRESENCES, over 75k, or when large (our members are offline, roleless
        # and nick-less): only the bot.  Small guilds with presences: everyone.
        everyone = presences and not large and guild.member_count <= 75_000
        indices = range(guild.member_count) if everyone else range(1)
        return {
            "id": gid, "name": guild.name, "icon": None, "icon_hash": None, "splash": None,
            "discovery_splash": None, "banner": None, "description": None,
            "owner_id": str(self.user_id(1 if guild.member_count > 1 else 0)),
            "region": "deprecated", "afk_channel_id": None, "afk_timeout": 300,
            "verification_level": 0, "default_message_notifications": 0,
            "explicit_content_filter": 0, "mfa_level": 0, "nsfw_level": 0, "nsfw": False,
            "premium_tier": 0, "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False, "preferred_locale": "en-US",
            "system_channel_id": str(guild.text_channel_id), "system_channel_flags": 0,
            "rules_channel_id": None, "public_updates_channel_id": None,
            "safety_alerts_channel_id": None, "vanity_url_code": None, "application_id": None,
            "max_members": 500000, "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50, "features": [], "hub_type": None,
            "incidents_data": None, "lazy": True, "unavailable": False, "large": large,
            "member_count": guild.member_count, "joined_at": iso(_GUILD_BASE_MS + guild.index),
            "roles": [{"id": gid, "name": "@everyone", "permissions": "1071698660929",
                       "position": 0, "color": 0, "hoist": False, "managed": False,
                       "mentionable": False, "icon": None, "unicode_emoji": None,
                       "flags": 0, "description": None}],
            "emojis": [], "stickers": [], "soundboard_sounds": [],
            "channels": [
                {"id": str(guild.text_channel_id), "type": 0, "guild_id": gid,
                 "name": "general", "position": 0, "permission_overwrites": [],
                 "parent_id": None, "topic": None, "nsfw": False, "rate_limit_per_user": 0,
                 "last_message_id": None, "flags": 0},
                {"id": str(guild.voice_channel_id), "type": 2, "guild_id": gid,
                 "name": "voice", "position": 1, "permission_overwrites": [],
                 "parent_id": None, "bitrate": 64000, "user_limit": 0, "rtc_region": None,
                 "nsfw": False, "rate_limit_per_user": 0, "last_message_id": None, "flags": 0},
            ],
            "threads": [], "stage_instances": [], "guild_scheduled_events": [],
            "voice_states": [],
            "members": [self.member(i) for i in indices],
            "presences": [self.presence(i, guild.id) for i in indices if presences],
        }


_ID_HOLE: Final = "@@SANDBOX-ID@@"
_TS_HOLE: Final = "@@SANDBOX-TS@@"
_LOREM: Final = (
    "Deploy finished for shard cluster 3: 16 shards resumed, 0 re-identified, p99 gateway "
    "latency 84 ms. Next maintenance window is Thursday 02:00 UTC; ping @oncall if the "
    "session budget drops under 200 or any shard stays unavailable for more than 5 min."
)


class MessageFactory:
    """Realistic guild MESSAGE_CREATE ``d`` bytes (~1.5 KB), pre-encoded per guild."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._templates: dict[tuple[int, bool], list[bytes]] = {}
        self._counter = 0

    def _template(self, guild: Guild, content: bool) -> list[bytes]:
        key = (guild.id, content)
        parts = self._templates.get(key)
        if parts is None:
            author = 1 + guild.index % max(1, self.world.members_per_guild - 1)
            if self.world.members_per_guild <= 1:
                author = 0
            d = self._message(guild, author, content)
            text = orjson.dumps(d).decode()
            head, _, rest = text.partition(_ID_HOLE)
            mid, _, tail = rest.partition(_TS_HOLE)
            parts = [head.encode(), mid.encode(), tail.encode()]
            self._templates[key] = parts
        return parts

    def _message(self, guild: Guild, author: int, content: bool) -> dict[str, Any]:
        gid, cid = str(guild.id), str(guild.text_channel_id)
        member = self.world.member(author)
        member.pop("user")
        return {
            "id": _ID_HOLE, "type": 0, "channel_id": cid, "guild_id": gid,
            "author": {**self.world.user(author), "avatar_decoration_data": None,
                       "clan": None, "primary_guild": None, "collectibles": None,
                       "banner": None, "accent_color": None, "flags": 0},
            "member": member,
            "content": _LOREM if content else "",
            "timestamp": _TS_HOLE, "edited_timestamp": None, "tts": False,
            "mention_everyone": False,
            "mentions": [self.world.user(m)
                         for m in range(2, min(3, self.world.members_per_guild))],
            "mention_roles": [str(guild.id + 5)],
            "mention_channels": [], "pinned": False, "flags": 0,
            "attachments": [],
            "embeds": [] if not content else [{
                "type": "rich", "title": "Cluster status", "color": 5814783,
                "description": "All shards READY; 0 zombies; 1000/1000 session starts left.",
                "fields": [{"name": "Shards", "value": "16/16", "inline": True},
                           {"name": "Guilds", "value": "24,118", "inline": True},
                           {"name": "Resumes (24 h)", "value": "37", "inline": True}],
                "footer": {"text": "shardctl sandbox"}, "content_scan_version": 0}],
            "components": [], "sticker_items": [],
            "nonce": "1300000000000000000",
        }

    def encode(self, guild: Guild, *, content: bool) -> bytes:
        """One MESSAGE_CREATE ``d`` with a fresh id and timestamp."""
        self._counter += 1
        ms = _MESSAGE_BASE_MS + self._counter
        head, mid, tail = self._template(guild, content)
        return b"".join((head, str(snowflake(ms, worker=3, inc=self._counter)).encode(),
                         mid, iso(ms).encode(), tail))
