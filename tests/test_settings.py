"""Where `shardctl run` options come from: command line > environment > file > default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from shardctl.cli import main

CLEAN_ENV = {"DISCORD_TOKEN": None, "SHARDCTL_TOKEN": None, "SHARDCTL_PROCESSES": None,
             "SHARDCTL_CONFIG": None, "SHARDCTL_SHARDS": None, "SHARDCTL_INTENTS": None}


def resolved(args: list[str], env: dict[str, str | None] | None = None
             ) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Exit code, key -> (value text, source), and the whole output of `shardctl config`."""
    result = CliRunner().invoke(main, ["config", *args], env={**CLEAN_ENV, **(env or {})})
    values = {}
    for line in result.output.splitlines():
        if line.startswith("# ") and "= (not set)" in line:
            key = line[2:].split(" = ", 1)[0]
            values[key] = ("", line.rsplit("  # ", 1)[1])
        elif " = " in line:
            key, rest = line.split(" = ", 1)
            value, source = rest.rsplit("  # ", 1)
            values[key] = (value, source)
    return result.exit_code, values, result.output


def test_precedence_is_command_line_then_environment_then_file_then_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shardctl.toml").write_text(
        'processes = 2\nshards = 8\nintents = "GUILDS"\ncompression = "zstd-stream"\n')
    code, values, output = resolved(
        ["--processes", "6"],
        env={"SHARDCTL_PROCESSES": "4", "SHARDCTL_SHARDS": "12"})
    assert code == 0, output
    assert values["processes"] == ("6", "command line")
    assert values["shards"] == ('"12"', "environment SHARDCTL_SHARDS")
    assert values["intents"] == ('"GUILDS"', "file shardctl.toml")
    assert values["compression"] == ('"zstd-stream"', "file shardctl.toml")
    assert values["identify-interval"] == ("5.0", "default")


def test_an_explicit_config_file_replaces_the_default_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shardctl.toml").write_text("processes = 2\n")
    other = tmp_path / "other.toml"
    other.write_text("processes = 5\nignore_session_start_limit = true\n")
    code, values, output = resolved([], env={"SHARDCTL_CONFIG": str(other)})
    assert code == 0, output
    assert values["processes"] == ("5", f"file {other}")
    assert values["ignore-session-start-limit"] == ("true", f"file {other}")


def test_the_token_is_redacted_wherever_it_comes_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    secret = "MTIz.secret-token-value"
    for args, env in ((["--token", secret], {}), ([], {"DISCORD_TOKEN": secret}),
                      ([], {"SHARDCTL_TOKEN": secret})):
        code, values, output = resolved(args, env)
        assert code == 0, output
        assert values["token"][0] == '"***"'
        assert secret not in output and "secret" not in output
    (tmp_path / "shardctl.toml").write_text(f'token = "{secret}"\n')
    (tmp_path / "shardctl.toml").chmod(0o600)
    code, values, output = resolved([])
    assert values["token"] == ('"***"', "file shardctl.toml")
    assert secret not in output


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_config_file_holding_the_token_must_be_private(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int) -> None:
    monkeypatch.chdir(tmp_path)
    secret = "MTIz.secret-token-value"
    path = tmp_path / "shardctl.toml"
    path.write_text(f'processes = 2\ntoken = "{secret}"\n')
    path.chmod(mode)
    for command in ("config", "run"):
        result = CliRunner().invoke(main, [command], env=CLEAN_ENV)
        assert result.exit_code == 2, result.output
        assert "chmod 600" in result.output and "shardctl.toml" in result.output
        assert secret not in result.output and "secret" not in result.output


def test_a_readable_config_file_without_the_token_is_fine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shardctl.toml").write_text("processes = 2\n")
    (tmp_path / "shardctl.toml").chmod(0o644)
    code, values, output = resolved([])
    assert code == 0, output
    assert values["processes"] == ("2", "file shardctl.toml")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("procesess = 4\n", "unknown key 'procesess'"),
        ('processes = "four"\n', "bad value for 'processes'"),
        ("processes = -1\n", "bad value for 'processes'"),
        ('compression = "brotli"\n', "bad value for 'compression'"),
        ('intents = "GUILDS,NOT_AN_INTENT"\n', "bad value for 'intents'"),
        ('shards = "many"\n', "bad value for 'shards'"),
        ("ignore-session-start-limit = 1\n", "bad value for 'ignore-session-start-limit'"),
        ("identify-margin-ms = nan\n", "bad value for 'identify-margin-ms'"),
        ("identify-margin-percent = -1\n", "bad value for 'identify-margin-percent'"),
        ("processes = [\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_a_usage_error_naming_the_key_and_the_file(
        tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(content)
    for command in ("config", "run"):
        result = CliRunner().invoke(main, [command, "--config", str(path)], env=CLEAN_ENV)
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert str(path) in result.output


def test_a_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["config", "--config", str(tmp_path / "nope.toml")],
                                env=CLEAN_ENV)
    assert result.exit_code == 2
    assert "nope.toml" in result.output


def test_a_bad_environment_value_is_a_usage_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["config"], env={**CLEAN_ENV, "SHARDCTL_PROCESSES": "x"})
    assert result.exit_code == 2
    assert "processes" in result.output
