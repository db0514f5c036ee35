"""The ``assign`` body of the control channel: what a worker is told to run.

The supervisor sends everything a worker needs in one message, so a worker is stateless
apart from its sockets (DESIGN.md §1): which shards, with which sessions to RESUME, and where
the limiter and the event bus are.  The token travels here, over a private channel (a 0700
ipc:// directory, or CURVE across hosts); it is never logged and kept out of the repr.  So
does the assignment's publish key: the worker's slot (``worker``) and that key head every
event batch it publishes, and the supervisor takes batches only with the key of the slot's
latest assignment (:mod:`shardctl.ipc.publishers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from shardctl.errors import ProtocolError
from shardctl.ipc.publishers import PUBLISH_KEY_SIZE
from shardctl.ipc.watermarks import is_counter_key

#: The longest publish window an assignment may set, in seconds (``--publish-window-ms``).
MAX_PUBLISH_WINDOW: Final = 0.1


@dataclass(frozen=True, slots=True)
class ShardAssignment:
    id: int
    session_id: str | None = None
    resume_gateway_url: str | None = None
    seq: int | None = None

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "session_id": self.session_id,
                "resume_gateway_url": self.resume_gateway_url, "seq": self.seq}


@dataclass(frozen=True, slots=True)
class Assignment:
    token: str = field(repr=False)
    gateway_url: str
    shard_count: int
    intents: int
    compression: str | None
    limiter: str
    events: str
    shards: tuple[ShardAssignment, ...]
    large_threshold: int = 50
    presence: dict[str, Any] | None = None
    #: Seconds between liveness beats, and how long without a word from the supervisor
    #: before this worker gives up (closing its shards resumably) and exits.
    beat_interval: float = 1.0
    supervisor_timeout: float = 10.0
    #: The slot this worker fills, and the key its event batches must carry (new with
    #: every assignment).
    worker: int = 0
    publish_key: bytes = field(default=bytes(PUBLISH_KEY_SIZE), repr=False)
    #: Seconds an event may wait in the worker for others to travel with it (``run
    #: --publish-window-ms``; 0: a batch goes at the end of the loop pass that made it).
    publish_window: float = 0.0
    #: The supervisor run's epoch when this worker numbers its own events (None: the
    #: forwarder does), and the forwarder's bus_seq counters (key → last forwarded) of these
    #: shards to continue from (ipc/watermarks.py).
    epoch: int | None = None
    counters: tuple[tuple[bytes, int], ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {
            "token": self.token, "gateway_url": self.gateway_url,
            "shard_count": self.shard_count, "intents": self.intents,
            "compression": self.compression, "limiter": self.limiter, "events": self.events,
            "shards": [s.to_body() for s in self.shards],
            "large_threshold": self.large_threshold, "presence": self.presence,
            "beat_interval": self.beat_interval, "supervisor_timeout": self.supervisor_timeout,
            "worker": self.worker, "publish_key": self.publish_key.hex(),
            "publish_window": self.publish_window, "epoch": self.epoch,
            "counters": [[key.hex(), bus_seq] for key, bus_seq in self.counters],
        }

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Assignment:
        try:
            shards = tuple(
                ShardAssignment(_int(s["id"]), _opt_str(s.get("session_id")),
                                _opt_str(s.get("resume_gateway_url")), _opt_int(s.get("seq")))
                for s in body["shards"])
            compression = _opt_str(body.get("compression"))
            presence = body.get("presence")
            if presence is not None and not isinstance(presence, dict):
                raise TypeError("presence")
            return cls(
                token=_str(body["token"]), gateway_url=_str(body["gateway_url"]),
                shard_count=_int(body["shard_count"]), intents=_int(body["intents"]),
                compression=compression, limiter=_str(body["limiter"]),
                events=_str(body["events"]), shards=shards,
                large_threshold=_int(body.get("large_threshold", 50)), presence=presence,
                beat_interval=_num(body.get("beat_interval", 1.0)),
                supervisor_timeout=_num(body.get("supervisor_timeout", 10.0)),
                worker=_slot(body["worker"]), publish_key=_key(body["publish_key"]),
                publish_window=_window(body.get("publish_window", 0.0)),
                epoch=_epoch(body.get("epoch")),
                counters=tuple(_counter(c) for c in body.get("counters", ())))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed assignment (field {exc})") from None


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(type(value).__name__)
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _slot(value: Any) -> int:
    if not 0 <= _int(value) <= 0xFFFFFFFF:
        raise TypeError(f"worker {value} is not a u32")
    return int(value)


def _epoch(value: Any) -> int | None:
    if value is None:
        return None
    if not 0 <= _int(value) <= 0xFFFFFFFF:
        raise TypeError(f"epoch {value} is not a u32")
    return int(value)


def _counter(value: Any) -> tuple[bytes, int]:
    """One [key hex, last bus_seq] pair of the ``counters`` field."""
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError("counters entry is not a [key, bus_seq] pair")
    try:
        key = bytes.fromhex(_str(value[0]))
    except ValueError:
        raise TypeError("counters key is not hex") from None
    if not is_counter_key(key) or _int(value[1]) < 0:
        raise TypeError(f"counters entry {value!r} is not a counter key and a bus_seq")
    return key, int(value[1])


def _key(value: Any) -> bytes:
    try:
        key = bytes.fromhex(_str(value))
    except ValueError:
        raise TypeError("publish_key is not hex") from None
    if len(key) != PUBLISH_KEY_SIZE:
        raise TypeError(f"publish_key is not {PUBLISH_KEY_SIZE} bytes")
    return key


def _window(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_PUBLISH_WINDOW:  # nan fails too
        raise TypeError(f"publish_window {value!r} is not 0-{MAX_PUBLISH_WINDOW:g} s")
    return float(value)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise TypeError(repr(value))
    return float(value)
