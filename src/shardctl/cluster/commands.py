"""Commands routed to the worker that runs a shard, and the wait for its reply."""

from __future__ import annotations

import secrets
from typing import Any, Final

import anyio

from shardctl.ipc.commands_client import CommandReply
from shardctl.ipc.control import ControlServer
from shardctl.ipc.control_messages import Command

# CommandReply lives with the client of other processes (ipc/), which cannot import cluster/.
__all__ = ["COMMAND_TIMEOUT", "CommandReply", "CommandRouter"]

#: Commands wait this long for the worker's reply.
COMMAND_TIMEOUT: Final = 10.0


class CommandRouter:
    """Sends ``command`` messages and matches each ``reply`` to its waiter by id."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[anyio.Event, list[dict[str, Any]]]] = {}

    def on_reply(self, body: dict[str, Any]) -> None:
        waiter = self._waiting.get(str(body["id"]))
        if waiter is not None:
            waiter[1].append(body)
            waiter[0].set()

    async def send(self, control: ControlServer | None, peer: bytes | None, shard_id: int,
                   name: str, args: dict[str, Any], *,
                   wait: float = COMMAND_TIMEOUT) -> CommandReply:
        if peer is None or control is None:
            return CommandReply(shard_id, False, f"the worker of shard {shard_id} is not running")
        command_id = secrets.token_hex(8)
        done, box = anyio.Event(), list[dict[str, Any]]()
        self._waiting[command_id] = (done, box)
        try:
            sent = control.send(peer, Command(command_id, shard_id, name, args))
            if not sent:
                return CommandReply(shard_id, False, f"the worker of shard {shard_id} is gone "
                                    "or not reading its control channel")
            with anyio.move_on_after(wait):
                await done.wait()
        finally:
            del self._waiting[command_id]
        if not box:
            return CommandReply(shard_id, False, f"no reply from shard {shard_id} in {wait:g} s")
        reply = box[0]
        error, retry = reply.get("error"), reply.get("retry_after")
        if isinstance(retry, int | float) and not isinstance(retry, bool):
            # The shard's outbound limiter refused it: say when it would be taken.
            error = f"rate limited: retry after {retry:.2f} s ({error})"
        else:
            retry = None
        return CommandReply(shard_id, bool(reply.get("ok")), error, reply.get("value"),
                            retry)
