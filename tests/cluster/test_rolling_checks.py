"""Drain and restart requests without processes: what is refused and why, who may ask, and
how progress reads (cluster/rolling.py, cluster/rolling_requests.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import pytest

from shardctl.cli.statusview import format_table
from shardctl.cluster.rolling import (
    Hooks,
    OperationRefusedError,
    Rolling,
    operation_text,
)
from shardctl.cluster.rolling_requests import OperationRequests
from shardctl.cluster.status_report import status_body
from shardctl.cluster.workers import WorkerSlot
from shardctl.ipc.control import ControlMessage, Incoming
from shardctl.ipc.control_messages import Message, to_wire
from shardctl.ipc.security import Role

pytestmark = pytest.mark.anyio


class _Running:
    """Stands in for a live process: ``WorkerSlot.alive`` reads its returncode."""

    returncode = None


def live(index: int, shards: list[int], *, remote: bool = False) -> WorkerSlot:
    slot = WorkerSlot(index, shards, remote=remote, peer=f"peer{index}".encode(), pid=100 + index)
    slot.process = _Running()  # type: ignore[assignment]
    return slot


def rolling(slots: list[WorkerSlot], *, stopping: bool = False) -> Rolling:
    async def wait(predicate: Callable[[], bool]) -> None:
        raise AssertionError("no check waits")

    return Rolling(Hooks(
        slots=lambda: slots, stop_worker=lambda slot: None, wait=wait, notify=lambda: None,
        forwarded=lambda shard: True, shard_state=lambda shard: ("ready", None),
        counts=lambda shard: {}, stopping=lambda: stopping))


@pytest.mark.parametrize(("index", "error"), [
    (2, "no worker 2: this cluster runs workers 0-1"),
    (-1, "no worker -1: this cluster runs workers 0-1"),
    (True, "no worker True"),
    ("0", "no worker 0"),
])
async def test_a_drain_of_an_unknown_worker_is_refused_naming_the_workers(
        index: object, error: str) -> None:
    with pytest.raises(OperationRefusedError, match=error):
        rolling([live(0, [0]), live(1, [1])]).check_drain(index)


async def test_a_drain_of_the_only_worker_is_refused_pointing_at_restart_workers() -> None:
    with pytest.raises(OperationRefusedError,
                       match=r"worker 0 is the only worker.*use restart-workers"):
        rolling([live(0, [0, 1])]).check_drain(0)


async def test_a_drain_of_a_remote_or_dead_worker_is_refused() -> None:
    dead = WorkerSlot(1, [1])
    roll = rolling([live(0, [0]), dead, live(2, [2], remote=True)])
    with pytest.raises(OperationRefusedError, match="worker 1 is not running now"):
        roll.check_drain(1)
    with pytest.raises(OperationRefusedError, match="worker 2 runs on another host"):
        roll.check_drain(2)
    assert roll.check_drain(0).index == 0


async def test_nothing_starts_while_the_cluster_stops() -> None:
    roll = rolling([live(0, [0]), live(1, [1])], stopping=True)
    with pytest.raises(OperationRefusedError, match="the cluster is stopping"):
        roll.check_drain(0)
    with pytest.raises(OperationRefusedError, match="the cluster is stopping"):
        roll.check_restart()


async def test_a_restart_replaces_local_workers_only_and_needs_one() -> None:
    roll = rolling([live(0, [0]), live(1, [1], remote=True), live(2, [2])])
    assert [s.index for s in roll.check_restart()] == [0, 2]
    with pytest.raises(OperationRefusedError, match="no local workers to restart"):
        rolling([live(0, [0], remote=True)]).check_restart()


# -- the wire: operation requests ---------------------------------------------------------


class FakeControl:
    """The control server's non-blocking send, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, dict[str, Any]]] = []

    def send(self, peer: bytes, kind: str | Message, body: dict[str, Any] | None = None
             ) -> bool:
        if not isinstance(kind, str):  # a typed message, as ControlServer.send takes
            kind, body = to_wire(kind)
        assert body is not None
        self.sent.append((peer, kind, body))
        return True


class FakeApi:
    """Operations that end at once; checks from a real Rolling over two live slots."""

    def __init__(self) -> None:
        self.roll = rolling([live(0, [0]), live(1, [1])])
        self.calls: list[tuple[str, Any]] = []
        self.operation: dict[str, Any] | None = None

    async def drain_worker(self, index: int, *, ready_timeout: float = 1.0
                           ) -> dict[str, Any]:
        self.calls.append(("drain", (index, ready_timeout)))
        return {"kind": "drain", "state": "done"}

    async def restart_workers(self, *, rolling: bool = True, ready_timeout: float = 1.0
                              ) -> dict[str, Any]:
        self.calls.append(("restart_workers", (rolling, ready_timeout)))
        return {"kind": "restart-workers", "state": "done"}

    async def wait_operation_changed(self) -> None:
        await anyio.sleep_forever()

    def check_operation(self, name: str, args: Mapping[str, Any]) -> None:
        if name == "drain":
            self.roll.check_drain(args.get("worker"))


