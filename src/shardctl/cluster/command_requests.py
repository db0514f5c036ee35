"""Gateway commands that other processes ask for (``request`` → ``response``, issue 15).

The supervisor's control loop must never wait on a command (a shard's reply takes up to
ten seconds, a member fetch longer): each accepted request runs as a task of the
supervisor's task group, at most :data:`MAX_RUNNING_PER_PEER` at once per peer, and its
answer goes out with the control channel's non-blocking send.  Only the ``operator`` role
may send commands; anyone else is answered with a refusal and nothing reaches a shard.
Arguments are checked here, by name and type, before any command is routed: a peer can
pass nothing to a worker that the in-process API would not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import anyio.abc

from shardctl import errors
from shardctl.cluster.planner import MAX_SHARDS
from shardctl.ipc.commands_client import NAMES, OPERATIONS, CommandReply
from shardctl.ipc.control import ControlServer, Incoming, MessageTooLargeError
from shardctl.ipc.control_messages import Response
from shardctl.ipc.security import Role

log = logging.getLogger(__name__)

#: Commands of one peer running at once; more are refused until one ends.
MAX_RUNNING_PER_PEER: Final = 8
#: Commands over the stream's NATS request-reply running at once (every process shares it).
MAX_RUNNING_STREAM: Final = 64
#: The longest member fetch a peer may ask for (seconds the chunks may take).
MAX_FETCH_TIMEOUT: Final = 120.0
_MEMBER_OPTIONS: Final = frozenset({"query", "limit", "presences", "user_ids"})


class CommandApi(Protocol):
    """The supervisor's in-process command methods (cluster/supervisor.py)."""

    async def update_status(self, presence: Mapping[str, Any], shard_id: int | None = None
                            ) -> list[CommandReply]: ...

    async def update_voice(self, guild_id: int | str, channel_id: int | str | None,
                           self_mute: bool = False, self_deaf: bool = False
                           ) -> CommandReply: ...

    async def request_guild_members(self, guild_id: int | str, **options: Any
                                    ) -> CommandReply: ...

    async def fetch_guild_members(self, guild_id: int | str, **options: Any
                                  ) -> CommandReply: ...

    async def reshard(self, shards: Any = "auto") -> Any: ...


Call = Callable[[], Awaitable[Any]]


