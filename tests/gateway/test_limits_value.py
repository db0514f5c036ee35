"""One ``Limits`` value for every session limiter: Discord's defaults, checked in one place."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shardctl.gateway.limits import DEFAULT_LIMITS, Limits
from shardctl.gateway.pacing import DEFAULT_MARGIN


def test_the_defaults_are_discords_pace_without_a_budget() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert (DEFAULT_LIMITS.max_concurrency, DEFAULT_LIMITS.interval) == (1, 5.0)
    assert DEFAULT_LIMITS.window == 86_400.0
    assert DEFAULT_LIMITS.margin == DEFAULT_MARGIN
    assert not DEFAULT_LIMITS.has_budget


@pytest.mark.parametrize(("field", "value"), [
    ("max_concurrency", 0),
    ("max_concurrency", -3),
    ("max_concurrency", 2.0),
    ("max_concurrency", True),
    ("interval", 0.0),
    ("interval", -1.0),
    ("interval", math.nan),
    ("interval", math.inf),
    ("interval", "5"),
    ("window", 0.0),
    ("window", math.inf),
    ("remaining", -1),
    ("remaining", 1.5),
    ("total", -1),
    ("reset_after", -0.5),
    ("reset_after", math.nan),
    ("reset_after", math.inf),
    ("margin", 0.015),
])
def test_a_bad_limit_is_refused_naming_the_field_and_the_value(field: str, value: Any) -> None:
    words = {"interval": "identify interval", "window": "session-start window"}
    with pytest.raises(ValueError, match=words.get(field, field)) as raised:
        Limits(**{field: value})
    assert repr(value) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_limits_are_keyword_only_so_a_count_is_never_taken_for_an_interval() -> None:
    with pytest.raises(TypeError):
        Limits(4, 5.0)  # type: ignore[misc]


def test_any_part_of_a_budget_counts_as_one() -> None:
    assert Limits(remaining=0).has_budget
    assert Limits(total=1000).has_budget
    assert Limits(reset_after=0.0).has_budget
    assert not Limits(max_concurrency=16, interval=0.2).has_budget


def test_limits_are_immutable() -> None:
    limits = Limits(max_concurrency=4)
    with pytest.raises(AttributeError):
        limits.max_concurrency = 8  # type: ignore[misc]
