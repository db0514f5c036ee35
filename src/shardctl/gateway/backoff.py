"""Reconnect delays as a generator: exponential growth with jitter, capped.

After the websockets client's ``backoff()``: the schedule is data a caller pulls from, so the
machine can be tested without sleeping.  Jitter matters for a cluster: when Discord drops
every shard at once, identical delays would have them all reconnect in the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Final

#: The first reconnect waits a random fraction of this: prompt enough that an op 7 costs
#: well under 100 ms, spread enough that a cluster-wide op 7 storm is not one instant.
BACKOFF_FIRST: Final = 0.05
#: Later attempts wait between half and all of ``first * factor ** n`` ...
BACKOFF_FACTOR: Final = 2.0
#: ... but never more than this.
BACKOFF_CAP: Final = 60.0


def backoff(
    rng: random.Random,
    *,
    first: float = BACKOFF_FIRST,
    factor: float = BACKOFF_FACTOR,
    cap: float = BACKOFF_CAP,
) -> Iterator[float]:
    """Yield the delay before each reconnect attempt, forever.

    Attempt 0 waits ``uniform(0, first)``; attempt n waits ``uniform(d / 2, d)`` with
    ``d = min(cap, first * factor ** n)`` ("equal jitter": growth is guaranteed, the spread
    keeps shards apart).
    """
    yield rng.uniform(0.0, first)
    ceiling = first
    while True:
        ceiling = min(cap, ceiling * factor)
        yield rng.uniform(ceiling / 2, ceiling)
