from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.cluster.planner import MAX_SHARDS, parse_ranges, parse_shard_ids, plan
from shardctl.errors import ConfigurationError


def test_parse_ranges_and_singles() -> None:
    assert parse_shard_ids("0-3,8, 10-11", 16) == [0, 1, 2, 3, 8, 10, 11]
    assert parse_shard_ids("5", 6) == [5]


@pytest.mark.parametrize("text", ["", "a-b", "3-1", "-1", "0-16", "16"])
def test_parse_rejects_bad_ranges(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_shard_ids(text, 16)


@pytest.mark.parametrize("text", ["", " , ", "x", "1-", "-", "3-1", "-1", "0-x",
                                  f"0-{MAX_SHARDS}", str(10**30)])
def test_shard_id_syntax_is_checked_without_the_shard_count(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_ranges(text)


def test_shard_id_ranges_keep_their_bounds() -> None:
    assert parse_ranges("0-3, 8,10-11") == [(0, 3), (8, 8), (10, 11)]


@given(st.sets(st.integers(0, 500), min_size=1), st.integers(1, 32))
def test_plan_places_every_shard_exactly_once(ids: set[int], processes: int) -> None:
    workers = plan(sorted(ids), processes)
    placed = [s for w in workers for s in w]
    assert sorted(placed) == sorted(ids)
    assert len(workers) == min(processes, len(ids))
    sizes = [len(w) for w in workers]
    assert max(sizes) - min(sizes) <= 1


def test_plan_spreads_consecutive_shards() -> None:
    assert plan(range(8), 4) == [[0, 4], [1, 5], [2, 6], [3, 7]]