class CommandRequests:
    """Checks, runs and answers ``request`` messages (module docstring)."""

    def __init__(self, api: CommandApi, *, per_peer: int = MAX_RUNNING_PER_PEER) -> None:
        self._api = api
        self._per_peer = per_peer
        self._running: dict[bytes, int] = {}
        #: Requests refused so far (role, busy, bad arguments).
        self.refused = 0

    def handle(self, control: ControlServer, tg: anyio.abc.TaskGroup, incoming: Incoming
               ) -> None:
        """Answer a refusal at once, or start the command in ``tg``; never waits."""
        peer, body = incoming.peer, incoming.message.body
        request_id = body.get("id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 32:
            raise ValueError("a request without a valid id")
        try:
            if incoming.role != Role.OPERATOR:
                raise _Refused("refused: gateway commands need the operator role (the "
                               "operator CURVE key, or this user on the ipc:// endpoint)")
            call = self._call(body.get("name"), body.get("args"))
            if self._running.get(peer, 0) >= self._per_peer:
                raise _Refused(f"busy: {self._per_peer} commands of this peer are still "
                               "running; retry when one has been answered")
        except _Refused as exc:
            self.refused += 1
            control.send(peer, Response(request_id, False, str(exc)))
            return
        self._running[peer] = self._running.get(peer, 0) + 1
        tg.start_soon(self._run, control, peer, request_id, call)

    async def _run(self, control: ControlServer, peer: bytes, request_id: str,
                   call: Call) -> None:
        try:
            try:
                result = await call()
            except errors.ShardctlError as exc:  # a guild id that is no snowflake, say
                control.send(peer, Response(request_id, False, str(exc)))
                return
            if hasattr(result, "to_body") and not isinstance(result, CommandReply):
                # a cluster operation's outcome (OPERATIONS): one object, no shard replies
                answer = Response(request_id, True, None, result=result.to_body())
            else:
                replies = result if isinstance(result, list) else [result]
                answer = Response(request_id, True, None, tuple(r.to_body() for r in replies))
            try:
                control.send(peer, answer)
            except MessageTooLargeError as exc:
                control.send(peer, Response(request_id, False,
                                            f"the reply is too large: {exc}"))
        finally:
            left = self._running.pop(peer, 1) - 1
            if left:
                self._running[peer] = left

    async def answer(self, name: object, args: object, *, peer: bytes = b"stream",
                     limit: int = MAX_RUNNING_STREAM) -> dict[str, Any]:
        """A request that came another way (the stream's NATS request-reply, whose
        permissions decide who may ask): the same checks and routing as :meth:`handle`;
        the response body without an id.  ``limit`` commands of ``peer`` run at once."""
        try:
            call = self._call(name, args)
            if self._running.get(peer, 0) >= limit:
                raise _Refused(f"busy: {limit} commands are still running; retry when one "
                               "has been answered")
        except _Refused as exc:
            self.refused += 1
            return {"ok": False, "error": str(exc), "replies": []}
        self._running[peer] = self._running.get(peer, 0) + 1
        try:
            result = await call()
        except errors.ShardctlError as exc:
            return {"ok": False, "error": str(exc), "replies": []}
        finally:
            left = self._running.pop(peer, 1) - 1
            if left:
                self._running[peer] = left
        replies = result if isinstance(result, list) else [result]
        return {"ok": True, "error": None, "replies": [r.to_body() for r in replies]}

    def _call(self, name: object, args: object) -> Call:
        if not isinstance(name, str) or name not in NAMES | OPERATIONS:
            raise _Refused(f"unknown command {str(name)[:32]!r}; expected one of "
                           f"{', '.join(sorted(NAMES | OPERATIONS))}")
        if not isinstance(args, dict):
            raise _Refused(f"{name}: args must be a JSON object")
        api = self._api
        if name == "reshard":
            _only(name, args, {"shards"})
            shards = args.get("shards", "auto")
            if shards != "auto" and (type(shards) is not int or not 1 <= shards <= MAX_SHARDS):
                raise _Refused(f"reshard: shards must be 'auto' or a count from 1 to "
                               f"{MAX_SHARDS}")
            return lambda: api.reshard(shards)
        if name == "update_status":
            presence, shard_id = args.get("presence"), args.get("shard_id")
            _only(name, args, {"presence", "shard_id"})
            if not isinstance(presence, dict):
                raise _Refused("update_status: presence must be a JSON object")
            if shard_id is not None and (type(shard_id) is not int or shard_id < 0):
                raise _Refused("update_status: shard_id must be a shard number or null")
            return lambda: api.update_status(presence, shard_id)
        guild_id = args.get("guild_id")
        if not isinstance(guild_id, str | int) or isinstance(guild_id, bool):
            raise _Refused(f"{name}: guild_id must be a snowflake")
        if name == "update_voice":
            _only(name, args, {"guild_id", "channel_id", "self_mute", "self_deaf"})
            channel = args.get("channel_id")
            mute, deaf = args.get("self_mute", False), args.get("self_deaf", False)
            if (channel is not None and not isinstance(channel, str | int)) or isinstance(
                    channel, bool) or type(mute) is not bool or type(deaf) is not bool:
                raise _Refused("update_voice: channel_id must be a snowflake or null, "
                               "self_mute and self_deaf true or false")
            return lambda: api.update_voice(guild_id, channel, mute, deaf)
        options = {k: v for k, v in args.items() if k != "guild_id"}
        if name == "request_guild_members":
            _only(name, args, {"guild_id", "nonce", *_MEMBER_OPTIONS})
            return lambda: api.request_guild_members(guild_id, **options)
        _only(name, args, {"guild_id", "timeout", *_MEMBER_OPTIONS})
        timeout = options.get("timeout", 30.0)
        if (not isinstance(timeout, int | float) or isinstance(timeout, bool)
                or not math.isfinite(timeout) or not 0 < timeout <= MAX_FETCH_TIMEOUT):
            raise _Refused(f"fetch_guild_members: timeout must be in (0, "
                           f"{MAX_FETCH_TIMEOUT:g}] seconds")
        return lambda: api.fetch_guild_members(guild_id, **options)


class _Refused(Exception):
    """Why a request is answered with a refusal (its text goes to the peer)."""


def _only(name: str, args: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise _Refused(f"{name}: unknown argument {unknown[0][:32]!r}; expected "
                       f"{', '.join(sorted(allowed))}")
