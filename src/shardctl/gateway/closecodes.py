"""Gateway close codes, their meaning, and what a client does after each (protocol §7)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class CloseAction(enum.Enum):
    """What the client does after the socket closed with a given code."""

    RESUME = "resume"
    REIDENTIFY = "reidentify"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class CloseCode:
    code: int
    name: str
    action: CloseAction
    message: str


def _c(code: int, name: str, action: CloseAction, message: str) -> CloseCode:
    return CloseCode(code, name, action, message)


_R, _I, _F = CloseAction.RESUME, CloseAction.REIDENTIFY, CloseAction.FATAL

CLOSE_CODES: Final[dict[int, CloseCode]] = {
    c.code: c
    for c in (
        _c(4000, "UNKNOWN_ERROR", _R, "unknown server error; resuming"),
        # Staff: a 4001 session is never resumable.
        _c(4001, "UNKNOWN_OPCODE", _I, "we sent an unknown opcode or a malformed payload"),
        _c(4002, "DECODE_ERROR", _R, "we sent a frame Discord could not decode"),
        _c(4003, "NOT_AUTHENTICATED", _I,
           "payload before authentication, or the session was invalidated"),
        _c(4004, "AUTHENTICATION_FAILED", _F,
           "authentication failed: the bot token is invalid or was reset"),
        _c(4005, "ALREADY_AUTHENTICATED", _R, "we identified twice on one connection"),
        _c(4007, "INVALID_SEQ", _I, "the sequence sent in RESUME was invalid"),
        _c(4008, "RATE_LIMITED", _R, "we sent commands too fast (more than 120 per 60 s)"),
        _c(4009, "SESSION_TIMED_OUT", _I, "the session timed out"),
        _c(4010, "INVALID_SHARD", _F,
           "invalid shard: fetch /gateway/bot again and re-plan the shard count"),
        _c(4011, "SHARDING_REQUIRED", _F,
           "sharding required: too many guilds for one session; re-shard with the "
           "recommended count"),
        _c(4012, "INVALID_API_VERSION", _F, "invalid gateway API version"),
        _c(4013, "INVALID_INTENTS", _F, "invalid intents: the bitfield has undocumented bits"),
        _c(4014, "DISALLOWED_INTENTS", _F,
           "disallowed intents: a privileged intent is not enabled for this application"),
    )
}

#: Codes a client uses to close while keeping its session resumable (anything but 1000/1001).
SESSION_ENDING_CLIENT_CODES: Final = frozenset({1000, 1001})
#: Our private code for closing a zombie connection (no HEARTBEAT_ACK).
ZOMBIE_CLOSE_CODE: Final = 4900


def classify(code: int | None) -> CloseCode:
    """Known codes map to their table entry; anything else (1006, 4006, none) resumes."""
    if code is not None and code in CLOSE_CODES:
        return CLOSE_CODES[code]
    label = "no close frame" if code is None else f"close code {code}"
    return CloseCode(code if code is not None else 1006, "UNKNOWN", CloseAction.RESUME,
                     f"connection lost ({label}); resuming")
