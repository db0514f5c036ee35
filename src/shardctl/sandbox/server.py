"""The Sandbox: one port serving REST and the gateway, shared bot-wide state, fault injection.

``async with Sandbox(cfg) as sb`` binds the port, starts the traffic generator in a task group
the sandbox owns, and on exit closes every socket and stops every task.
"""

from __future__ import annotations

import hmac
import logging
import math
import random
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import Server, ServerConnection, serve

from shardctl.gateway.intents import Intents
from shardctl.sandbox.commands import deliver, deliver_obj
from shardctl.sandbox.config import SandboxConfig
from shardctl.sandbox.connection import Connection, StampedServerConnection
from shardctl.sandbox.faults import FaultLike, ScheduledFault, parse_fault
from shardctl.sandbox.fixtures import MessageFactory, World
from shardctl.sandbox.record import Record, Recorder, Violation
from shardctl.sandbox.rest import RestApi, parse_query
from shardctl.sandbox.routing import guild_id_of, recipients
from shardctl.sandbox.rules import IdentifyPacer, MemberRequestLimiter, SessionBudget
from shardctl.sandbox.session import Session, SessionStore

log = logging.getLogger("shardctl.sandbox")


class Sandbox:
    """A local Discord gateway + REST emulator (see gateway-protocol.md §16)."""

    def __init__(self, config: SandboxConfig | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, reuse_port: bool = False,
                 resume_port: int | None = None) -> None:
        """``reuse_port``: share ``port`` with other processes (``SO_REUSEPORT``: the kernel
        spreads new connections over them); ``resume_port``: also listen there (0: any free
        port) and name it in ``resume_gateway_url``, so a RESUME reaches this process (a fleet
        member, :mod:`shardctl.sandbox.fleet`)."""
        self.config = cfg = config or SandboxConfig()
        self.host, self.port = host, port
        self._reuse_port = reuse_port
        self.resume_port = resume_port
        self.rng = random.Random(cfg.seed)
        #: Draws each client frame's arrival jitter (its own stream: session ids stay put).
        self.arrival_rng = random.Random(cfg.seed)
        self.recorder = Recorder()
        self.world = World(shard_count=cfg.shard_count, guilds_per_shard=cfg.guilds_per_shard,
                           members_per_guild=cfg.members_per_guild,
                           bot_user_id=cfg.bot_user_id, bot_username=cfg.bot_username)
        self.messages = MessageFactory(self.world)
        self.sessions = SessionStore(cfg.session_ttl, self.rng)
        self.pacer = IdentifyPacer(cfg.max_concurrency, cfg.identify_interval)
        self.budget = SessionBudget(cfg.session_start_total, cfg.initial_remaining,
                                    cfg.session_start_window)
        self.member_limiter = MemberRequestLimiter(cfg.member_request_window)
        self.connections: set[Connection] = set()
        #: Privileged intents enabled "in the portal"; :meth:`disable_intents` changes it.
        self.privileged_intents = cfg.privileged_intents
        #: When each shard last got op 9 false (checklist 34 measures the re-identify delay).
        self.last_op9: dict[int, float] = {}
        #: Shards that ever started a session, per shard count (bucket-order warnings).
        self.identified_shards: dict[int, set[int]] = {}
        #: A fleet member sees only its share of the IDENTIFYs: the fleet checks their order
        #: over all members (:func:`shardctl.sandbox.fleet.order_warnings`).
        self.order_checked_elsewhere = False
        #: IDENTIFY/RESUME attempts since the last fatal close (None: none yet).
        self.attempts_after_fatal: int | None = None
        self.stopping = False
        #: What ``GET /gateway/bot`` recommends now (:meth:`recommend_shards` changes it).
        self.recommended_shards = cfg.shard_count
        #: IDENTIFYs with fewer shards are closed 4011 (0: only the guild cap decides).
        self.required_shards = 0
        #: Guild routing while two shard counts run (``SandboxConfig.routing``).
        self.routing = cfg.routing
        #: Until when every websocket upgrade is refused (a gateway outage, fault
        #: ``refuse_connections``).
        self.refusing_until = -math.inf
        self._scheduled: list[ScheduledFault] = list(cfg.faults)
        self._next_conn = 0
        self._server: Server | None = None
        self._resume_server: Server | None = None
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._rest = RestApi(self)

    # -- addresses --------------------------------------------------------------------------

    @property
    def _authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{self._authority}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self._authority}/"

    @property
    def resume_gateway_url(self) -> str:
        host = self.config.resume_host
        port = self.port if self.resume_port is None else self.resume_port
        authority = (f"{self._authority.rsplit(':', 1)[0]}:{port}" if host is None
                     else f"{host}:{port}")
        return f"ws://{authority}{self.config.resume_path}"

    # -- records ----------------------------------------------------------------------------

    @property
    def record(self) -> list[Record]:
        return self.recorder.records

    @property
    def violations(self) -> list[Violation]:
        return self.recorder.violations

    def records(self, kind: str, shard_id: int | None = None) -> list[Record]:
        return self.recorder.of(kind, shard_id)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,  # noqa: ASYNC109 - the shared spec's signature
    ) -> None:
        await self.recorder.wait_for(predicate, timeout)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            self._server = await serve(
                self._handle, self.host, self.port, reuse_port=self._reuse_port,
                **self._serve_options())
            stack.push_async_callback(self._shutdown)
            self.port = self._server.sockets[0].getsockname()[1]
            if self.resume_port is not None:
                self._resume_server = await serve(self._handle, self.host, self.resume_port,
                                                  **self._serve_options())
                self.resume_port = self._resume_server.sockets[0].getsockname()[1]
            self._tg.start_soon(self._traffic)
            self._stack = stack.pop_all()
        log.info("sandbox listening: api %s gateway %s", self.api_url, self.gateway_url)
        return self

    def _serve_options(self) -> dict[str, Any]:
        return {"process_request": self._rest, "compression": None, "ping_interval": None,
                "close_timeout": 2.0, "max_size": 1 << 20, "server_header": "shardctl-sandbox",
                "create_connection": StampedServerConnection}

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        # The body's own exception propagates as itself (not wrapped in an ExceptionGroup by
        # our task group): shut down as on a clean exit, then let it continue.
        await stack.__aexit__(None, None, None)
        return None

    async def _shutdown(self) -> None:
        self.stopping = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        for server in (self._server, self._resume_server):
            if server is not None:
                server.close()
                with anyio.CancelScope(shield=True):
                    await server.wait_closed()

    def spawn(self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> None:
        assert self._tg is not None, "the sandbox is not running"
        self._tg.start_soon(func, *args)

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path, query = parse_query(ws.request.path)
        kind = "resume" if path == self.config.resume_path else "connect"
        self._next_conn += 1
        conn = Connection(self, ws, self._next_conn, kind, query)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            if conn.session is not None:
                conn.detach(kill=False)

    # -- shared rules -----------------------------------------------------------------------

    @staticmethod
    def now() -> float:
        return anyio.current_time()

    def token_ok(self, token: str) -> bool:
        return hmac.compare_digest(token.encode(), self.config.token.encode()) \
            and not self.budget.revoked

    async def token_reset(self, culprit: Connection) -> None:
        """§15: going past ``total`` closes every session 4003 and revokes the token."""
        self.budget.revoked = True
        self.recorder.add("token_reset", shard_id=culprit.shard_id, conn=culprit.id)
        self.recorder.add("owner_emailed", detail="session start limit exceeded; token reset")
        for conn in list(self.connections):
            if conn is not culprit and not conn.closed:
                self.spawn(conn.close, 4003, "token reset")
        for session in list(self.sessions.live(self.now())):
            self.sessions.kill(session)
        await culprit.close(4003, "token reset")

    async def disable_intents(self, mask: int) -> int:
        """Turn intents off "in the portal": sessions using them are closed 4003 (§12, §15).

        Reconnecting with them still set then gets 4014.  Returns the sockets closed.
        """
        self.privileged_intents &= ~mask
        hit = 0
        for session in list(self.sessions.live(self.now())):
            if session.intents & mask:
                conn = session.conn
                self.sessions.kill(session)
                if conn is not None and not conn.closed:
                    hit += 1
                    await conn.close(4003, "intents changed")
        return hit

    def recommend_shards(self, count: int, *, require: bool = False) -> None:
        """The bot grew: ``GET /gateway/bot`` recommends ``count`` shards from now on.

        Guilds stay where they are: with ``routing="every"`` every session keeps receiving
        the guilds its own ``[shard_id, num_shards]`` owns (:meth:`broadcast`), whatever the
        count, as on Discord, where sessions of an old and a new count run side by side
        during a reshard; with ``routing="newest"`` a new count's sessions take their guilds
        over from their READY on.  ``require``: an IDENTIFY with fewer shards is closed 4011
        (sharding required); sessions already running are left alone.
        """
        if count < 1:
            raise ValueError("a shard count is at least 1")
        self.recommended_shards = count
        self.required_shards = count if require else 0
        self.recorder.add("recommend_shards", count=count, require=require)

    def refuse_connections(self, duration: float, now: float) -> None:
        """Refuse every websocket upgrade with HTTP 503 for ``duration`` seconds."""
        self.refusing_until = max(self.refusing_until, now + duration)

    def take_scheduled(self, trigger: str, shard_id: int | None) -> list[ScheduledFault]:
        out = [s for s in self._scheduled if s.trigger == trigger
               and (trigger == "connect" or s.shard_id is None or s.shard_id == shard_id)]
        self._scheduled = [s for s in self._scheduled if not (s in out and s.once)]
        return out

    def schedule(self, item: ScheduledFault) -> None:
        """Add a scheduled fault at run time (same meaning as ``SandboxConfig.faults``)."""
        self._scheduled.append(item)

    # -- driving the clients ----------------------------------------------------------------

    def live_connections(self, shard_id: int | None) -> list[Connection]:
        return sorted((c for c in self.connections if not c.closed
                       and (shard_id is None or c.shard_id == shard_id)), key=lambda c: c.id)

    async def inject(self, shard_id: int | None, fault: FaultLike) -> int:
        """Provoke ``fault`` now on every open socket of ``shard_id`` (None: all sockets).

        Returns how many sockets it hit; LookupError when none matched.
        """
        parsed = parse_fault(fault)
        targets = self.live_connections(shard_id)
        if not targets:
            raise LookupError(f"no open connection for shard {shard_id}")
        now = self.now()
        for conn in targets:
            await conn.apply(parsed, now)
        return len(targets)

    def shard_sessions(self, shard_id: int) -> list[Session]:
        return [s for s in self.started_sessions(self.now()) if s.shard_id == shard_id]

    def started_sessions(self, now: float) -> list[Session]:
        """Live sessions that may receive dispatches (READY numbered)."""
        return [s for s in self.sessions.live(now) if s.started]

    async def dispatch(self, shard_id: int, t: str, d: Any) -> list[int]:
        """Push dispatch ``t`` to every live session of ``shard_id`` (intent-filtered).

        Detached sessions buffer it for replay.  Returns the ``s`` given in each session.
        """
        seqs: list[int] = []
        for session in self.shard_sessions(shard_id):
            seq = await deliver_obj(self, session, t, d)
            if seq is not None:
                seqs.append(seq)
        return seqs

    async def broadcast(self, t: str, d: Any) -> dict[str, int]:
        """Route ``t`` by ``guild_id`` (else shard 0) under :attr:`routing`: to every session
        whose own ``[k, N]`` owns it, like Discord, or only to the newest count's owner."""
        out: dict[str, int] = {}
        for session in recipients(self.started_sessions(self.now()), guild_id_of(d),
                                  self.routing):
            seq = await deliver_obj(self, session, t, d)
            if seq is not None:
                out[session.id] = seq
        return out

    def inject_rest_429(self, count: int = 1) -> None:
        self._rest.pending_429 += count

    def inject_rest_error(self, status: int = 503, count: int = 1) -> None:
        """The next ``count`` ``GET /gateway/bot`` answer ``status`` (e.g. 500, 502, 503)."""
        self._rest.pending_errors += [status] * count

    # -- traffic generator ------------------------------------------------------------------

    async def _traffic(self) -> None:
        rate = self.config.dispatch_rate
        if rate <= 0:
            return
        tick = min(0.05, max(0.002, 1.0 / rate))
        while True:
            await self._generate(self.now(), rate)
            await anyio.sleep(tick)

    async def _generate(self, now: float, rate: float) -> None:
        total = self.config.dispatch_total
        for session in self.started_sessions(now):
            if not session.guilds or not session.intents & Intents.GUILD_MESSAGES:
                continue
            target = int((now - session.created_at) * rate)
            if total:
                target = min(target, total)
            content = bool(session.intents & Intents.MESSAGE_CONTENT)
            for _ in range(max(0, target - session.generated)):
                if session.dead:
                    break
                guild = session.guilds[session.generated % len(session.guilds)]
                session.generated += 1
                await deliver(self, session, "MESSAGE_CREATE",
                              self.messages.encode(guild, content=content))

