"""Gateway commands from any process: :class:`Commands`, a peer of the control channel.

A bot's consumer process (or ``shardctl send``) asks the supervisor to send op 3 (presence),
op 4 (voice state) or op 8 (request guild members); the supervisor routes each to the shard
that owns the guild, exactly as its in-process API does, and answers with every shard's
:class:`CommandReply`.  Only the ``operator`` role may send commands: the operator CURVE key,
or this OS user on the private ``ipc://`` endpoint.  Any other peer gets a refusal
(:class:`CommandRefusedError`), and no command goes to Discord.

Wire (see :mod:`shardctl.ipc.control`): ``request`` {id, name, args} → ``response`` {id, ok,
error, replies}.  ``ok`` false means the request itself was refused (role, a busy peer, a
bad argument) and ``error`` says why; otherwise ``replies`` holds one reply per shard
({shard, ok, error, retry_after, value}), a long one (a member list) in parts.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import anyio
import anyio.abc

from shardctl.errors import ProtocolError, ShardctlError
from shardctl.ipc.control import ControlClient
from shardctl.ipc.control_messages import Request
from shardctl.ipc.security import CurveClient, load_client

#: What the supervisor waits for a shard's reply, and a margin for the round trip.
DEFAULT_TIMEOUT: Final = 15.0
#: The command names a ``request`` may carry.
NAMES: Final = frozenset(
    {"update_status", "update_voice", "request_guild_members", "fetch_guild_members"})
#: Cluster operations a ``request`` may carry: answered with ``result`` (an object), not
#: per-shard ``replies``.
OPERATIONS: Final = frozenset({"reshard"})
#: How long a reshard may take before the client stops waiting (the new set IDENTIFYs at
#: the bucket pace first; it goes on in the supervisor regardless).
RESHARD_TIMEOUT: Final = 900.0


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The outcome of a routed command: truthy when sent; unpacks as ``ok, error``.

    ``retry_after``: seconds until the shard's outbound limiter would take the command (set
    when it refused it); ``value``: what the command returns (the members it fetched).
    """

    shard: int
    ok: bool
    error: str | None = None
    value: Any = None
    retry_after: float | None = None

    def __bool__(self) -> bool:
        return self.ok

    def __iter__(self) -> Any:
        return iter((self.ok, self.error))

    def to_body(self) -> dict[str, Any]:
        return {"shard": self.shard, "ok": self.ok, "error": self.error,
                "retry_after": self.retry_after, "value": self.value}

    @classmethod
    def from_body(cls, body: Any) -> CommandReply:
        if not isinstance(body, dict) or type(body.get("shard")) is not int:
            raise ProtocolError("a command reply without a shard")
        error, retry = body.get("error"), body.get("retry_after")
        return cls(body["shard"], body.get("ok") is True,
                   None if error is None else str(error), body.get("value"),
                   float(retry) if isinstance(retry, int | float) else None)


class CommandRefusedError(ShardctlError):
    """The supervisor refused the request: not an operator, too many at once, a bad value."""


