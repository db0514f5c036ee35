"""Asking a running supervisor for its status over the control channel (``shardctl status``).

The asker is a plain DEALER peer: it sends ``status`` {} and waits for the ``status`` reply
(see :mod:`shardctl.ipc.control`; a long one arrives in parts, joined here).  It never
registers, so the supervisor never takes it for a worker.  An operator (the ``operator``
CURVE key, or this user on the private ipc:// endpoint) gets the full body; any other peer
a body with ``redacted: true``.
"""

from __future__ import annotations

from typing import Any

from shardctl.errors import ProtocolError
from shardctl.ipc.control import ControlClient
from shardctl.ipc.control_messages import StatusQuery
from shardctl.ipc.security import CurveClient


async def request_status(endpoint: str, *, curve: CurveClient | None = None) -> dict[str, Any]:
    """The supervisor's ``status`` body.  Waits for as long as it takes: wrap it in
    ``anyio.fail_after`` (a missing supervisor never answers)."""
    client = ControlClient(endpoint, curve=curve)
    try:
        await client.send(StatusQuery())
        while True:
            message = await client.receive()
            if message.kind == "status":
                body = message.body
                if not isinstance(body.get("shards"), list):
                    raise ProtocolError("status reply without a shards list")
                return body
    finally:
        client.close()
