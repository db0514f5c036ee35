"""Gateway opcodes (gateway-protocol.md §2)."""

from __future__ import annotations

import enum
from typing import Final


class Op(enum.IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


#: Opcodes a client may send; anything else gets close 4001 from Discord.
CLIENT_OPS: Final = frozenset({1, 2, 3, 4, 6, 8, 31, 43})
#: Opcodes the server sends.
SERVER_OPS: Final = frozenset({0, 1, 7, 9, 10, 11})
#: Before IDENTIFY/RESUME succeeds only these are allowed; others get 4003.
PRE_AUTH_OPS: Final = frozenset({1, 2, 6})
