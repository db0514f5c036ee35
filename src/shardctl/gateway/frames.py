"""Parse one decompressed gateway payload into its envelope (gateway-protocol.md §2).

This runs once per received event, so it does the least that keeps the rest of the code safe:
one orjson parse, then type checks on the four envelope keys.  Anything the peer could get
wrong becomes a :class:`~shardctl.errors.ProtocolError` with a message saying what was wrong,
never a ``KeyError``/``TypeError`` deep inside the state machine.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from shardctl.errors import ProtocolError

__all__ = ["Frame", "read_frame"]

#: IDENTIFY and RESUME carry the bot token in ``d``; a Frame's repr must never show it.
_SECRET_OPS: Final = frozenset({2, 6})


_UNPARSED: Final[Any] = object()
#: Dispatches whose ``d`` the machine reads at once: always parsed (and checked) up front.
_PARSE_NOW: Final = frozenset({"READY", "RESUMED"})
_D_KEY: Final = b'"d":'
#: How far into a payload the envelope keys are looked for before ``"d":``.
_ENVELOPE_SPAN: Final = 128


class Frame:
    """One gateway payload: the envelope keys plus the bytes exactly as received.

    ``s`` and ``t`` are ``None`` when absent: the docs' own ACK example is ``{"op": 11}``.
    ``raw`` is kept so the worker can forward the payload without re-serialising it.
    ``d`` of a dispatch may be parsed on first access only (see :func:`read_frame`); a
    payload that turns out not to be JSON then raises :class:`ProtocolError` there.
    """

    __slots__ = ("_d", "op", "raw", "s", "t")

    def __init__(self, op: int, d: Any, s: int | None, t: str | None, raw: bytes) -> None:
        self.op, self._d, self.s, self.t, self.raw = op, d, s, t, raw

    @property
    def d(self) -> Any:
        d = self._d
        if d is _UNPARSED:
            d = self._d = _parse(self.raw).get("d")
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.op, self.s, self.t, self.raw, self.d) == \
            (other.op, other.s, other.t, other.raw, other.d)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

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
    frame = _read_dispatch_envelope(raw)
    if frame is not None:
        return frame
    obj = _parse(raw)
    return _checked(obj, obj.get("d"), raw)


def _parse(raw: bytes) -> dict[str, Any]:
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
    return obj


def _read_dispatch_envelope(raw: bytes) -> Frame | None:
    """A dispatch whose op, s and t all come before ``"d":`` (how Discord and the sandbox
    send them), read from those first bytes only; ``d`` is left for first access.

    Parsing the whole ~1.5 KB payload costs several times the envelope (DESIGN.md §3) and
    the worker forwards ``raw`` without ever reading ``d``.  Anything unusual (another key
    order, a non-dispatch, READY) returns None and takes the full parse.
    """
    i = raw.find(_D_KEY, 0, _ENVELOPE_SPAN)
    if i < 2 or raw[i - 1:i] != b"," or raw[-1:] != b"}":
        return None
    try:
        head = orjson.loads(raw[:i - 1] + b"}")
    except orjson.JSONDecodeError:
        return None
    if type(head) is not dict or type(head.get("op")) is not int or head["op"] != 0 \
            or "s" not in head or type(head.get("t")) is not str or head["t"] in _PARSE_NOW:
        return None
    return _checked(head, _UNPARSED, raw)


def _checked(obj: dict[str, Any], d: Any, raw: bytes) -> Frame:
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
    return Frame(op, d, s, t, raw)


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
