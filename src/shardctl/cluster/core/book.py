"""Session selection: one record per shard, and a seq only ever with its own session.

A RESUME needs the session id, its resume URL and the last sequence number *forwarded* of
that session (DESIGN.md §7): Discord replays what came after it.  All three come from one
place, the event bus's :class:`~shardctl.cluster.core.inputs.Watermark`, as one value, so
they cannot disagree; the control channel's state reports no longer contribute a session
(a new session id there paired with the old session's seq is what resumed at a wrong
point, issue 14).  Within one session the seq never goes back, so a saved record is never
older than one already forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from shardctl.cluster.core.inputs import Watermark
from shardctl.cluster.sessions import SessionRecord

__all__ = ["SessionBook", "settle"]


class SessionBook:
    def __init__(self, records: Iterable[SessionRecord] = ()) -> None:
        self._marks: dict[int, Watermark] = {}
        #: shards whose current session a fatal close ended (until the bus sees another)
        self._ended: set[int] = set()
        for r in records:
            self.observe(Watermark(r.shard_id, r.session_id, r.resume_gateway_url, r.seq))

    def observe(self, mark: Watermark) -> None:
        old = self._marks.get(mark.shard)
        if old is not None and old.session_id == mark.session_id and (
                mark.session_id is not None and old.seq is not None
                and (mark.seq is None or mark.seq < old.seq)):
            return  # a stale report of the same session: never go back
        if old is None or old.session_id != mark.session_id or mark.seq is None:
            self._ended.discard(mark.shard)
        if mark.session_id is None and mark.seq is None:
            self._marks.pop(mark.shard, None)
        else:
            self._marks[mark.shard] = mark

    def end(self, shard: int) -> None:
        """A fatal close ended the shard's session: never resume it."""
        self._ended.add(shard)

    def watermark(self, shard: int) -> Watermark | None:
        return self._marks.get(shard)

    def record(self, shard: int) -> SessionRecord | None:
        """Where a RESUME of ``shard`` starts, or None: it must IDENTIFY."""
        mark = self._marks.get(shard)
        if (mark is None or shard in self._ended or mark.session_id is None
                or mark.resume_url is None or mark.seq is None):
            return None
        return SessionRecord(shard, mark.session_id, mark.resume_url, mark.seq)

    def records(self, shards: Iterable[int]) -> list[SessionRecord]:
        return [r for r in map(self.record, shards) if r is not None]

    def forwarded(self, shard: int, session_id: str | None, seq: int | None) -> bool:
        """Whether the bus has forwarded ``seq`` *of* ``session_id`` (a shard's report).

        The control channel can run ahead of the bus: a READY reported there may still sit
        in the worker's queue.  A seq of another session proves nothing, whatever its size.
        """
        if seq is None:
            return True
        mark = self._marks.get(shard)
        if mark is None or mark.seq is None:
            return seq <= 0
        if session_id is not None and mark.session_id is not None \
                and mark.session_id != session_id:
            return False
        return mark.seq >= seq


def settle(now: Iterable[SessionRecord], before: Mapping[int, SessionRecord]
           ) -> tuple[SessionRecord, ...]:
    """What a checkpoint saves: each record as the *previous* snapshot (``before``) saw it.

    PUB/SUB has no receipts: what the events-out socket still queues for a consumer dies
    with a SIGKILLed supervisor.  A seq forwarded an interval ago has left that queue unless
    the consumer is that far behind, so a crash costs a replay rather than a gap.  A session
    new since then is saved from its start (seq 1): its whole stream is replayed, none of it
    skipped.  Either way the seq is one of the record's own session.
    """
    settled = []
    for record in now:
        earlier = before.get(record.shard_id)
        if earlier is not None and earlier.session_id == record.session_id:
            settled.append(earlier if earlier.seq <= record.seq else record)
        else:
            settled.append(replace(record, seq=min(record.seq, 1)))
    return tuple(settled)
