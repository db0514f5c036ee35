"""Gateway sessions: the seq counter and replay buffer that outlive sockets (§4, §5, §15).

A session belongs to the bot, not to a socket: one counter per session continuing across
resumes, a bounded buffer of sent dispatches for replay, and a TTL that starts when its
socket goes away (unless the client closed with 1000/1001, which ends it at once).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardctl.sandbox.fixtures import Guild

if TYPE_CHECKING:
    from shardctl.sandbox.connection import Connection


def dispatch_frame(seq: int, t: str, d: bytes) -> bytes:
    """Op 0 with all four envelope keys, from an already-encoded ``d``."""
    return b'{"op":0,"s":%d,"t":"%s","d":%s}' % (seq, t.encode(), d)


@dataclass(eq=False, slots=True)
class Session:
    id: str
    shard_id: int
    num_shards: int
    shard_sent: bool
    intents: int
    large_threshold: int
    guilds: list[Guild]
    query: dict[str, str]
    replay_depth: int
    created_at: float
    seq: int = 0
    buffer: deque[tuple[int, bytes]] = field(default_factory=deque)
    evicted_upto: int = 0
    conn: Connection | None = None
    detached_at: float | None = None
    dead: bool = False
    generated: int = 0
    #: READY has its number: dispatches may follow.  Between IDENTIFY creating the session
    #: and READY being numbered a dispatch would take ``s = 1`` ahead of READY and never be
    #: sent (the socket is not attached yet); Discord sends nothing before READY (§4).
    started: bool = False

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def remember(self, seq: int, frame: bytes) -> None:
        """Keep a sent dispatch for replay; the oldest falls out past ``replay_depth``."""
        if self.replay_depth <= 0:
            self.evicted_upto = seq
            return
        self.buffer.append((seq, frame))
        while len(self.buffer) > self.replay_depth:
            self.evicted_upto = self.buffer.popleft()[0]

    def replay_after(self, seq: int) -> list[bytes] | None:
        """Frames with ``s > seq`` in order; None if some were already evicted."""
        if seq < self.evicted_upto:
            return None
        return [frame for s, frame in self.buffer if s > seq]

    def expired(self, now: float, ttl: float) -> bool:
        return self.dead or (self.detached_at is not None and now - self.detached_at > ttl)


class SessionStore:
    """Every session of the bot, by id; expired ones are dropped on lookup."""

    def __init__(self, ttl: float, rng: random.Random) -> None:
        self.ttl, self._rng = ttl, rng
        self._sessions: dict[str, Session] = {}

    def create(self, **kwargs: object) -> Session:
        sid = f"{self._rng.getrandbits(128):032x}"
        session = Session(id=sid, **kwargs)  # type: ignore[arg-type]
        self._sessions[sid] = session
        return session

    def get(self, session_id: str, now: float) -> Session | None:
        session = self._sessions.get(session_id)
        if session is not None and session.expired(now, self.ttl):
            del self._sessions[session_id]
            session.dead = True
            return None
        return session

    def kill(self, session: Session) -> None:
        session.dead = True
        self._sessions.pop(session.id, None)

    def live(self, now: float) -> Iterator[Session]:
        for sid, session in list(self._sessions.items()):
            if session.expired(now, self.ttl):
                session.dead = True
                del self._sessions[sid]
            else:
                yield session

    def __len__(self) -> int:
        return len(self._sessions)
