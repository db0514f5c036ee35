"""freeze_startup_heap: the start-up objects leave the collector's generations."""

from __future__ import annotations

import gc

from shardctl.heap import freeze_startup_heap


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    before = gc.get_freeze_count()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > before
        assert gc.get_count()[0] < 100  # it collected first: nothing young is left pending
    finally:
        gc.unfreeze()
