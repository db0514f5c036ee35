"""Bad input at the CLI: each gets a specific message and exit code, no traceback, no token,
no retry storm, and other shards' sessions are kept (``exit_code_for`` in ``cli.py``)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import orjson
import pytest

from shardctl.sandbox import Close, Sandbox, SandboxConfig, ScheduledFault

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "sandbox-token"
CLI = [sys.executable, "-m", "shardctl.cli"]


def config(**kw: object) -> SandboxConfig:
    args: dict[str, object] = {"shard_count": 2, "max_concurrency": 2, "identify_interval": 0.2,
                               "guilds_per_shard": 2}
    args.update(kw)
    return SandboxConfig(**args)  # type: ignore[arg-type]


def run_args(sb_api: str, tmp: Path, *extra: str, token: str = TOKEN) -> list[str]:
    return [*CLI, "run", "--token", token, "--api-url", sb_api, "--processes", "1",
            "--identify-interval", "0.2", "--state-file", str(tmp / "state.json"),
            "--log-level", "WARNING", *extra]


async def run(args: list[str], tmp: Path) -> tuple[int, str]:
    env = {"SHARDCTL_RUNTIME_DIR": str(tmp), "PATH": "/usr/bin:/bin"}
    with anyio.fail_after(40):
        result = await anyio.run_process(args, check=False, env=env)
    out = (result.stdout + result.stderr).decode()
    assert "Traceback" not in out, out
    return result.returncode, out


def assert_no_retry_storm(sb: Sandbox) -> None:
    assert "retry_after_fatal_close" not in {v.rule for v in sb.violations}
    assert (sb.attempts_after_fatal or 0) <= 1


async def test_wrong_token_rest_401_exits_3_without_the_token(tmp_path: Path) -> None:
    async with Sandbox(config()) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path, token="wr0ng-s3cret"), tmp_path)
        assert code == 3, out
        assert "HTTP 401" in out and "token" in out
        assert "wr0ng-s3cret" not in out
        assert [r.details["status"] for r in sb.records("rest")] == [401]  # never retried
        assert not sb.records("connect")


async def test_gateway_4004_exits_3_and_stops(tmp_path: Path) -> None:
    # REST still takes the token; the gateway rejects it (a token reset between the two).
    cfg = config(shard_count=1, faults=(ScheduledFault(Close(4004), trigger="connect"),))
    async with Sandbox(cfg) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path), tmp_path)
        assert code == 3, out
        assert "4004" in out and "Reset Token" in out and TOKEN not in out
        assert_no_retry_storm(sb)
        assert len(sb.records("connect")) == 1


async def test_disallowed_intents_4014_names_them_and_the_portal(tmp_path: Path) -> None:
    async with Sandbox(config(privileged_intents=0)) as sb:
        intents = "GUILDS,GUILD_MESSAGES,GUILD_MEMBERS,MESSAGE_CONTENT"
        code, out = await run(run_args(sb.api_url, tmp_path, "--intents", intents), tmp_path)
        assert code == 4, out
        assert "4014" in out and "GUILD_MEMBERS" in out and "MESSAGE_CONTENT" in out
        assert "Developer Portal" in out and "Privileged Gateway Intents" in out
        assert_no_retry_storm(sb)
        assert not sb.records("identify")


async def test_invalid_shard_count_4010_exits_6(tmp_path: Path) -> None:
    async with Sandbox(config(required_shard_multiple=2)) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path, "--shards", "3"), tmp_path)
        assert code == 6, out
        assert "4010" in out and "/gateway/bot" in out
        assert_no_retry_storm(sb)


async def test_sharding_required_4011_exits_6(tmp_path: Path) -> None:
    async with Sandbox(config(max_guilds_per_shard=1)) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path), tmp_path)
        assert code == 6, out
        assert "4011" in out
        assert_no_retry_storm(sb)


async def test_a_fatal_close_on_one_shard_keeps_the_other_shards_sessions(
        tmp_path: Path) -> None:
    cfg = config(faults=(ScheduledFault(Close(4010), after=0.3, shard_id=1),))
    async with Sandbox(cfg) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path), tmp_path)
        assert code == 6, out
        closes = [r.details["code"] for r in sb.records("client_close", 0)]
        assert closes and all(c not in (1000, 1001) for c in closes), closes
        saved = orjson.loads((tmp_path / "state.json").read_bytes())
        assert [s["shard_id"] for s in saved["sessions"]] == [0]
        assert_no_retry_storm(sb)


async def test_exhausted_session_budget_exits_5_before_identifying(tmp_path: Path) -> None:
    async with Sandbox(config(session_start_remaining=0)) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path), tmp_path)
        assert code == 5, out
        assert "only 0 of 1000" in out
        assert not sb.records("connect")


async def _run_until_ready(sb: Sandbox, args: list[str], tmp: Path, shards: int) -> str:
    """Run ``shardctl run`` until ``shards`` sessions are up, then SIGTERM it; its output."""
    env = {"SHARDCTL_RUNTIME_DIR": str(tmp), "PATH": "/usr/bin:/bin"}
    log = tmp / "run.log"
    with log.open("wb") as sink:
        process = await anyio.open_process(args, env=env, stdout=sink, stderr=sink)
        try:
            await sb.wait_for(lambda: len(sb.records("ready")) + len(sb.records("resumed"))
                              >= shards, timeout=30)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()
    out = log.read_text()
    assert "Traceback" not in out, out
    return out


async def test_rest_429_is_waited_out_then_the_cluster_starts(tmp_path: Path) -> None:
    async with Sandbox(config(rest_429_count=2, rest_retry_after=0.2)) as sb:
        out = await _run_until_ready(sb, run_args(sb.api_url, tmp_path), tmp_path, 2)
        assert [r.details["status"] for r in sb.records("rest")] == [429, 429, 200]
        assert "rate limited" in out


async def test_rest_5xx_is_retried_a_bounded_number_of_times_then_exits_8(
        tmp_path: Path) -> None:
    async with Sandbox(config()) as sb:
        sb.inject_rest_error(503, count=100)
        code, out = await run(run_args(sb.api_url, tmp_path), tmp_path)
        assert code == 8, out
        assert "HTTP 503" in out
        assert [r.details["status"] for r in sb.records("rest")] == [503] * 4


async def test_rest_5xx_then_success_starts(tmp_path: Path) -> None:
    async with Sandbox(config()) as sb:
        sb.inject_rest_error(502)
        await _run_until_ready(sb, run_args(sb.api_url, tmp_path), tmp_path, 2)
        assert [r.details["status"] for r in sb.records("rest")] == [502, 200]


async def test_unreachable_api_exits_8(tmp_path: Path) -> None:
    code, out = await run(run_args("http://127.0.0.1:9/api/v10", tmp_path), tmp_path)
    assert code == 8, out
    assert "cannot reach the Discord API" in out


async def test_a_malformed_state_file_is_ignored_and_the_cluster_identifies(
        tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b'{"format": 1, "sessions": [1, "x", null')
    async with Sandbox(config()) as sb:
        await _run_until_ready(sb, run_args(sb.api_url, tmp_path), tmp_path, 2)
        assert len(sb.records("identify")) == 2


@pytest.mark.parametrize(("shard_ids", "message"), [
    ("9-2", "invalid shard id range '9-2'"),
    ("0-5", "shard id 5 is out of range for 2 shards"),
    ("x", "expected N or A-B"),
])
async def test_malformed_shard_ids_exit_2_before_any_connection(
        tmp_path: Path, shard_ids: str, message: str) -> None:
    async with Sandbox(config()) as sb:
        code, out = await run(run_args(sb.api_url, tmp_path, "--shard-ids", shard_ids),
                              tmp_path)
        assert code == 2, out
        assert message in out
        assert not sb.records("connect")


@pytest.mark.parametrize("flags", [
    ["--processes", "-1"],
    ["--intents", "NOT_AN_INTENT"],
    ["--shards", "many"],
    ["--compression", "gzip"],
    ["--identify-interval", "-1"],
    ["--identify-margin-ms", "nan"],
    ["--identify-margin-ms", "-5"],
    ["--identify-margin-percent", "inf"],
    ["--shards", "0"],
    ["--no-such-flag"],
])
async def test_bad_flags_exit_2_with_a_usage_message(tmp_path: Path, flags: list[str]) -> None:
    code, out = await run([*CLI, "run", "--token", "t0ken-x", "--api-url",
                           "http://127.0.0.1:9/api/v10", *flags], tmp_path)
    assert code == 2, out
    assert "error:" in out.lower()
    assert "t0ken-x" not in out

