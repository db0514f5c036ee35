"""The supervisor's side of commands from other processes (cluster/command_requests.py):
who is refused, which arguments never reach a shard, and the bound per peer.  A real
control socket pair; a fake in place of the supervisor's command methods."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import zmq.asyncio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shardctl.cluster.command_requests import CommandRequests
from shardctl.errors import ConfigurationError
from shardctl.ipc.commands_client import NAMES, CommandReply
from shardctl.ipc.control import ControlClient, ControlMessage, ControlServer, Incoming
from shardctl.ipc.control_messages import Message, to_wire
from shardctl.ipc.security import Role

pytestmark = pytest.mark.anyio


@dataclass
class FakeApi:
    """Records calls; ``update_voice`` waits for ``release`` (a command in flight)."""

    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    release: anyio.Event = field(default_factory=anyio.Event)

    async def update_status(self, presence: Mapping[str, Any], shard_id: int | None = None
                            ) -> list[CommandReply]:
        self.calls.append(("update_status", (dict(presence), shard_id), {}))
        return [CommandReply(0, True), CommandReply(1, False, "shard 1 is not connected")]

    async def update_voice(self, guild_id: int | str, channel_id: int | str | None,
                           self_mute: bool = False, self_deaf: bool = False) -> CommandReply:
        self.calls.append(("update_voice", (guild_id, channel_id, self_mute, self_deaf), {}))
        await self.release.wait()
        return CommandReply(3, True)

    async def request_guild_members(self, guild_id: int | str, **options: Any
                                    ) -> CommandReply:
        self.calls.append(("request_guild_members", (guild_id,), options))
        return CommandReply(0, True)

    async def fetch_guild_members(self, guild_id: int | str, **options: Any) -> CommandReply:
        self.calls.append(("fetch_guild_members", (guild_id,), options))
        if guild_id == "x":
            raise ConfigurationError("guild_id must be an int or a string of digits")
        return CommandReply(0, True, value=[{"user": {"id": "1"}}] * 50_000)


@dataclass
class Wire:
    server: ControlServer
    client: ControlClient
    requests: CommandRequests
    api: FakeApi
    tg: anyio.abc.TaskGroup

    async def ask(self, body: dict[str, Any], role: Role | None = Role.OPERATOR) -> None:
        """Send a request; the supervisor handles it as if ``role`` sent it."""
        await self.client.send("request", body)
        incoming = await self.server.receive()
        self.requests.handle(self.server, self.tg, replace(incoming, role=role))

    async def answer(self) -> ControlMessage:
        with anyio.fail_after(5):
            return await self.client.receive()


@asynccontextmanager
async def wire(tmp_path: Path, per_peer: int = 8) -> AsyncIterator[Wire]:
    context = zmq.asyncio.Context()
    server = ControlServer(f"ipc://{tmp_path}/control", context=context)
    client = ControlClient(server.endpoint, context=context)
    api = FakeApi()
    try:
        async with anyio.create_task_group() as tg:
            yield Wire(server, client, CommandRequests(api, per_peer=per_peer), api, tg)
            api.release.set()
    finally:
        client.close()
        server.close()
        context.term()


VOICE = {"name": "update_voice", "args": {"guild_id": "81", "channel_id": "9",
                                          "self_mute": False, "self_deaf": False}}


@pytest.mark.parametrize("role", [None, Role.WORKER, Role.CONSUMER, Role.SUPERVISOR])
async def test_only_operators_get_a_command_sent(tmp_path: Path, role: Role | None) -> None:
    async with wire(tmp_path) as w:
        await w.ask({"id": "a1", **VOICE}, role=role)
        answer = await w.answer()
        assert answer.kind == "response"
        assert answer.body["id"] == "a1" and answer.body["ok"] is False
        assert "operator role" in answer.body["error"] and answer.body["replies"] == []
        assert w.api.calls == [] and w.requests.refused == 1


async def test_an_operator_gets_every_shard_reply(tmp_path: Path) -> None:
    async with wire(tmp_path) as w:
        await w.ask({"id": "s1", "name": "update_status",
                     "args": {"presence": {"status": "idle"}, "shard_id": None}})
        body = (await w.answer()).body
        assert body["ok"] is True and body["id"] == "s1"
        assert [CommandReply.from_body(r) for r in body["replies"]] == [
            CommandReply(0, True), CommandReply(1, False, "shard 1 is not connected")]
        assert w.api.calls == [("update_status", ({"status": "idle"}, None), {})]


async def test_a_member_list_larger_than_one_message_arrives_whole(tmp_path: Path) -> None:
    async with wire(tmp_path) as w:
        await w.ask({"id": "m1", "name": "fetch_guild_members",
                     "args": {"guild_id": "81", "query": "", "limit": 0, "timeout": 5}})
        body = (await w.answer()).body  # the client joined the parts
        assert len(body["replies"][0]["value"]) == 50_000
        assert w.api.calls == [("fetch_guild_members", ("81",),
                                {"query": "", "limit": 0, "timeout": 5})]


async def test_an_error_of_the_command_is_the_answer(tmp_path: Path) -> None:
    async with wire(tmp_path) as w:
        await w.ask({"id": "e1", "name": "fetch_guild_members", "args": {"guild_id": "x"}})
        body = (await w.answer()).body
        assert body["ok"] is False and "string of digits" in body["error"]


@pytest.mark.parametrize(("name", "args", "why"), [
    ("update_everything", {}, "unknown command"),
    (None, {}, "unknown command"),
    ("update_voice", [], "args must be a JSON object"),
    ("update_voice", {"guild_id": "81", "channel_id": "9", "token": "x"}, "unknown argument"),
    ("update_voice", {"guild_id": True, "channel_id": "9"}, "guild_id"),
    ("update_voice", {"guild_id": ["81"], "channel_id": "9"}, "guild_id"),
    ("update_voice", {"guild_id": "81", "channel_id": False}, "channel_id"),
    ("update_voice", {"guild_id": "81", "channel_id": "9", "self_mute": "yes"}, "self_mute"),
    ("update_status", {"presence": "idle"}, "presence"),
    ("update_status", {"presence": {}, "shard_id": True}, "shard_id"),
    ("update_status", {"presence": {}, "shard_id": -1}, "shard_id"),
    ("request_guild_members", {"guild_id": "81", "timeout": 5}, "unknown argument"),
    ("fetch_guild_members", {"guild_id": "81", "nonce": "n"}, "unknown argument"),
    ("fetch_guild_members", {"guild_id": "81", "timeout": float("nan")}, "timeout"),
    ("fetch_guild_members", {"guild_id": "81", "timeout": 0}, "timeout"),
    ("fetch_guild_members", {"guild_id": "81", "timeout": 1e6}, "timeout"),
    ("fetch_guild_members", {"guild_id": "81", "timeout": True}, "timeout"),
])
async def test_a_bad_argument_is_refused_before_any_command(
        tmp_path: Path, name: object, args: object, why: str) -> None:
    async with wire(tmp_path) as w:
        await w.ask({"id": "b1", "name": name, "args": args})
        body = (await w.answer()).body
        assert body["ok"] is False and why in body["error"], body
        assert w.api.calls == []


async def test_a_peer_runs_only_so_many_commands_at_once(tmp_path: Path) -> None:
    async with wire(tmp_path, per_peer=2) as w:
        await w.ask({"id": "v1", **VOICE})
        await w.ask({"id": "v2", **VOICE})
        await w.ask({"id": "v3", **VOICE})
        busy = (await w.answer()).body
        assert busy["id"] == "v3" and busy["ok"] is False and "busy" in busy["error"]
        await anyio.wait_all_tasks_blocked()  # both running commands wait for release
        assert len(w.api.calls) == 2
        w.api.release.set()
        answered = {(await w.answer()).body["id"] for _ in range(2)}
        assert answered == {"v1", "v2"}
        await w.ask({"id": "v4", **VOICE})  # a slot is free again
        assert (await w.answer()).body == {"id": "v4", "ok": True, "error": None, "replies": [
            {"shard": 3, "ok": True, "error": None, "retry_after": None, "value": None}]}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=8)
_ARG_NAMES = st.sampled_from(["guild_id", "channel_id", "self_mute", "self_deaf", "presence",
                              "shard_id", "query", "limit", "presences", "user_ids",
                              "nonce", "timeout", "token"])


class _Sent:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.started: list[Any] = []

    def send(self, peer: bytes, kind: str | Message, body: dict[str, Any] | None = None
             ) -> bool:
        if not isinstance(kind, str):  # a typed message, as ControlServer.send takes
            kind, body = to_wire(kind)
        assert body is not None
        assert kind == "response"
        self.bodies.append(body)
        return True

    def start_soon(self, func: Any, *args: Any) -> None:
        self.started.append(args[-1])


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from([*sorted(NAMES), "stop"]),
       args=st.dictionaries(_ARG_NAMES, _JSON, max_size=5) | _JSON)
@example(name="update_voice", args={"guild_id": "81", "channel_id": None})
@example(name="fetch_guild_members", args={"guild_id": 81, "timeout": 5, "query": ""})
@example(name="update_status", args={"presence": {}, "shard_id": 2})
def test_any_request_is_refused_or_reaches_the_api_with_checked_types(
        name: str, args: Any) -> None:
    api, out = FakeApi(), _Sent()
    api.release.set()
    requests = CommandRequests(api)
    message = ControlMessage("request", {"id": "h1", "name": name, "args": args})
    requests.handle(out, out, Incoming(b"peer", message, Role.OPERATOR))  # type: ignore[arg-type]
    if out.bodies:
        assert not out.started and out.bodies[0]["ok"] is False and out.bodies[0]["error"]
        return
    [call] = out.started
    # The fake refuses guild "x" as the real API would (answered as an error by _run).
    with contextlib.suppress(ConfigurationError):
        anyio.run(call)
    [(called, positional, options)] = api.calls
    assert called == name
    if name == "update_status":
        assert isinstance(positional[0], dict)
        assert positional[1] is None or (type(positional[1]) is int and positional[1] >= 0)
        return
    assert isinstance(positional[0], str | int) and not isinstance(positional[0], bool)
    if name == "update_voice":
        assert positional[1] is None or (isinstance(positional[1], str | int)
                                         and not isinstance(positional[1], bool))
        assert type(positional[2]) is bool and type(positional[3]) is bool
    assert set(options) <= {"query", "limit", "presences", "user_ids", "nonce", "timeout"}
    if "timeout" in options:
        assert 0 < options["timeout"] <= 120
