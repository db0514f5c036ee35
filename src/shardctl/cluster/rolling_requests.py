"""Drains and restarts that other processes ask for (``operation`` messages, issue 16).

``shardctl drain`` and ``shardctl restart-workers`` (:mod:`shardctl.ipc.operations`) send
``operation`` {id, name, args}.  Only the ``operator`` role may: a drain spends nothing but
can stall a worker's shards for seconds, so nobody else gets that lever.  The request is
checked here (name, argument types, whether it can start: cluster/rolling.py) and refused at
once with the reason; an accepted one runs as a task of the supervisor's task group, and the
asking peer is sent its progress whenever it changes, then the outcome.  The control loop
never waits: every answer goes out with the channel's non-blocking send.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

import anyio
import anyio.abc

from shardctl.cluster.rolling import OperationRefusedError
from shardctl.errors import ShardctlError
from shardctl.ipc.control import ControlServer, Incoming
from shardctl.ipc.control_messages import OperationUpdate
from shardctl.ipc.security import Role

log = logging.getLogger(__name__)

#: The longest a peer may let one replacement take to bring its shards READY.
MAX_TIMEOUT: Final = 3600.0
NAMES: Final = frozenset({"drain", "restart_workers"})


class OperationApi(Protocol):
    """The supervisor's in-process operation methods (cluster/supervisor.py)."""

    @property
    def operation(self) -> dict[str, Any] | None: ...

    async def drain_worker(self, index: int, *, ready_timeout: float = ...
                           ) -> dict[str, Any]: ...

    async def restart_workers(self, *, rolling: bool = ..., ready_timeout: float = ...
                              ) -> dict[str, Any]: ...

    async def wait_operation_changed(self) -> None: ...

    def check_operation(self, name: str, args: Mapping[str, Any]) -> None: ...


Call = Callable[[], Awaitable[dict[str, Any]]]


class OperationRequests:
    """Checks, starts and answers ``operation`` messages (module docstring)."""

    def __init__(self, api: OperationApi) -> None:
        self._api = api
        #: Requests refused so far (role, bad arguments, busy, unknown worker).
        self.refused = 0

    def handle(self, control: ControlServer, tg: anyio.abc.TaskGroup, incoming: Incoming
               ) -> None:
        """Refuse at once, or start the operation in ``tg``; never waits."""
        peer, body = incoming.peer, incoming.message.body
        request_id = body.get("id")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= 32:
            raise ValueError("an operation request without a valid id")
        try:
            if incoming.role != Role.OPERATOR:
                raise OperationRefusedError(
                    "refused: drains and restarts need the operator role (the operator "
                    "CURVE key, or this user on the ipc:// endpoint)")
            call = self._call(body.get("name"), body.get("args"))
        except OperationRefusedError as exc:
            self.refused += 1
            control.send(peer, OperationUpdate(request_id, True, None, False, str(exc)))
            return
        tg.start_soon(self._run, control, peer, request_id, call)

    def _call(self, name: object, args: object) -> Call:
        if not isinstance(name, str) or name not in NAMES:
            raise OperationRefusedError(f"unknown operation {str(name)[:32]!r}; expected "
                                        f"one of {', '.join(sorted(NAMES))}")
        if not isinstance(args, dict):
            raise OperationRefusedError(f"{name}: args must be a JSON object")
        ready_timeout = args.get("ready_timeout", 120.0)
        if (not isinstance(ready_timeout, int | float) or isinstance(ready_timeout, bool)
                or not math.isfinite(ready_timeout) or not 0 < ready_timeout <= MAX_TIMEOUT):
            raise OperationRefusedError(
                f"{name}: ready_timeout must be in (0, {MAX_TIMEOUT:g}] seconds")
        api = self._api
        if name == "drain":
            _only(name, args, {"worker", "ready_timeout"})
            worker = args.get("worker")
            if type(worker) is not int:
                raise OperationRefusedError("drain: worker must be a worker index")
            api.check_operation(name, args)  # refused now, not after the first progress
            return lambda: api.drain_worker(worker, ready_timeout=float(ready_timeout))
        _only(name, args, {"rolling", "ready_timeout"})
        rolling = args.get("rolling", True)
        if type(rolling) is not bool:
            raise OperationRefusedError("restart_workers: rolling must be true or false")
        api.check_operation(name, args)
        return lambda: api.restart_workers(rolling=rolling,
                                           ready_timeout=float(ready_timeout))

    async def _run(self, control: ControlServer, peer: bytes, request_id: str, call: Call
                   ) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report, control, peer, request_id)
            try:
                outcome = OperationUpdate(request_id, True, await call())
            except ShardctlError as exc:  # refused meanwhile, failed, or the cluster failed
                outcome = OperationUpdate(request_id, True, self._api.operation, False,
                                          str(exc))
            finally:
                tg.cancel_scope.cancel()
        control.send(peer, outcome)

    async def _report(self, control: ControlServer, peer: bytes, request_id: str) -> None:
        while True:
            control.send(peer, OperationUpdate(request_id, False, self._api.operation))
            await self._api.wait_operation_changed()


def _only(name: str, args: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise OperationRefusedError(f"{name}: unknown argument {unknown[0][:32]!r}; "
                                    f"expected {', '.join(sorted(allowed))}")
