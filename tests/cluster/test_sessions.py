from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import orjson
import pytest

from shardctl.cluster.sessions import (
    CLOCK_SKEW,
    ResumeUrlCheck,
    SessionRecord,
    WorkerMark,
    bot_id,
    default_state_file,
    load,
    load_workers,
    save,
    token_fingerprint,
)
from shardctl.gateway.resume_url import resume_url_refusal

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


def test_a_save_with_shard_ids_replaces_only_those_shards(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    first = {i: SessionRecord(i, f"a{i}", "ws://127.0.0.1:1/resume", i) for i in (0, 1)}
    second = {i: SessionRecord(i, f"b{i}", "ws://127.0.0.1:1/resume", i) for i in (2, 3)}
    save(path, TOKEN, 4, first, shard_ids=[0, 1], now=1000.0)
    save(path, TOKEN, 4, second, shard_ids=[2, 3], now=1001.0)
    assert load(path, TOKEN, 4, now=1002.0, resume_allowed=SANDBOX) == first | second
    save(path, TOKEN, 4, {}, shard_ids=[0, 1], now=1003.0)  # a fatal stop of the first
    assert load(path, TOKEN, 4, now=1004.0, resume_allowed=SANDBOX) == second


def test_a_merged_entry_ages_by_its_own_saved_at(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    save(path, TOKEN, 2, {0: sessions()[0]}, shard_ids=[0], now=1000.0)
    save(path, TOKEN, 2, {1: sessions()[1]}, shard_ids=[1], now=1250.0)
    assert load(path, TOKEN, 2, now=1350.0, resume_allowed=SANDBOX) == {1: sessions()[1]}


def test_a_file_saved_in_the_future_is_refused_with_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "sessions.json"
    save(path, TOKEN, 3, sessions(), now=1000.0 + CLOCK_SKEW + 1)
    assert load(path, TOKEN, 3, now=1000.0, resume_allowed=SANDBOX) == {}
    lines = [r.getMessage() for r in caplog.records if "future" in r.getMessage()]
    assert len(lines) == 1 and "IDENTIFY" in lines[0]
    # within the tolerance it is a skewed clock, not a lie
    save(path, TOKEN, 3, sessions(), now=1000.0 + CLOCK_SKEW - 1)
    assert load(path, TOKEN, 3, now=1000.0, resume_allowed=SANDBOX) == sessions()


def test_a_file_of_the_previous_version_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(orjson.dumps({
        "format": 1, "bot": token_fingerprint(TOKEN), "shard_count": 3, "saved_at": 1000.0,
        "sessions": [asdict(s) for s in sessions().values()]}))
    assert load(path, TOKEN, 3, now=1001.0, resume_allowed=SANDBOX) == sessions()
    assert load_workers(path) == []


def test_worker_marks_round_trip_and_merge_by_shards(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    save(path, TOKEN, 4, {}, shard_ids=[0, 1], workers=[WorkerMark(10, "77", (0, 1))])
    save(path, TOKEN, 4, {}, shard_ids=[2, 3], workers=[WorkerMark(11, "78", (2, 3))])
    assert load_workers(path) == [WorkerMark(10, "77", (0, 1)), WorkerMark(11, "78", (2, 3))]
    save(path, TOKEN, 4, {}, shard_ids=[0, 1])
    assert load_workers(path) == [WorkerMark(11, "78", (2, 3))]


def test_the_default_file_is_keyed_by_bot_and_shard_set_without_the_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.very-secret-part"
    assert bot_id(token) == "123456789012345678"
    every = default_state_file(token, 8, range(8))
    low = default_state_file(token, 8, [0, 1, 2, 3])
    high = default_state_file(token, 8, [4, 5, 6, 7])
    assert every == tmp_path / "shardctl" / "state-123456789012345678-8-all.json"
    assert len({every, low, high, default_state_file(token, 16, range(8))}) == 4
    assert default_state_file(token, 8, [3, 1, 2, 0]) == low
    for path in (every, low, high):
        assert "secret" not in str(path) and "GaBcDe" not in str(path)
    # a token that does not start with a bot id still gets a file, named without it
    assert default_state_file("sandbox-token", 2, [0, 1]).name == "state-bot-2-all.json"


def test_the_lock_file_is_never_a_followed_symlink(
        tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    target = tmp_path / "elsewhere"
    Path(f"{path}.lock").symlink_to(target)
    with pytest.raises(OSError):
        save(path, TOKEN, 3, sessions(), shard_ids=[0, 1, 2])
    assert not target.exists()


def test_the_resume_rule_parses_an_allowed_url_once_and_refuses_others_every_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every state report repeats every shard's resume URL: 10,000 shards parsed them anew.
    from shardctl.cluster import sessions

    calls: list[str] = []

    def counting(url: str, trusted: Iterable[str] = ()) -> str | None:
        calls.append(url)
        return resume_url_refusal(url, trusted)

    monkeypatch.setattr(sessions, "resume_url_refusal", counting)
    check = ResumeUrlCheck(["ws://127.0.0.1:1/"])
    assert all(check("ws://127.0.0.1:2/resume/") for _ in range(1000))
    assert not any(check("ws://evil.example/") for _ in range(3))
    assert calls == ["ws://127.0.0.1:2/resume/"] + ["ws://evil.example/"] * 3
