"""What a spawned worker process inherits: the per-spawn secret on stdin, never the token."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest

from shardctl.cluster.workers import WorkerSlot, spawn

pytestmark = pytest.mark.anyio

#: Writes its environment and what it reads on stdin to the file named by argv[1].
PROBE = ("import json, os, sys; "
         "open(sys.argv[1], 'w').write(json.dumps({'env': dict(os.environ), "
         "'line': sys.stdin.readline(), 'rest': sys.stdin.read()}))")


async def test_a_spawned_worker_gets_its_secret_on_stdin_and_no_token_in_its_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "env-token-never-inherited")
    monkeypatch.setenv("SHARDCTL_TOKEN", "env-token-never-inherited")
    monkeypatch.setenv("SHARDCTL_TOKEN_FILE", "/run/secrets/token")
    monkeypatch.setenv("SHARDCTL_LOG_LEVEL", "DEBUG")
    out = tmp_path / "probe.json"
    slot = WorkerSlot(0, [0, 1])
    await spawn(slot, [sys.executable, "-c", PROBE, str(out)], now=0.0)
    assert slot.process is not None
    with anyio.fail_after(30):
        assert await slot.process.wait() == 0
    seen = orjson.loads(out.read_bytes())
    assert "env-token-never-inherited" not in orjson.dumps(seen["env"]).decode()
    assert not any(k == "DISCORD_TOKEN" or k.startswith("SHARDCTL_TOKEN") for k in seen["env"])
    assert seen["env"]["SHARDCTL_LOG_LEVEL"] == "DEBUG"  # the rest is inherited
    secret = slot.secret
    assert secret is not None and len(secret) == 64
    assert seen["line"] == secret + "\n" and seen["rest"] == ""  # one line, then EOF
    assert secret not in orjson.dumps(seen["env"]).decode()


def test_a_slot_s_secret_registers_once_and_nothing_else_does() -> None:
    slot = WorkerSlot(0, [0])
    assert not slot.take("00" * 32)  # before any spawn: nothing is accepted
    slot.secret = "ab" * 32
    for wrong in [None, 7, "", "ab" * 31, "AB" * 32, "ab" * 32 + "00", "\ud800"]:
        assert not slot.take(wrong)
    assert slot.take("ab" * 32)
    assert not slot.take("ab" * 32), "a secret is good for one registration"
    assert "ab" * 32 not in repr(WorkerSlot(1, [1], secret="ab" * 32))
