"""Gateway intents (gateway-protocol.md §12)."""

from __future__ import annotations

import enum
from typing import Final

from shardctl.errors import ConfigurationError


class Intents(enum.IntFlag):
    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25

    @classmethod
    def all(cls) -> Intents:
        return cls(ALL_INTENTS)

    @classmethod
    def default(cls) -> Intents:
        """Every intent that needs no approval in the Developer Portal."""
        return cls(ALL_INTENTS & ~PRIVILEGED_INTENTS)

    @classmethod
    def parse(cls, text: str) -> Intents:
        """Parse ``"513"``, ``"GUILDS,GUILD_MESSAGES"`` or ``"GUILDS|guild_messages"``."""
        text = text.strip()
        if text.isascii() and text.isdigit():
            return validate_intents(int(text))
        value = 0
        for raw in text.replace("|", ",").split(","):
            name = raw.strip().upper()
            if not name:
                continue
            if name == "ALL":
                value |= ALL_INTENTS
            elif name == "DEFAULT":
                value |= ALL_INTENTS & ~PRIVILEGED_INTENTS
            elif name in cls.__members__:
                value |= cls.__members__[name].value
            else:
                raise ConfigurationError(f"unknown intent {raw.strip()!r}")
        return cls(value)

    @property
    def privileged(self) -> Intents:
        """The privileged intents in this set."""
        return Intents(self.value & PRIVILEGED_INTENTS)

    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in Intents if m.name and m.value & self.value)


#: Every documented bit: 0x331FFFF.
ALL_INTENTS: Final = 53608447
#: GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT: must be enabled in the Developer Portal.
PRIVILEGED_INTENTS: Final = 33026


def validate_intents(value: int) -> Intents:
    """Refuse a bitfield Discord would close with 4013 (negative or undocumented bits)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"intents must be an int, not {type(value).__name__}")
    if value < 0:
        raise ConfigurationError(f"intents must not be negative (got {value})")
    unknown = value & ~ALL_INTENTS
    if unknown:
        raise ConfigurationError(
            f"intents has undocumented bits {unknown:#x} (valid mask {ALL_INTENTS:#x})"
        )
    return Intents(value)
