"""Parse one decompressed gateway payload into its envelope (gateway-protocol.md §2).

This runs once per received event, so it does the least that keeps the rest of the code safe:
one orjson parse, then type checks on the four envelope keys.  Anything the peer could get
wrong becomes a :class:`~shardctl.errors.ProtocolError` with a message saying what was wrong,
never a ``KeyError``/``TypeError`` deep inside the state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from shardctl.errors import ProtocolError

__all__ = ["Frame", "read_frame"]

#: IDENTIFY and RESUME carry the bot token in ``d``; a Frame's repr must never show it.
_SECRET_OPS: Final = frozenset({2, 6})


@dataclass(slots=True, repr=False)
class Frame:
    """One gateway payload: the envelope keys plus the bytes exactly as received.

    ``s`` and ``t`` are ``None`` when absent: the docs' own ACK example is ``{"op": 11}``.
    ``raw`` is kept so the worker can forward the payload without re-serialising it.
    """

    op: int
    d: Any
    s: int | None
    t: str | None
    raw: bytes

    def __repr__(self) -> str:
        # Never echo raw or a token-carrying d: the sandbox parses client IDENTIFY/RESUME too.
        d = "<redacted>" if self.op in _SECRET_OPS else _short(self.d)
        return f"Frame(op={self.op}, t={self.t!r}, s={self.s}, d={d}, raw=<{len(self.raw)} bytes>)"


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_frame(payload: bytes | str) -> Frame:
    """Parse one complete, decompressed payload; ProtocolError if it is not a gateway frame.

    Only ``op`` is mandatory (it must be an int); ``d``/``s``/``t`` may be absent.  When
    present, ``s`` must be an int or null and ``t`` a string or null, because the session's
    resume sequence and the event name are taken from them unchecked later on.
    """
    if type(payload) is bytes:
        raw = payload
    elif isinstance(payload, str):
        try:
            raw = payload.encode()
        except UnicodeEncodeError:
            raise ProtocolError("gateway payload is not valid UTF-8 text") from None
    else:
        raw = bytes(payload)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            f"gateway payload is not valid JSON ({len(raw)} bytes): {exc}"
        ) from None
    if type(obj) is not dict:
        raise ProtocolError(
            f"gateway payload must be a JSON object, got {_json_type(obj)}"
        )
    op = obj.get("op")
    if type(op) is not int:
        if op is None:
            raise ProtocolError("gateway payload has no 'op' (or it is null)")
        raise ProtocolError(f"gateway payload 'op' must be an integer, got {_json_type(op)}")
    s = obj.get("s")
    if s is not None and type(s) is not int:
        raise ProtocolError(f"gateway payload 's' must be an integer or null, got {_json_type(s)}")
    t = obj.get("t")
    if t is not None and type(t) is not str:
        raise ProtocolError(f"gateway payload 't' must be a string or null, got {_json_type(t)}")
    return Frame(op, obj.get("d"), s, t, raw)


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages that never echo the data."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
