"""How far a reshard is, for ``shardctl status`` and the live view (cluster/reshard.py).

Pure and light (no sockets, no HTTP): the ``status`` text formatter imports it.  The body
has the shape of a drain's progress (cluster/rolling.py ``progress()``: ``kind``, ``state``,
``elapsed_s``, ``error``) so both travel as the status body's ``operation``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio

#: The phases in order: GET /gateway/bot and the budget; the new set IDENTIFYing (``ready``
#: of ``new_shards`` READY); the old set's last events through the bus; after the switch,
#: the old sessions closing.  A finished reshard keeps its last phase; ``state`` says how
#: it ended.
PHASES: Final = ("budget_check", "starting", "catching_up", "retiring")
_PHASE_TEXT: Final = {"budget_check": "checking the session-start budget",
                      "starting": "starting the new set", "catching_up":
                      "forwarding the old set's last events", "retiring":
                      "switched; closing the old set"}


@dataclass(slots=True)
class ReshardProgress:
    """One reshard's progress; :class:`~shardctl.cluster.reshard.Reshard` moves it on."""

    old_shards: int
    #: None until the budget check has asked Discord (``"auto"``)
    new_shards: int | None
    started: float
    #: the drain/restart generation when the reshard started (a later one is newer news)
    rolling_generation: int
    clock: Callable[[], float] = anyio.current_time
    phase: str = "budget_check"
    ready: int = 0
    switched_at: float | None = None
    finished: float | None = None
    error: str | None = None
    overlap_events: int = 0
    retired_events: int = 0

    def to_body(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else self.clock()
        return {
            "kind": "reshard",
            "state": ("running" if self.finished is None
                      else "failed" if self.error else "done"),
            "phase": self.phase, "old_shards": self.old_shards,
            "new_shards": self.new_shards, "ready": self.ready,
            "switched_at": self.switched_at, "overlap_events": self.overlap_events,
            "retired_events": self.retired_events,
            "elapsed_s": round(max(0.0, end - self.started), 1), "error": self.error,
        }


def reshard_text(progress: Mapping[str, Any]) -> str:
    """One line for people (statusview, liveview), e.g. ``reshard 8 -> 16 shards: starting
    the new set (5/16 READY); 3.2 s``."""
    new = progress.get("new_shards")
    text = f"reshard {progress.get('old_shards')} -> {'?' if new is None else new} shards: "
    phase = str(progress.get("phase"))
    text += _PHASE_TEXT.get(phase, phase)
    if phase == "starting":
        text += f" ({progress.get('ready', 0)}/{'?' if new is None else new} READY)"
    text += f"; {progress.get('elapsed_s', 0)} s"
    state = progress.get("state")
    if state == "done":
        text += (f"; done ({progress.get('overlap_events', 0)} events marked OVERLAP, "
                 f"{progress.get('retired_events', 0)} of the old set's after the switch "
                 "not forwarded)")
    elif state == "failed":
        text += f"; FAILED: {progress.get('error')}"
    return text