async def ask(api: FakeApi, body: dict[str, Any], role: Role | None = Role.OPERATOR
              ) -> list[dict[str, Any]]:
    control = FakeControl()
    requests = OperationRequests(api)
    async with anyio.create_task_group() as tg:
        requests.handle(control, tg, Incoming(  # type: ignore[arg-type]
            b"peer", ControlMessage("operation", {"id": "r1", **body}), role))
    return [sent for _, kind, sent in control.sent if kind == "operation"]


@pytest.mark.parametrize(("body", "error"), [
    ({"name": "drain", "args": {"worker": 5}}, "no worker 5"),
    ({"name": "drain", "args": {"worker": "1"}}, "drain: worker must be a worker index"),
    ({"name": "drain", "args": {"worker": 0, "force": True}}, "unknown argument 'force'"),
    ({"name": "drain", "args": {"worker": 0, "ready_timeout": float("nan")}},
     "ready_timeout must be in"),
    ({"name": "drain", "args": {"worker": 0, "ready_timeout": 0}}, "ready_timeout must be in"),
    ({"name": "restart_workers", "args": {"rolling": "yes"}}, "rolling must be true or false"),
    ({"name": "reboot", "args": {}}, "unknown operation 'reboot'"),
    ({"name": "drain", "args": [0]}, "args must be a JSON object"),
])
async def test_a_bad_operation_request_is_answered_with_why_and_runs_nothing(
        body: dict[str, Any], error: str) -> None:
    api = FakeApi()
    answers = await ask(api, body)
    assert len(answers) == 1 and answers[0]["done"] is True and answers[0]["ok"] is False
    assert error in answers[0]["error"]
    assert api.calls == []


async def test_only_operators_may_drain_or_restart() -> None:
    api = FakeApi()
    for role in (None, Role.CONSUMER, Role.WORKER):
        answers = await ask(api, {"name": "drain", "args": {"worker": 1}}, role)
        assert answers[0]["ok"] is False and "operator role" in answers[0]["error"]
    assert api.calls == []


async def test_an_accepted_operation_reports_progress_then_its_outcome() -> None:
    api = FakeApi()
    answers = await ask(api, {"name": "restart_workers",
                              "args": {"rolling": False, "ready_timeout": 30}})
    assert api.calls == [("restart_workers", (False, 30.0))]
    assert answers[0]["done"] is False
    assert answers[-1] == {"id": "r1", "done": True, "ok": True, "error": None,
                           "progress": {"kind": "restart-workers", "state": "done"}}


# -- how progress reads -------------------------------------------------------------------


ROLLING = {"kind": "restart-workers", "rolling": True, "state": "running",
           "workers": [0, 1, 2], "done": [0], "skipped": [], "phases": {"1": "resuming"},
           "resumed": 2, "identified": 0, "elapsed_s": 3.4, "error": None}


def test_the_progress_line_says_how_far_and_what_it_cost() -> None:
    assert operation_text(ROLLING) == (
        "rolling restart of workers: 1/3 workers replaced; worker 1 resuming; "
        "2 shards RESUMEd, 0 IDENTIFYed; 3.4 s")
    failed = {**ROLLING, "kind": "drain", "workers": [1], "done": [], "phases": {},
              "state": "failed", "error": "worker 1's replacement did not bring shards 1 "
                                          "READY within 5 s"}
    assert operation_text(failed).startswith("drain of worker 1: 0/1 workers replaced; ")
    assert operation_text(failed).endswith("; FAILED: worker 1's replacement did not bring "
                                           "shards 1 READY within 5 s")


def test_status_shows_the_operation_above_the_summary() -> None:
    body = status_body([], [live(0, [0])], now=0.0, operation=ROLLING)
    assert body["operation"] == ROLLING
    lines = format_table(body).splitlines()
    assert lines[-2] == operation_text(ROLLING)
    assert "operation" not in status_body([], [], now=0.0)


def test_the_cli_says_so_when_no_supervisor_answers(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from shardctl.cli import main

    result = CliRunner().invoke(main, [
        "restart-workers", "--control-endpoint", f"ipc://{tmp_path}/none.sock",
        "--timeout", "0.3"])
    assert result.exit_code == 3, result.output
    assert result.output.strip() == (f"Error: no supervisor answered on ipc://{tmp_path}"
                                     "/none.sock within 0.3 s")
