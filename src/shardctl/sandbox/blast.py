"""Blast: a pre-compressed MESSAGE_CREATE stream sent as fast as each socket drains.

For throughput benchmarks the sandbox must not be the bottleneck, so the work of making the
stream (numbering, JSON, transport compression, WebSocket framing) happens before the clock
starts: :meth:`Blast.run` prepares every socket's frames while holding that socket's send lock,
sets ``prepared``, waits for :meth:`Blast.go`, then writes the frames to the transport in
large chunks, pausing only when the transport asks it to (flow control).

The lock is held from the first compressed frame to the last written one because the
compression context is shared with everything else the socket sends: a HEARTBEAT_ACK
compressed in between would corrupt the client's inflater.  Keep blasts shorter than the
heartbeat interval.  A heartbeat that arrives meanwhile is ACKed only after the blast, and
the socket says nothing while the blast is prepared: a client that gives up on a silent
socket sooner than that (shardctl's workers do after ~3 s at Discord's interval) closes it
and RESUMEs.  Discord would replay the whole blast then; give the sandbox a
``replay_buffer`` that holds it, or that RESUME finds it evicted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
from websockets.protocol import State

from shardctl.gateway.intents import Intents
from shardctl.sandbox.compress import compress_payload
from shardctl.sandbox.session import Session, dispatch_frame

if TYPE_CHECKING:
    from shardctl.sandbox.connection import Connection
    from shardctl.sandbox.server import Sandbox

#: Bytes handed to the transport per write: big enough that Python costs vanish per event.
CHUNK_BYTES: Final = 64 * 1024
_OP_BINARY: Final = 0x82
_OP_TEXT: Final = 0x81


def ws_frame(payload: bytes, *, text: bool) -> bytes:
    """One unmasked, unfragmented server → client WebSocket frame (RFC 6455 §5.2)."""
    first = _OP_TEXT if text else _OP_BINARY
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


@dataclass(slots=True)
class Blast:
    """``count`` MESSAGE_CREATE per live session (of ``shard_ids``, None: all).

    ``sent`` maps shard id → (first s, last s) once prepared; ``finished`` maps shard id →
    the loop time its last byte was handed to the transport.
    """

    sb: Sandbox
    count: int
    shard_ids: frozenset[int] | None = None
    prepared: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    sent: dict[int, tuple[int, int]] = field(default_factory=dict)
    finished: dict[int, float] = field(default_factory=dict)
    started_at: float | None = None
    _go: anyio.Event = field(default_factory=anyio.Event)
    _pending: int = 0

    def go(self) -> None:
        """Start writing (after ``prepared``)."""
        self.started_at = anyio.current_time()
        self._go.set()

    async def run(self) -> None:
        sessions = [s for s in self.sb.sessions.live(self.sb.now())
                    if s.conn is not None and not s.conn.closed and s.guilds
                    and s.intents & Intents.GUILD_MESSAGES
                    and (self.shard_ids is None or s.shard_id in self.shard_ids)]
        self._pending = len(sessions)
        if not sessions:
            self.prepared.set()
        try:
            async with anyio.create_task_group() as tg:
                for session in sessions:
                    assert session.conn is not None
                    tg.start_soon(self._one, session, session.conn)
        finally:
            self.prepared.set()
            self.done.set()

    async def _one(self, session: Session, conn: Connection) -> None:
        sb = self.sb
        content = bool(session.intents & Intents.MESSAGE_CONTENT)
        async with conn.lock:
            chunks = self._prepare(session, conn, content)
            self._pending -= 1
            if self._pending == 0:
                self.prepared.set()
            await self._go.wait()
            transport = conn.ws.transport
            for chunk in chunks:
                # A connection whose closing handshake began (the client closed it, as a
                # worker stopping in a rolling restart does) takes no more data frames, and
                # its transport may be half-closed already; the session replays what was
                # not written when it RESUMEs (the frames are remembered above).
                if conn.closed or transport.is_closing() or conn.ws.state is not State.OPEN:
                    break
                transport.write(chunk)
                await conn.ws.drain()
            self.finished[session.shard_id] = anyio.current_time()
        sb.recorder.add("blast", shard_id=session.shard_id, conn=conn.id,
                        session_id=session.id, first=self.sent[session.shard_id][0],
                        last=self.sent[session.shard_id][1])

    def _prepare(self, session: Session, conn: Connection, content: bool) -> list[bytes]:
        messages = self.sb.messages
        chunks: list[bytes] = []
        pending: list[bytes] = []
        size = 0
        first = session.seq + 1
        for i in range(self.count):
            guild = session.guilds[i % len(session.guilds)]
            seq = session.next_seq()
            frame = dispatch_frame(seq, "MESSAGE_CREATE", messages.encode(guild, content=content))
            session.remember(seq, frame)
            for wire_frame in _encode(conn, frame):
                pending.append(wire_frame)
                size += len(wire_frame)
            if size >= CHUNK_BYTES:
                chunks.append(b"".join(pending))
                pending, size = [], 0
        if pending:
            chunks.append(b"".join(pending))
        session.generated += self.count
        conn.note_dispatch(session.seq)
        self.sent[session.shard_id] = (first, session.seq)
        return chunks


def _encode(conn: Connection, frame: bytes) -> list[bytes]:
    """The wire frames ``conn.send_unlocked(frame)`` would write, in the same context."""
    if conn.compressor is not None:
        return [ws_frame(m, text=False) for m in conn.compressor.compress(frame)]
    if conn.payload_compress and len(frame) >= conn.sb.config.payload_compress_threshold:
        return [ws_frame(compress_payload(frame), text=False)]
    return [ws_frame(frame, text=True)]
