"""What the sandbox saw and did, as an append-only log tests wait on.

Every record wakes :meth:`Recorder.wait_for`, so tests wait for a condition ("a RESUME came on
the resume path") instead of sleeping.  Kinds (``Record.kind``):

``rest`` (path, status), ``connect`` (path: "connect"|"resume", query), ``hello``,
``identify`` (accepted; bucket, gap, session_id, intents, shard, path, received, jitter),
``identify_rejected`` (reason, bucket, gap; received, jitter), ``ready`` (session_id, seq),
``resume`` (session_id, seq, path), ``resume_rejected`` (reason), ``resumed`` (seq, replayed),
``heartbeat`` (d, gap, since_hello, first, expected), ``heartbeat_ack``,
``heartbeat_request``, ``client_close`` (code, reason), ``server_close`` (code, reason),
``drop``, ``dispatch`` (session_id, seq, t), ``command`` (op), ``fault`` (fault),
``invalid_session`` (resumable), ``reconnect``, ``warning`` (rule, detail),
``violation`` (rule, detail), ``note`` (rule, detail: a field accepted as Discord accepts
it, though legacy, undocumented or ignored), ``token_reset``, ``owner_emailed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import anyio
import orjson

log = logging.getLogger("shardctl.sandbox")


@dataclass(frozen=True, slots=True)
class Record:
    """One thing that happened; ``conn`` numbers the socket, ``details`` depends on ``kind``."""

    kind: str
    at: float
    shard_id: int | None = None
    conn: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.details[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.details.get(key, default)


@dataclass(frozen=True, slots=True)
class Violation:
    """A client broke a protocol rule (checklist §16); ``rule`` is a short stable name."""

    rule: str
    detail: str
    shard_id: int | None
    at: float


def json_line(rec: Record) -> bytes:
    """One record as a JSON line (``--record``): kind, at, shard_id, conn, details."""
    return orjson.dumps({"kind": rec.kind, "at": rec.at, "shard_id": rec.shard_id,
                         "conn": rec.conn, "details": rec.details},
                        default=str, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def file_sink(out: BinaryIO) -> Callable[[Record], None]:
    """A :attr:`Recorder.sink` appending each record to ``out`` as one JSON line."""
    def write(rec: Record) -> None:
        out.write(json_line(rec))
    return write


class Recorder:
    """Append-only records plus a wake-up on every append."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.violations: list[Violation] = []
        self._changed: anyio.Event | None = None
        #: Called with each record as it is appended (``shardctl sandbox --record FILE``).
        self.sink: Callable[[Record], None] | None = None

    def add(self, kind: str, *, shard_id: int | None = None, conn: int | None = None,
            at: float | None = None, **details: Any) -> Record:
        """Append a record; ``at`` defaults to now (a client frame's: when it arrived)."""
        rec = Record(kind, anyio.current_time() if at is None else at, shard_id, conn,
                     details)
        self.records.append(rec)
        if self.sink is not None:
            self.sink(rec)
        if kind == "violation":
            self.violations.append(
                Violation(str(details.get("rule")), str(details.get("detail", "")),
                          shard_id, rec.at))
            log.warning("violation %s (shard %s): %s", details.get("rule"), shard_id,
                        details.get("detail", ""))
        elif kind == "warning":
            log.warning("warning %s (shard %s): %s", details.get("rule"), shard_id,
                        details.get("detail", ""))
        elif kind == "note":
            log.info("note %s (shard %s): %s", details.get("rule"), shard_id,
                     details.get("detail", ""))
        else:
            log.debug("%s shard=%s conn=%s %s", kind, shard_id, conn, details)
        self.notify()
        return rec

    def notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the shared spec's signature
    ) -> None:
        """Return once ``predicate()`` holds, re-checked after every record; TimeoutError."""
        with anyio.fail_after(timeout):
            while not predicate():
                if self._changed is None:
                    self._changed = anyio.Event()
                await self._changed.wait()

    def of(self, kind: str, shard_id: int | None = None) -> list[Record]:
        return [r for r in self.records
                if r.kind == kind and (shard_id is None or r.shard_id == shard_id)]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)
