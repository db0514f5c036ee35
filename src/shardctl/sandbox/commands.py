"""What the sandbox sends: session starts (READY), resumes (replay), dispatch delivery, and the
answers to client commands op 3/4/8/31/43 (protocol §4, §5, §11)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Final

import orjson

from shardctl.gateway.intents import Intents
from shardctl.gateway.opcodes import Op
from shardctl.sandbox import routing, wire
from shardctl.sandbox.session import Session, dispatch_frame
from shardctl.sandbox.validate import (
    MembersRequest,
    Reject,
    validate_channel_info,
    validate_members_request,
    validate_presence,
    validate_soundboard,
    validate_voice,
)

if TYPE_CHECKING:
    from shardctl.sandbox.connection import Connection
    from shardctl.sandbox.server import Sandbox

#: GUILD_MEMBERS_CHUNK holds at most 1000 members (§11).
CHUNK_SIZE: Final = 1000
#: Prefix and user_ids requests return at most 100 members (§11).
MAX_QUERY_RESULTS: Final = 100
#: Not-found ids below this come back as JSON numbers (§11 quirk: not bigint-sized).
_NUMBER_ID_LIMIT: Final = 2**53


# -- delivery --------------------------------------------------------------------------------

async def deliver(sb: Sandbox, session: Session, t: str, d: bytes) -> int | None:
    """Give ``session`` the next ``s``, buffer the frame for replay, send it if attached.

    An attached session's ``s`` is taken once the frame can be written (its socket's send
    lock held), so a session that ended while we waited for the lock (op 9, a closing code)
    gets nothing: None, like a dead session.  Taken earlier, the dispatch once went out
    after the op 9 that ended its session, in a session nobody could resume: a message the
    sandbox called sent and no client could ever receive.
    """
    while (conn := session.conn) is not None:
        async with conn.lock:
            if session.conn is not conn:
                continue  # detached or resumed elsewhere while we waited
            if session.dead:
                return None
            seq, frame = _number(sb, session, t, d, conn.id)
            conn.note_dispatch(seq)
            await conn.send_unlocked(frame)
            return seq
    if session.dead:
        return None
    return _number(sb, session, t, d, None)[0]  # detached: kept for the RESUME's replay


def _number(sb: Sandbox, session: Session, t: str, d: bytes, conn_id: int | None
            ) -> tuple[int, bytes]:
    seq = session.next_seq()
    frame = dispatch_frame(seq, t, d)
    session.remember(seq, frame)
    if sb.config.record_dispatches:
        sb.recorder.add("dispatch", shard_id=session.shard_id, conn=conn_id,
                        session_id=session.id, seq=seq, t=t)
    return seq, frame


async def deliver_obj(sb: Sandbox, session: Session, t: str, d: Any) -> int | None:
    """Intent-filtered delivery of a Python payload (None when filtered out)."""
    bot = sb.config.bot_user_id
    if not routing.allowed(t, d, session.intents, bot_user_id=bot):
        return None
    if routing.needs_content_strip(t, d, session.intents, bot_user_id=bot):
        d = routing.strip_content(d)
    return await deliver(sb, session, t, orjson.dumps(d))


# -- READY and RESUMED ------------------------------------------------------------------------

def ready_payload(conn: Connection, session: Session) -> dict[str, Any]:
    sb, cfg = conn.sb, conn.sb.config
    d: dict[str, Any] = {
        "v": 10,
        "user": sb.world.bot_user(),
        "guilds": [sb.world.unavailable(g) for g in session.guilds],
        "session_id": session.id,
        "session_type": "normal",
        "resume_gateway_url": sb.resume_gateway_url,
        "application": {"id": str(cfg.application_id), "flags": cfg.application_flags},
        "private_channels": [], "relationships": [], "presences": [],
        "guild_join_requests": [], "geo_ordered_rtc_regions": ["sandbox"],
        "user_settings": {}, "auth": {}, "_trace": wire.TRACE,
    }
    if session.shard_sent:
        d["shard"] = [session.shard_id, session.num_shards]
    return d


async def start_session(conn: Connection, session: Session) -> None:
    """READY (``s = 1``) then one GUILD_CREATE per guild (§4, §13)."""
    sb = conn.sb
    presences = bool(session.intents & Intents.GUILD_PRESENCES)
    async with conn.lock:
        # Attach and number everything before the first await, so generator dispatches
        # queued behind the lock get later numbers than READY and the GUILD_CREATEs.
        attach(conn, session)
        ready_seq = session.next_seq()
        session.started = True
        frames = [dispatch_frame(ready_seq, "READY", orjson.dumps(ready_payload(conn, session)))]
        seqs, names = [ready_seq], ["READY"]
        for i, guild in enumerate(session.guilds):
            seq = session.next_seq()
            if i < sb.config.down_guilds:
                # §13: a guild still down gets GUILD_DELETE unavailable, GUILD_CREATE later.
                name, body = "GUILD_DELETE", orjson.dumps(sb.world.unavailable(guild))
                conn.arm(f"outage_end:{guild.id}", sb.now() + sb.config.down_duration)
            else:
                name, body = "GUILD_CREATE", orjson.dumps(sb.world.guild_create(
                    guild, presences=presences, large_threshold=session.large_threshold))
            frame = dispatch_frame(seq, name, body)
            names.append(name)
            session.remember(seq, frame)
            frames.append(frame)
            seqs.append(seq)
        conn.note_dispatch(seqs[-1])
        for i, (seq, frame) in enumerate(zip(seqs, frames, strict=True)):
            await conn.send_unlocked(frame, force_compress=i == 0)
            if sb.config.record_dispatches:
                conn.rec("dispatch", session_id=session.id, seq=seq, t=names[i])
    conn.rec("ready", session_id=session.id, seq=ready_seq, guilds=len(session.guilds))


async def resume_session(conn: Connection, session: Session, seq: int) -> None:
    """Replay ``s > seq`` in order with the original ``s``, then RESUMED with the next ``s``."""
    sb = conn.sb
    async with conn.lock:
        attach(conn, session)
        frames = session.replay_after(seq) or []
        replayed = [s for s, _ in session.buffer if s > seq]
        resumed_seq = session.next_seq()
        resumed = dispatch_frame(resumed_seq, "RESUMED",
                                 orjson.dumps({"_trace": wire.TRACE}))
        conn.note_dispatch(resumed_seq)
        for s, frame in zip(replayed, frames, strict=True):
            await conn.send_unlocked(frame)
            if sb.config.record_dispatches:
                conn.rec("dispatch", session_id=session.id, seq=s, replay=True)
        await conn.send_unlocked(resumed)
        if sb.config.record_dispatches:
            conn.rec("dispatch", session_id=session.id, seq=resumed_seq, t="RESUMED")
    conn.rec("resumed", session_id=session.id, seq=resumed_seq, replayed=len(frames))


def attach(conn: Connection, session: Session) -> None:
    session.conn, session.detached_at = conn, None
    conn.session, conn.authed, conn.shard_id = session, True, session.shard_id
    conn.op9_resumable = False
    conn.sb.attempts_after_fatal = None  # a session works again: the fatal streak is over
    for name in ("op9_idle", "op9_send"):
        conn.timers.pop(name, None)


# -- client commands --------------------------------------------------------------------------

async def handle(conn: Connection, op: int, d: Any, now: float) -> None:
    session = conn.session
    if session is None:  # authed sockets always carry a session
        return
    if op == Op.PRESENCE_UPDATE:
        conn.note(validate_presence(d))
        if not conn.presences.hit(now):
            detail = f"more than {conn.presences.limit} presence updates in " \
                     f"{conn.presences.per} s"
            if conn.sb.config.strict:
                raise Reject(4008, "presence_rate", detail)
            conn.violation("presence_rate", detail + " (dropped)")
    elif op == Op.VOICE_STATE_UPDATE:
        await voice(conn, session, d)
    elif op == Op.REQUEST_GUILD_MEMBERS:
        await members(conn, session, d, now)
    elif op == Op.REQUEST_SOUNDBOARD_SOUNDS:
        guilds = {g.id for g in session.guilds}
        for gid in validate_soundboard(d):
            if gid in guilds:
                await deliver(conn.sb, session, "SOUNDBOARD_SOUNDS", orjson.dumps(
                    {"guild_id": str(gid), "soundboard_sounds": []}))
    elif op == Op.REQUEST_CHANNEL_INFO:
        await channel_info(conn, session, d)


async def channel_info(conn: Connection, session: Session, d: Any) -> None:
    """Op 43 → one CHANNEL_INFO with only the requested fields (§11)."""
    gid, fields = validate_channel_info(d)
    guild = next((g for g in session.guilds if g.id == gid), None)
    if guild is None:
        return
    info: dict[str, Any] = {"id": str(guild.voice_channel_id)}
    if "status" in fields:
        info["status"] = ""
    if "voice_start_time" in fields:
        info["voice_start_time"] = None
    await deliver(conn.sb, session, "CHANNEL_INFO", orjson.dumps(
        {"guild_id": str(gid), "channels": [info]}))


async def voice(conn: Connection, session: Session, d: Any) -> None:
    """Op 4 → VOICE_STATE_UPDATE then VOICE_SERVER_UPDATE; full channels get nothing."""
    req = validate_voice(d)
    conn.note(req.notes)
    sb = conn.sb
    if not any(g.id == req.guild_id for g in session.guilds):
        return
    if req.channel_id is not None and sb.config.full_voice_channels:
        return
    member = sb.world.member(0)
    await deliver_obj(sb, session, "VOICE_STATE_UPDATE", {
        "guild_id": str(req.guild_id),
        "channel_id": None if req.channel_id is None else str(req.channel_id),
        "user_id": str(sb.config.bot_user_id), "member": member,
        "session_id": session.id, "deaf": False, "mute": False,
        "self_deaf": req.self_deaf, "self_mute": req.self_mute, "self_video": False,
        "self_stream": False, "suppress": False, "request_to_speak_timestamp": None})
    if req.channel_id is not None:
        await deliver(sb, session, "VOICE_SERVER_UPDATE", orjson.dumps({
            "token": secrets.token_hex(8), "guild_id": str(req.guild_id),
            "endpoint": "sandbox-voice.local:443"}))


async def members(conn: Connection, session: Session, d: Any, now: float) -> None:
    """Op 8 → GUILD_MEMBERS_CHUNK pages, or RATE_LIMITED, or silence (§11, §9)."""
    sb = conn.sb
    req = validate_members_request(d, strict=sb.config.strict)
    conn.note(req.notes)
    guild = next((g for g in session.guilds if g.id == req.guild_id), None)
    if guild is None:
        conn.rec("members_ignored", reason="guild not on this session", guild_id=req.guild_id)
        return
    if req.all_members and not await _all_members_allowed(conn, session, req, guild.id, now):
        return
    indices, not_found = _select(sb, req, guild.member_count)
    presences = req.presences and bool(session.intents & Intents.GUILD_PRESENCES)
    pages = [indices[i:i + CHUNK_SIZE] for i in range(0, len(indices), CHUNK_SIZE)] or [[]]
    for index, page in enumerate(pages):
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id), "members": [sb.world.member(i) for i in page],
            "chunk_index": index, "chunk_count": len(pages)}
        if not_found and index == 0:
            chunk["not_found"] = not_found
        if presences:
            chunk["presences"] = [sb.world.presence(i, guild.id) for i in page]
        if req.nonce is not None:
            chunk["nonce"] = req.nonce
        await deliver(sb, session, "GUILD_MEMBERS_CHUNK", orjson.dumps(chunk))


async def _all_members_allowed(conn: Connection, session: Session, req: MembersRequest,
                               guild_id: int, now: float) -> bool:
    """All members needs GUILD_MEMBERS (else silence) and 1 per guild per 30 s (§9, §11)."""
    if not session.intents & Intents.GUILD_MEMBERS:
        conn.rec("members_ignored", reason="no GUILD_MEMBERS intent", guild_id=guild_id)
        return False
    retry = conn.sb.member_limiter.retry_after(guild_id, now)
    if retry <= 0:
        return True
    meta: dict[str, Any] = {"guild_id": str(guild_id)}
    if req.nonce is not None:
        meta["nonce"] = req.nonce
    await deliver(conn.sb, session, "RATE_LIMITED", orjson.dumps(
        {"opcode": 8, "retry_after": round(retry, 3), "meta": meta}))
    return False


def _select(sb: Sandbox, req: MembersRequest, member_count: int
            ) -> tuple[list[int], list[int | str]]:
    """Member indices answering ``req`` and the not-found ids (non-bigint ones as numbers)."""
    world = sb.world
    if req.all_members:
        return list(range(member_count)), []
    if req.query is not None:
        cap = MAX_QUERY_RESULTS if req.limit == 0 else min(req.limit, MAX_QUERY_RESULTS)
        prefix = req.query.lower()
        return [i for i in range(member_count)
                if world.username(i).lower().startswith(prefix)][:cap], []
    indices: list[int] = []
    not_found: list[int | str] = []
    for raw in req.user_ids or ():
        index = world.user_index(int(raw))
        if index is not None and index < member_count:
            indices.append(index)
        else:
            value = int(raw)
            not_found.append(value if value < _NUMBER_ID_LIMIT else str(value))
    return indices, not_found


# -- availability -----------------------------------------------------------------------------

async def guild_down(conn: Connection, guild_id: int) -> bool:
    session = conn.session
    if session is None or not any(g.id == guild_id for g in session.guilds):
        return False
    await deliver_obj(conn.sb, session, "GUILD_DELETE",
                      {"id": str(guild_id), "unavailable": True})
    return True


async def guild_back(conn: Connection, guild_id: int) -> None:
    session = conn.session
    guild = conn.sb.world.guilds.get(guild_id)
    if session is None or guild is None:
        return
    presences = bool(session.intents & Intents.GUILD_PRESENCES)
    await deliver_obj(conn.sb, session, "GUILD_CREATE", conn.sb.world.guild_create(
        guild, presences=presences, large_threshold=session.large_threshold))
