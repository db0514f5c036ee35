"""Server frames, pre-encoded where they never change (all four envelope keys, §2)."""

from __future__ import annotations

from typing import Any, Final

import orjson

HEARTBEAT_ACK: Final = b'{"op":11,"d":null,"s":null,"t":null}'
#: Server op 1: "beat now" (§3 Sandbox).
HEARTBEAT_REQUEST: Final = b'{"op":1,"d":null,"s":null,"t":null}'
RECONNECT: Final = b'{"op":7,"d":null,"s":null,"t":null}'
_INVALID: Final = {
    True: b'{"op":9,"d":true,"s":null,"t":null}',
    False: b'{"op":9,"d":false,"s":null,"t":null}',
}
TRACE: Final = ['["sandbox-gateway",{"micros":0}]']


def hello(interval_ms: int) -> bytes:
    return orjson.dumps({"op": 10, "d": {"heartbeat_interval": interval_ms, "_trace": TRACE},
                         "s": None, "t": None})


def invalid_session(resumable: bool) -> bytes:
    return _INVALID[resumable]


def encode(d: Any) -> bytes:
    return orjson.dumps(d)
