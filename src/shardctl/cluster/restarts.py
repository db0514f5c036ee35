"""When a dead worker may be respawned: bounded restarts with backoff.

A worker that crashes right after starting would otherwise be respawned forever, each time
re-identifying shards whose sessions could not be resumed and burning the daily session
budget.  The policy is pure: ``now`` is an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RestartPolicy:
    #: At most this many restarts of one worker ...
    max_restarts: int = 5
    #: ... within this many seconds; one more is a crash loop.
    window: float = 60.0
    #: Delay before the n-th restart in a row: base * 2**(n-1), capped.
    base_delay: float = 0.0
    max_delay: float = 10.0
    _times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> float | None:
        """Register a death; the delay before respawning, or None for a crash loop."""
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) >= self.max_restarts:
            return None
        self._times.append(now)
        if self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2.0 ** (len(self._times) - 1))
