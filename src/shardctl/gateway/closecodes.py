"""Gateway close codes: one enum, what a client does after each, which keep a session (§7).

Who closes decides what a code means for the session (protocol §7):

- Discord closes: only the table's "Resume" rows (:data:`RESUMABLE`) and codes outside the
  table (1006, 4006, ...) leave the session alive; :func:`keeps_session` is the one test,
  used by the client's machine and by the sandbox alike.
- We close: every code keeps the session except 1000/1001
  (:data:`SESSION_ENDING_CLIENT_CODES`), which end it at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class CloseCode(enum.IntEnum):
    """Every close code shardctl sends or reads: WebSocket's, Discord's (§7), and our own."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    #: What the socket reports when the connection ended without a close frame.
    NO_CLOSE_FRAME = 1006
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014
    #: Ours, for closing a zombie connection (no HEARTBEAT_ACK): any code but 1000/1001 (§3).
    ZOMBIE = 4900


class CloseAction(enum.Enum):
    """What the client does after the socket closed with a given code."""

    RESUME = "resume"
    REIDENTIFY = "reidentify"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class CloseInfo:
    code: int
    name: str
    action: CloseAction
    message: str


_C = CloseCode

#: Discord's closes after which the session survives and the client RESUMEs (§7 "Resume").
RESUMABLE: Final[frozenset[CloseCode]] = frozenset(
    {_C.UNKNOWN_ERROR, _C.DECODE_ERROR, _C.ALREADY_AUTHENTICATED, _C.RATE_LIMITED})
#: Discord's closes that forbid reconnecting with the same settings (§7 "Stop").
FATAL: Final[frozenset[CloseCode]] = frozenset(
    {_C.AUTHENTICATION_FAILED, _C.INVALID_SHARD, _C.SHARDING_REQUIRED, _C.INVALID_API_VERSION,
     _C.INVALID_INTENTS, _C.DISALLOWED_INTENTS})
#: Codes a client closes with that end its session at once (§7); any other code the client
#: sends (4000, 4009, 4900, ...) keeps the session resumable.
SESSION_ENDING_CLIENT_CODES: Final[frozenset[CloseCode]] = frozenset(
    {_C.NORMAL_CLOSURE, _C.GOING_AWAY})
#: Our private code for closing a zombie connection (no HEARTBEAT_ACK).
ZOMBIE_CLOSE_CODE: Final = _C.ZOMBIE

#: Discord's table (§7): every code not in RESUMABLE or FATAL needs a new session.
_MESSAGES: Final[dict[CloseCode, str]] = {
    _C.UNKNOWN_ERROR: "unknown server error; resuming",
    # Staff: a 4001 session is never resumable.
    _C.UNKNOWN_OPCODE: "we sent an unknown opcode or a malformed payload",
    _C.DECODE_ERROR: "we sent a frame Discord could not decode",
    _C.NOT_AUTHENTICATED: "payload before authentication, or the session was invalidated",
    _C.AUTHENTICATION_FAILED: "authentication failed: the bot token is invalid or was reset",
    _C.ALREADY_AUTHENTICATED: "we identified twice on one connection",
    _C.INVALID_SEQ: "the sequence sent in RESUME was invalid",
    _C.RATE_LIMITED: "we sent commands too fast (more than 120 per 60 s)",
    _C.SESSION_TIMED_OUT: "the session timed out",
    _C.INVALID_SHARD: "invalid shard: fetch /gateway/bot again and re-plan the shard count",
    _C.SHARDING_REQUIRED: "sharding required: too many guilds for one session; re-shard "
                          "with the recommended count",
    _C.INVALID_API_VERSION: "invalid gateway API version",
    _C.INVALID_INTENTS: "invalid intents: the bitfield has undocumented bits",
    _C.DISALLOWED_INTENTS: "disallowed intents: a privileged intent is not enabled for this "
                           "application",
}


def _action(code: CloseCode) -> CloseAction:
    if code in RESUMABLE:
        return CloseAction.RESUME
    return CloseAction.FATAL if code in FATAL else CloseAction.REIDENTIFY


CLOSE_CODES: Final[dict[int, CloseInfo]] = {
    code: CloseInfo(code, code.name, _action(code), message)
    for code, message in _MESSAGES.items()
}


def classify(code: int | None) -> CloseInfo:
    """Known codes map to their table entry; anything else (1006, 4006, none) resumes."""
    if code is not None and code in CLOSE_CODES:
        return CLOSE_CODES[code]
    label = "no close frame" if code is None else f"close code {code}"
    return CloseInfo(code if code is not None else CloseCode.NO_CLOSE_FRAME, "UNKNOWN",
                     CloseAction.RESUME, f"connection lost ({label}); resuming")


def keeps_session(code: int | None) -> bool:
    """Whether a session survives Discord closing its socket with ``code`` (None: no frame)."""
    return classify(code).action is CloseAction.RESUME
