from __future__ import annotations

import stat
from pathlib import Path

import pytest

from shardctl.cluster.sessions import ResumeUrlCheck, SessionRecord, load, save

TOKEN = "MTIz.secret-token"
SANDBOX = ResumeUrlCheck(["ws://127.0.0.1:1/", "http://127.0.0.1:1/api/v10"])


def sessions() -> dict[int, SessionRecord]:
    return {i: SessionRecord(i, f"s{i}", "ws://127.0.0.1:1/resume", 10 + i) for i in range(3)}


def test_round_trip_private_file_without_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sessions.json"
    save(path, TOKEN, 3, sessions(), now=1000.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "secret-token" not in path.read_text()
    assert load(path, TOKEN, 3, now=1010.0, resume_allowed=SANDBOX) == sessions()


def test_stale_foreign_or_resharded_state_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    save(path, TOKEN, 3, sessions(), now=1000.0)
    assert load(path, TOKEN, 3, now=1000.0 + 301.0) == {}
    assert load(path, "another-token", 3, now=1001.0) == {}
    assert load(path, TOKEN, 4, now=1001.0) == {}


def test_missing_or_corrupt_file_yields_no_sessions(tmp_path: Path) -> None:
    assert load(tmp_path / "nope.json", TOKEN, 3) == {}
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{not json")
    assert load(bad, TOKEN, 3) == {}


def test_a_saved_session_resumes_only_at_a_trusted_host(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The state file is ours (0600), but whatever wrote it: the token goes only to a
    # Discord gateway host or the configured one (gateway/resume_url.py).
    path = tmp_path / "sessions.json"
    saved = {0: SessionRecord(0, "a", "wss://gateway-us-east1-b.discord.gg", 5),
             1: SessionRecord(1, "b", "wss://attacker.invalid/", 6),
             2: SessionRecord(2, "c", "ws://gateway-us-east1-b.discord.gg", 7),
             3: SessionRecord(3, "d", "ws://127.0.0.1:1/resume", 8)}
    save(path, TOKEN, 4, saved, now=1000.0)
    assert load(path, TOKEN, 4, now=1001.0, resume_allowed=SANDBOX) == {
        0: saved[0], 3: saved[3]}
    refusals = [r.getMessage() for r in caplog.records if "IDENTIFY instead" in r.getMessage()]
    assert len(refusals) == 2
    assert "'attacker.invalid'" in refusals[0] and "is not wss://" in refusals[1]
    # without the sandbox configured, its host is a stranger too
    assert load(path, TOKEN, 4, now=1001.0) == {0: saved[0]}
