"""Asking a running supervisor for a drain or a restart of its workers (issue 16).

The asker is a plain DEALER peer of the control channel, like ``shardctl status``: it sends
``operation`` {id, name, args} and reads ``operation`` answers with its id until one says
``done`` (see :mod:`shardctl.ipc.control`).  Only the operator role may ask: the operator
CURVE key, or this OS user on the private ``ipc://`` endpoint.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from shardctl.errors import ProtocolError, ShardctlError
from shardctl.ipc.control import ControlClient
from shardctl.ipc.control_messages import Operation
from shardctl.ipc.security import CurveClient


class OperationError(ShardctlError):
    """The supervisor refused the operation, or it did not complete (``progress``: how far
    it got, None if it never started)."""

    def __init__(self, message: str, progress: Mapping[str, Any] | None) -> None:
        super().__init__(message)
        self.progress = progress


async def request_operation(endpoint: str, name: str, args: Mapping[str, Any], *,
                            curve: CurveClient | None = None, first: float = 15.0,
                            silence: float = 150.0,
                            on_progress: Callable[[Mapping[str, Any]], None] | None = None
                            ) -> dict[str, Any]:
    """Run ``name`` (drain, restart_workers) and return its final progress.

    ``on_progress`` sees every progress the supervisor sends meanwhile.  Raises
    :class:`OperationError` on a refusal or failure, and :class:`TimeoutError` when no
    supervisor answers within ``first`` seconds, or it then says nothing for ``silence``
    (a replacement may stay in one phase for as long as the operation's ready_timeout).
    """
    request_id = secrets.token_hex(8)
    client = ControlClient(endpoint, curve=curve)
    bound = first
    try:
        with anyio.fail_after(bound):
            # Inside the bound: with no supervisor connected a DEALER's send waits too.
            await client.send(Operation(request_id, name, args))
        while True:
            with anyio.fail_after(bound):
                message = await client.receive()
            body = message.body
            if message.kind != "operation" or body.get("id") != request_id:
                continue
            progress = body.get("progress")
            if progress is not None and not isinstance(progress, dict):
                raise ProtocolError("an operation answer whose progress is not an object")
            bound = silence
            if body.get("done") is not True:
                if progress is not None and on_progress is not None:
                    on_progress(progress)
                continue
            if body.get("ok") is not True:
                raise OperationError(str(body.get("error") or "the supervisor refused"),
                                     progress)
            return progress or {}
    finally:
        client.close()