class Commands:
    """``async with Commands(endpoint, keys=DIR) as commands: await commands.update_voice(...)``.

    ``endpoint``: the supervisor's control endpoint.  ``keys``: a CURVE key directory (its
    ``clients/operator`` keypair is used) or a :class:`CurveClient`; none on the private
    ``ipc://`` endpoint.  Every method raises :class:`TimeoutError` when the supervisor does
    not answer within ``timeout`` seconds, and :class:`CommandRefusedError` when it refuses.
    """

    def __init__(self, endpoint: str, *, keys: Path | str | CurveClient | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._curve = (keys if isinstance(keys, CurveClient) or keys is None
                       else load_client(Path(keys), "operator"))
        self._client: ControlClient | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._waiting: dict[str, tuple[anyio.Event, list[dict[str, Any]]]] = {}

    def __repr__(self) -> str:
        return f"<Commands endpoint={self.endpoint!r}>"

    async def __aenter__(self) -> Commands:
        self._client = ControlClient(self.endpoint, curve=self._curve)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._read, self._client)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._tg is not None and self._client is not None
        self._tg.cancel_scope.cancel()
        try:
            await self._tg.__aexit__(None, None, None)
        finally:
            self._client.close()
            self._tg = self._client = None

    async def update_status(self, presence: Mapping[str, Any], shard_id: int | None = None
                            ) -> list[CommandReply]:
        """Op 3 on one shard, or on every shard of the cluster (None): one reply each."""
        return await self._request("update_status",
                                   {"presence": dict(presence), "shard_id": shard_id})

    async def update_voice(self, guild_id: int | str, channel_id: int | str | None,
                           self_mute: bool = False, self_deaf: bool = False) -> CommandReply:
        """Op 4 on the shard that owns the guild; ``channel_id`` None leaves voice."""
        return (await self._request("update_voice", {
            "guild_id": str(guild_id), "channel_id": None if channel_id is None
            else str(channel_id), "self_mute": self_mute, "self_deaf": self_deaf}))[0]

    async def request_guild_members(self, guild_id: int | str, **options: Any) -> CommandReply:
        """Op 8; the chunks arrive as GUILD_MEMBERS_CHUNK events on the bus.  ``options``:
        query, limit, presences, user_ids, nonce."""
        return (await self._request("request_guild_members",
                                    {"guild_id": str(guild_id), **options}))[0]

    async def fetch_guild_members(self, guild_id: int | str, **options: Any) -> CommandReply:
        """Op 8, every chunk collected by the owning worker: the members in ``value``.
        ``options``: query, limit, presences, user_ids, timeout (for the chunks, 30 s)."""
        wait = self.timeout + float(options.get("timeout", 30.0))
        return (await self._request("fetch_guild_members",
                                    {"guild_id": str(guild_id), **options}, wait=wait))[0]

    async def reshard(self, shards: int | str = "auto", *, wait: float = RESHARD_TIMEOUT
                      ) -> dict[str, Any]:
        """Reshard the cluster to ``shards`` ("auto": Discord's recommendation); returns
        what it did (old_shards, new_shards, switched_at, overlap_events, retired_events).
        CommandRefusedError with the supervisor's reason when refused or abandoned."""
        body = await self._ask("reshard", {"shards": shards}, wait=wait)
        if body.get("ok") is not True:
            raise CommandRefusedError(str(body.get("error") or "the supervisor refused"))
        result = body.get("result")
        if not isinstance(result, dict):
            raise ProtocolError("a reshard response without a result")
        return result

    async def _request(self, name: str, args: dict[str, Any], *,
                       wait: float | None = None) -> list[CommandReply]:
        return replies(await self._ask(name, args, wait=wait))

    async def _ask(self, name: str, args: dict[str, Any], *,
                   wait: float | None = None) -> dict[str, Any]:
        if self._client is None:
            raise RuntimeError("use Commands as `async with Commands(...) as commands`")
        wait = self.timeout if wait is None else wait
        request_id = secrets.token_hex(8)
        done, box = anyio.Event(), list[dict[str, Any]]()
        self._waiting[request_id] = (done, box)
        try:
            with anyio.move_on_after(wait):
                # Inside the wait: with no supervisor connected a DEALER's send waits too.
                await self._client.send(Request(request_id, name, args))
                await done.wait()
        finally:
            del self._waiting[request_id]
        if not box:
            raise TimeoutError(f"no answer from a supervisor on {self.endpoint} within "
                               f"{wait:g} s")
        return box[0]

    async def _read(self, client: ControlClient) -> None:
        while True:
            message = await client.receive()
            if message.kind != "response":
                continue
            waiter = self._waiting.get(str(message.body.get("id")))
            if waiter is not None:
                waiter[1].append(message.body)
                waiter[0].set()


def replies(body: dict[str, Any]) -> list[CommandReply]:
    """The replies of a ``response`` body; CommandRefusedError if it says ``ok`` false."""
    if body.get("ok") is not True:
        raise CommandRefusedError(str(body.get("error") or "the supervisor refused the command"))
    replies = body.get("replies")
    if not isinstance(replies, list) or not replies:
        raise ProtocolError("a command response without replies")
    return [CommandReply.from_body(item) for item in replies]
