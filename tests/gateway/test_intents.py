"""Intents bitfield facts and validation (protocol §12)."""

from __future__ import annotations

import functools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.errors import ConfigurationError, ShardctlError
from shardctl.gateway.intents import ALL_INTENTS, PRIVILEGED_INTENTS, Intents, validate_intents

MEMBERS = list(Intents)


def test_masks_match_the_documented_values() -> None:
    assert ALL_INTENTS == 53608447
    assert hex(ALL_INTENTS) == "0x331ffff"
    assert functools.reduce(operator.or_, (m.value for m in MEMBERS)) == ALL_INTENTS
    assert PRIVILEGED_INTENTS == 33026
    assert Intents(PRIVILEGED_INTENTS) == (
        Intents.GUILD_MEMBERS | Intents.GUILD_PRESENCES | Intents.MESSAGE_CONTENT
    )


def test_documented_bit_positions() -> None:
    assert Intents.GUILD_MESSAGES.value == 512
    assert Intents.DIRECT_MESSAGES.value == 4096
    assert Intents.MESSAGE_CONTENT.value == 32768
    assert Intents.AUTO_MODERATION_CONFIGURATION == 1 << 20
    assert Intents.DIRECT_MESSAGE_POLLS == 1 << 25
    assert len(MEMBERS) == 21


def test_default_excludes_exactly_the_privileged_intents() -> None:
    assert Intents.default() == ALL_INTENTS & ~PRIVILEGED_INTENTS
    assert not Intents.default().privileged
    assert Intents.all() == ALL_INTENTS
    assert Intents.all().privileged == PRIVILEGED_INTENTS


@pytest.mark.parametrize("value", [0, 1, 33281, ALL_INTENTS, Intents.GUILDS])
def test_valid_values_are_accepted(value: int) -> None:
    assert validate_intents(value) == value
    assert isinstance(validate_intents(value), Intents)


@pytest.mark.parametrize("bit", [17, 18, 19, 22, 23, 26, 40])
def test_each_undocumented_bit_is_refused(bit: int) -> None:
    with pytest.raises(ConfigurationError, match="undocumented bits"):
        validate_intents(1 << bit)


@pytest.mark.parametrize("value", [-1, True, 1.0, "513", None])
def test_non_int_and_negative_values_are_refused(value: object) -> None:
    with pytest.raises(ConfigurationError):
        validate_intents(value)  # type: ignore[arg-type]


def test_errors_belong_to_the_shardctl_tree_and_stay_value_errors() -> None:
    # Regression: these were bare ValueErrors, which escape the CLI's ShardctlError edge.
    with pytest.raises(ShardctlError):
        validate_intents(-1)
    with pytest.raises(ShardctlError):
        Intents.parse("NOPE")
    with pytest.raises(ValueError, match="negative"):
        validate_intents(-1)


def test_parse_numbers_names_and_aliases() -> None:
    assert Intents.parse(" 513 ") == 513
    assert Intents.parse("GUILDS,GUILD_MESSAGES") == 513
    assert Intents.parse("guilds | guild_messages") == 513
    assert Intents.parse("ALL") == ALL_INTENTS
    assert Intents.parse("default,message_content") == (
        Intents.default() | Intents.MESSAGE_CONTENT
    )
    assert Intents.parse("") == 0


@pytest.mark.parametrize("text", ["GUILD", "GUILDS,NOPE", "-1", "0x1", "\u00b2", "\u0663"])
def test_parse_refuses_unknown_names_and_non_ascii_digits(text: str) -> None:
    # "\u00b2" (superscript two) passed str.isdigit() and then crashed in int().
    with pytest.raises(ConfigurationError, match="unknown intent"):
        Intents.parse(text)


def test_parse_validates_numeric_values() -> None:
    with pytest.raises(ConfigurationError, match="undocumented"):
        Intents.parse(str(1 << 17))


@given(st.sets(st.sampled_from(MEMBERS)))
def test_names_round_trip_through_parse(members: set[Intents]) -> None:
    value = Intents(functools.reduce(operator.or_, (m.value for m in members), 0))
    assert validate_intents(int(value)) == value
    assert Intents.parse(",".join(value.names())) == value
    assert Intents.parse(str(int(value))) == value
    assert value.privileged == value & PRIVILEGED_INTENTS
