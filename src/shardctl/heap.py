"""Keep the start-up heap out of the garbage collector's way in our long-running processes.

A worker or a supervisor holds ~100,000 objects from imports (modules, functions, classes)
that live as long as the process.  Every full collection walks all of them: tens of
milliseconds in which no event moves, which is what a latency p99 is made of.  Freezing
them once, before the event loop starts, takes them out of every later collection; only
what the process allocates while running is scanned.  For processes we own (``python -m
shardctl.worker``, ``shardctl run``): a library must not change its host's collector.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exempt the survivors from collection."""
    gc.collect()
    gc.freeze()
