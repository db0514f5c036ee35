"""Close-code table and classification (protocol §7)."""

from __future__ import annotations

import pytest

from shardctl.gateway.closecodes import (
    CLOSE_CODES,
    RESUMABLE,
    SESSION_ENDING_CLIENT_CODES,
    ZOMBIE_CLOSE_CODE,
    CloseAction,
    CloseCode,
    classify,
    keeps_session,
)
from shardctl.gateway.closecodes import FATAL as FATAL_CODES

RESUME, REIDENTIFY, FATAL = CloseAction.RESUME, CloseAction.REIDENTIFY, CloseAction.FATAL

#: The "Client action" column of gateway-protocol.md §7.
EXPECTED = {
    4000: RESUME, 4001: REIDENTIFY, 4002: RESUME, 4003: REIDENTIFY, 4004: FATAL,
    4005: RESUME, 4007: REIDENTIFY, 4008: RESUME, 4009: REIDENTIFY, 4010: FATAL,
    4011: FATAL, 4012: FATAL, 4013: FATAL, 4014: FATAL,
}


def test_table_matches_the_protocol_document() -> None:
    assert {code: c.action for code, c in CLOSE_CODES.items()} == EXPECTED
    for code, entry in CLOSE_CODES.items():
        assert entry.code == code
        assert entry.message


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_classify_returns_the_table_entry(code: int) -> None:
    assert classify(code) is CLOSE_CODES[code]


def test_fatal_codes_are_exactly_the_no_reconnect_ones() -> None:
    assert {c for c, e in CLOSE_CODES.items() if e.action is FATAL} == {4004, *range(4010, 4015)}


@pytest.mark.parametrize("code", [4006, 4099, 1000, 1001, 1006, 1011, 4900])
def test_codes_outside_the_table_resume(code: int) -> None:
    entry = classify(code)
    assert entry.action is RESUME
    assert entry.code == code
    assert str(code) in entry.message


def test_no_close_frame_resumes_as_1006() -> None:
    entry = classify(None)
    assert (entry.code, entry.action) == (1006, RESUME)
    assert "no close frame" in entry.message


def test_zombie_close_code_keeps_the_session_resumable() -> None:
    # §3: close a zombie with any code except 1000/1001, then RESUME.
    assert ZOMBIE_CLOSE_CODE not in SESSION_ENDING_CLIENT_CODES
    assert ZOMBIE_CLOSE_CODE not in CLOSE_CODES
    assert 4000 <= ZOMBIE_CLOSE_CODE <= 4999
    assert {1000, 1001} == SESSION_ENDING_CLIENT_CODES


def test_the_enum_names_every_table_code_as_the_table_does() -> None:
    for code, entry in CLOSE_CODES.items():
        assert CloseCode(code).name == entry.name
    assert classify(None).code == CloseCode.NO_CLOSE_FRAME


def test_resumable_and_fatal_are_the_documents_resume_and_stop_rows() -> None:
    assert {c for c, a in EXPECTED.items() if a is RESUME} == RESUMABLE
    assert {c for c, a in EXPECTED.items() if a is FATAL} == FATAL_CODES


@pytest.mark.parametrize("code", [*sorted(EXPECTED), 1001, 1006, 1011, 4006, 4900, None])
def test_a_server_close_keeps_the_session_exactly_when_the_client_resumes(
        code: int | None) -> None:
    expected = EXPECTED.get(code, RESUME) if code is not None else RESUME
    assert keeps_session(code) is (expected is RESUME)


def test_only_1000_and_1001_from_the_client_end_the_session() -> None:
    # §7: any other client code (4000, 4009, the zombie's 4900) keeps it resumable.
    assert {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY} == SESSION_ENDING_CLIENT_CODES
    assert CloseCode.SESSION_TIMED_OUT not in SESSION_ENDING_CLIENT_CODES


def test_messages_name_the_fix_for_fatal_codes() -> None:
    assert "token" in CLOSE_CODES[4004].message
    assert "re-plan" in CLOSE_CODES[4010].message
    assert "privileged" in CLOSE_CODES[4014].message
