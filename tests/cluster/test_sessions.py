from __future__ import annotations

import stat
from pathlib import Path

from shardctl.cluster.sessions import SessionRecord, load, save

TOKEN = "MTIz.secret-token"


def sessions() -> dict[int, SessionRecord]:
    return {i: SessionRecord(i, f"s{i}", "ws://127.0.0.1:1/resume", 10 + i) for i in range(3)}


def test_round_trip_private_file_without_token(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sessions.json"
    save(path, TOKEN, 3, sessions(), now=1000.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "secret-token" not in path.read_text()
    assert load(path, TOKEN, 3, now=1010.0) == sessions()


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
