"""Subjects, message ids and headers of the stream: the public layout (README "The durable
stream"), pure functions only.

Subject: ``<prefix>.<TYPE>.<shard>`` -- ``shardctl.MESSAGE_CREATE.3`` -- so a consumer
filters by type and shard in the server (``shardctl.MESSAGE_CREATE.*``, ``shardctl.*.3``).
A type character that a subject token cannot hold (anything but letters, digits, ``_``,
``-``) is written ``_``; the ``Shardctl-Type`` header always has the exact type.

Payload: the gateway payload exactly as the worker received it (the bytes after the
ZeroMQ frame's header).  Headers: the ZeroMQ frame header's fields, in decimal:
``Shardctl-Type``, ``Shardctl-Shard``, ``Shardctl-Seq`` (absent for lifecycle events),
``Shardctl-Received-At`` (unix ns), ``Shardctl-Bus-Seq``, ``Shardctl-Epoch``.

``Nats-Msg-Id``: the server stores one message per id within its duplicate window.  A
dispatch is named by (shard, session, seq) -- ``<shard>.<session tag>.<seq>``, the tag a
hash of the session id, which never leaves the supervisor -- so when a supervisor that
crashed RESUMEs from an older seq, Discord's replay of what the stream already holds is
dropped by the server.  Lifecycle events have no seq and are never replayed (they happen
again, anew): ``<shard>.<TYPE>.<epoch>.<bus_seq>``, unique within one supervisor run.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Final

from shardctl.errors import ProtocolError
from shardctl.ipc.events import Event

MSG_ID: Final = "Nats-Msg-Id"
TYPE: Final = "Shardctl-Type"
SHARD: Final = "Shardctl-Shard"
SEQ: Final = "Shardctl-Seq"
RECEIVED_AT: Final = "Shardctl-Received-At"
BUS_SEQ: Final = "Shardctl-Bus-Seq"
EPOCH: Final = "Shardctl-Epoch"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


def session_tag(session_id: str) -> str:
    """A short stable name of a session for message ids (the id itself stays private)."""
    return hashlib.blake2b(session_id.encode(), digest_size=8).hexdigest()


def type_token(t: str) -> str:
    return _UNSAFE.sub("_", t)


def subject(prefix: str, t: str, shard: int) -> str:
    return f"{prefix}.{type_token(t)}.{shard}"


def filter_subjects(prefix: str, types: Iterable[str] | None,
                    shards: Iterable[int] | None) -> list[str]:
    """The consumer filters selecting every pair of ``types`` and ``shards`` (None: every one)."""
    type_tokens = ["*"] if types is None else sorted({type_token(t) for t in types})
    shard_tokens = ["*"] if shards is None else [str(s) for s in sorted(set(shards))]
    if type_tokens == ["*"] and shard_tokens == ["*"]:
        return [f"{prefix}.>"]
    return [f"{prefix}.{t}.{s}" for t in type_tokens for s in shard_tokens]




def msg_id(frame: Event, session: str | None) -> str:
    """The ``Nats-Msg-Id`` of a frame; ``session`` is the id of the session its seq is in."""
    if frame.seq is None or session is None:
        return f"{frame.shard}.{type_token(frame.type)}.{frame.epoch}.{frame.bus_seq}"
    return f"{frame.shard}.{session_tag(session)}.{frame.seq}"


def headers(frame: Event, session: str | None) -> dict[str, str]:
    out = {MSG_ID: msg_id(frame, session), TYPE: frame.type, SHARD: str(frame.shard),
           RECEIVED_AT: str(frame.received_at_ns), BUS_SEQ: str(frame.bus_seq),
           EPOCH: str(frame.epoch)}
    if frame.seq is not None:
        out[SEQ] = str(frame.seq)
    return out


def event_from(headers: Mapping[str, str] | None, payload: bytes) -> Event:
    """The :class:`Event` a stream message carries; ProtocolError if it is not one of ours."""
    if not headers:
        raise ProtocolError("stream message without shardctl headers")
    try:
        seq = headers.get(SEQ)
        return Event(headers[TYPE], int(headers[SHARD]), None if seq is None else int(seq),
                     int(headers[RECEIVED_AT]), payload, bus_seq=int(headers[BUS_SEQ]),
                     epoch=int(headers[EPOCH]))
    except (KeyError, ValueError) as exc:
        raise ProtocolError(f"stream message with a bad shardctl header: {exc}") from None
