"""Bad input at the CLI (issue 12): one line naming the option, a documented exit code, no
traceback, and nothing started before the configuration is known good.

Most cases run in-process with click's CliRunner (a wrong value must be refused before any
command body starts a server, so nothing is left running); a few run the real console entry
as a subprocess, the way an operator meets them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from shardctl.cli import main

#: Variables that would feed `run` values from this test's environment.
CLEAN_ENV: dict[str, str | None] = {
    "DISCORD_TOKEN": None, "SHARDCTL_TOKEN": None, "SHARDCTL_TOKEN_FILE": None,
    "SHARDCTL_CONFIG": None, "SHARDCTL_API_URL": None, "SHARDCTL_KEYS": None,
    "SHARDCTL_LOG_FORMAT": None, "SHARDCTL_LOG_LEVEL": None,
    "SHARDCTL_EVENTS_ENDPOINT": None, "SHARDCTL_CONTROL_ENDPOINT": None,
    "SHARDCTL_LIMITER_BIND": None, "SHARDCTL_SUPERVISOR": None,
}


def invoke(args: list[str], tmp: Path, **env: str | None) -> Result:
    """Run ``shardctl ARGS`` in-process with a private runtime directory."""
    environment = {**CLEAN_ENV, "SHARDCTL_RUNTIME_DIR": str(tmp / "run"), **env}
    return CliRunner().invoke(main, args, env=environment)


def assert_usage_error(result: Result, option: str) -> None:
    """Exit 2, a message naming ``option``, and no exception escaping the command."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert option in result.output, result.output


@contextmanager
def idle_listener() -> Iterator[socket.socket]:
    """A TCP listener nobody serves: a connection would sit in its backlog, so a
    non-blocking accept() tells whether anything tried to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


def nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def api_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}/api/v10"


# -- the cases issue 12 lists -------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf"])
def test_identify_interval_out_of_range_is_a_usage_error_without_a_token(
        tmp_path: Path, value: str) -> None:
    result = invoke(["run", f"--identify-interval={value}"], tmp_path)
    assert_usage_error(result, "--identify-interval")


def test_status_with_a_junk_control_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["status", "--control-endpoint", "junk"], tmp_path)
    assert_usage_error(result, "--control-endpoint")
    assert "tcp://HOST:PORT" in result.output  # says what is accepted


def test_events_with_a_junk_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["events", "--endpoint", "junk"], tmp_path)
    assert_usage_error(result, "--endpoint")


def test_a_metrics_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with idle_listener() as api, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke(["run", "--api-url", api_url(api), "--metrics-port", str(port)],
                        tmp_path, DISCORD_TOKEN="t0ken-abc")
        assert_usage_error(result, "--metrics-port")
        assert str(port) in result.output
        assert nobody_connected(api), "GET /gateway/bot was sent before the check"


def test_an_unresolvable_metrics_host_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    with idle_listener() as api:
        result = invoke(["run", "--api-url", api_url(api), "--metrics-port", "0",
                         "--metrics-host", "no-such-host.invalid"],
                        tmp_path, DISCORD_TOKEN="t0ken-abc")
        assert_usage_error(result, "--metrics-host")
        assert nobody_connected(api)


@pytest.mark.parametrize("url", ["http://[x", "ftp://discord.com/api", "discord.com",
                                 "https://", "http://127.0.0.1:99999/api", ""])
def test_a_malformed_api_url_is_a_usage_error(tmp_path: Path, url: str) -> None:
    result = invoke(["run", "--api-url", url], tmp_path, DISCORD_TOKEN="t0ken-abc")
    assert_usage_error(result, "--api-url")
    assert "t0ken-abc" not in result.output


def test_a_runtime_directory_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for args in (["status"], ["run"]):
        result = invoke(args, tmp_path, SHARDCTL_RUNTIME_DIR=str(blocker / "run"))
        assert_usage_error(result, "SHARDCTL_RUNTIME_DIR")
        assert str(blocker / "run") in result.output


def test_keys_generate_into_an_unwritable_directory_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = invoke(["keys", "generate", "--dir", str(blocker / "keys")], tmp_path)
    assert_usage_error(result, "--dir")


# -- the same cases as an operator meets them: the console entry in a subprocess ----------


@pytest.mark.slow
@pytest.mark.parametrize(("args", "option"), [
    (["run", "--identify-interval", "-1"], "--identify-interval"),
    (["run", "--identify-interval", "nan"], "--identify-interval"),
    (["status", "--control-endpoint", "junk"], "--control-endpoint"),
    (["events", "--endpoint", "junk"], "--endpoint"),
    (["run", "--token", "t0ken-abc", "--api-url", "http://[x"], "--api-url"),
])
def test_the_console_entry_prints_one_error_line_and_exits_2(
        tmp_path: Path, args: list[str], option: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SHARDCTL_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "shardctl.cli", *args], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(errors) == 1, result.stderr
    assert option in errors[0]
    assert "t0ken-abc" not in result.stderr
