"""Gateway commands over NATS request-reply, when the stream is on (``--stream-commands``).

``StreamCommands("nats://...")`` has the methods and replies of
:class:`shardctl.Commands`; a request goes to the subject ``<prefix>-commands`` (outside
the stream's ``<prefix>.>``, so requests are never stored) and one supervisor of the queue
group ``shardctl-supervisors`` answers it, routing it as its control channel does
(cluster/command_requests.py).

Wire: request ``{"name": ..., "args": {...}}`` (JSON) → reply ``{"ok", "error",
"replies"}``: the control channel's ``request`` and ``response`` bodies without their id
(the NATS reply subject pairs them).  Who may send: whoever NATS lets publish on the
subject -- set NATS permissions, which is why the supervisor serves it only when asked to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc
import orjson

from shardctl.errors import ProtocolError
from shardctl.ipc.commands_client import DEFAULT_TIMEOUT, CommandReply, Commands, replies
from shardctl.stream import _nats
from shardctl.stream.settings import DEFAULT_PREFIX, check_prefix

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger(__name__)

#: One supervisor of a group answers each request.
QUEUE: Final = "shardctl-supervisors"

Answer = Callable[[object, object], Awaitable[dict[str, Any]]]


def subject(prefix: str) -> str:
    return f"{prefix}-commands"


async def serve(nc: Client, prefix: str, answer: Answer, tg: anyio.abc.TaskGroup) -> None:
    """Answer requests on ``<prefix>-commands`` with ``answer(name, args)``, each in its own
    task of ``tg`` (a member fetch takes seconds; the others must not wait for it)."""
    async def on_request(msg: Msg) -> None:
        tg.start_soon(_respond, msg, answer, nc.max_payload)

    await nc.subscribe(subject(prefix), queue=QUEUE, cb=on_request)
    log.info("stream: gateway commands served on %s", subject(prefix))


async def _respond(msg: Msg, answer: Answer, max_payload: int) -> None:
    try:
        request = orjson.loads(msg.data)
        if not isinstance(request, dict):
            raise ValueError("not a JSON object")
        body = await answer(request.get("name"), request.get("args"))
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        body = {"ok": False, "error": f"a malformed request: {exc}", "replies": []}
    data = orjson.dumps(body)
    if len(data) > max_payload:
        data = orjson.dumps({"ok": False, "error": f"the reply is too large ({len(data)} "
                             "bytes over NATS max_payload)", "replies": []})
    if msg.reply:
        await msg.respond(data)


class StreamCommands(Commands):
    """``async with StreamCommands("nats://h:4222") as commands: await
    commands.update_voice(guild, channel)``: :class:`shardctl.Commands` over NATS."""

    def __init__(self, servers: str | Sequence[str], *, prefix: str = DEFAULT_PREFIX,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        urls = [servers] if isinstance(servers, str) else list(servers)
        self.servers = [u.strip() for part in urls for u in part.split(",")]
        self.endpoint = ",".join(self.servers)
        self.prefix = check_prefix(prefix)
        self.timeout = timeout
        self._nc: Client | None = None

    def __repr__(self) -> str:
        return f"<StreamCommands servers={self.endpoint!r} subject={subject(self.prefix)!r}>"

    async def __aenter__(self) -> StreamCommands:
        nats = _nats.require()

        async def error(exc: Exception) -> None:  # said once, below, not with a traceback
            log.debug("stream commands: NATS client error: %s", exc)

        try:
            with anyio.fail_after(self.timeout):
                self._nc = await nats.connect(servers=self.servers, name="shardctl commands",
                                              connect_timeout=max(1, int(self.timeout)),
                                              max_reconnect_attempts=-1, error_cb=error)
        except Exception as exc:
            why = str(exc) or f"nothing answered within {self.timeout:g} s"
            raise TimeoutError(f"cannot reach NATS at {self.endpoint}: {why}") from None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):  # a connection NATS already broke
                await nc.close()

    async def _request(self, name: str, args: dict[str, Any], *,
                       wait: float | None = None) -> list[CommandReply]:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        if self._nc is None:
            raise RuntimeError("use StreamCommands as `async with StreamCommands(...) as c`")
        wait = self.timeout if wait is None else wait
        try:
            msg = await self._nc.request(subject(self.prefix),
                                         orjson.dumps({"name": name, "args": args}),
                                         timeout=wait)
        except NoRespondersError:
            raise TimeoutError(f"no supervisor serves commands on {subject(self.prefix)} "
                               f"({self.endpoint}; run it with --stream-commands)") from None
        except NatsTimeout:
            raise TimeoutError(f"no answer on {subject(self.prefix)} within {wait:g} s"
                               ) from None
        try:
            body = orjson.loads(msg.data)
        except orjson.JSONDecodeError:
            raise ProtocolError("a command reply that is not JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError("a command reply that is not a JSON object")
        return replies(body)
