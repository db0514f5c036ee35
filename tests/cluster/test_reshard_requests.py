"""``reshard`` over the control channel (cluster/command_requests.py): operators only, the
count checked before the supervisor is asked, refusals answered with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import zmq.asyncio

from shardctl.cluster.command_requests import CommandRequests
from shardctl.cluster.reshard import ReshardError, ReshardResult
from shardctl.ipc.control import ControlClient, ControlMessage, ControlServer
from shardctl.ipc.security import Role

pytestmark = pytest.mark.anyio


@dataclass
class FakeCluster:
    """The supervisor's ``reshard``: records the count; 99 is refused like a short budget."""

    calls: list[Any] = field(default_factory=list)

    async def reshard(self, shards: Any = "auto") -> ReshardResult:
        self.calls.append(shards)
        if shards == 99:
            raise ReshardError("refused: resharding to 99 shards needs 99 session starts "
                               "but only 5 of 1000 remain")
        return ReshardResult(8, 16 if shards == "auto" else shards, 1.5, 40, 2)


@asynccontextmanager
async def asking(tmp_path: Path, role: Role | None = Role.OPERATOR
                 ) -> AsyncIterator[tuple[Any, FakeCluster]]:
    context = zmq.asyncio.Context()
    server = ControlServer(f"ipc://{tmp_path}/control", context=context)
    client = ControlClient(server.endpoint, context=context)
    api = FakeCluster()
    requests = CommandRequests(api)  # type: ignore[arg-type]
    try:
        async with anyio.create_task_group() as tg:
            async def ask(args: dict[str, Any]) -> ControlMessage:
                await client.send("request", {"id": "r1", "name": "reshard", "args": args})
                incoming = await server.receive()
                requests.handle(server, tg, replace(incoming, role=role))
                with anyio.fail_after(5):
                    return await client.receive()

            yield ask, api
    finally:
        client.close()
        server.close()
        context.term()


@pytest.mark.parametrize(("shards", "new"), [("auto", 16), (32, 32)])
async def test_an_operator_reshard_answers_what_it_did(tmp_path: Path, shards: Any,
                                                       new: int) -> None:
    async with asking(tmp_path) as (ask, api):
        body = (await ask({"shards": shards})).body
    assert body["ok"] is True and body["replies"] == []
    assert body["result"] == {"old_shards": 8, "new_shards": new, "switched_at": 1.5,
                              "overlap_events": 40, "retired_events": 2}
    assert api.calls == [shards]


@pytest.mark.parametrize("role", [None, Role.WORKER, Role.CONSUMER])
async def test_only_an_operator_may_reshard(tmp_path: Path, role: Role | None) -> None:
    async with asking(tmp_path, role) as (ask, api):
        body = (await ask({"shards": 16})).body
    assert body["ok"] is False and "operator role" in body["error"]
    assert api.calls == []


@pytest.mark.parametrize("args", [
    {"shards": 0}, {"shards": -1}, {"shards": "16"}, {"shards": True}, {"shards": 1.5},
    {"shards": 10**7}, {"shards": None}, {"shards": 16, "now": True}, {"shards": "AUTO"}])
async def test_a_wrong_shard_count_is_refused_before_the_supervisor_is_asked(
        tmp_path: Path, args: dict[str, Any]) -> None:
    async with asking(tmp_path) as (ask, api):
        body = (await ask(args)).body
    assert body["ok"] is False and body["error"].startswith("reshard: ")
    assert api.calls == []


async def test_a_refused_reshard_answers_its_reason(tmp_path: Path) -> None:
    async with asking(tmp_path) as (ask, _):
        body = (await ask({"shards": 99})).body
    assert body["ok"] is False
    assert "needs 99 session starts but only 5 of 1000 remain" in body["error"]
