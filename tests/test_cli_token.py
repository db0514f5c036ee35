"""Where `shardctl run` takes the token from, and that each way keeps it private (issue 12
item 6): DISCORD_TOKEN, --token-file (0600 only, or - for stdin), --token with a warning, and
never over plain http to another host."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from shardctl.cli import main
from shardctl.cli.token import ARGV_WARNING

SECRET = "MTA5TOKENFILE.Gx7Qz9.t0k3n-fr0m-a-f1le"
OTHER = "MTA5OTHERTOKEN.Gx7Qz9.an0ther-t0k3n"
CLEAN_ENV: dict[str, str | None] = {
    "DISCORD_TOKEN": None, "SHARDCTL_TOKEN": None, "SHARDCTL_TOKEN_FILE": None,
    "SHARDCTL_CONFIG": None, "SHARDCTL_API_URL": None, "SHARDCTL_KEYS": None,
    "SHARDCTL_LOG_FORMAT": None, "SHARDCTL_LOG_LEVEL": None,
}


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """`run` configures the root logger of the process it runs in: put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


class RejectingAPI:
    """GET /gateway/bot answers 401 (so `run` stops at once, exit 3) and keeps what the
    request carried."""

    def __init__(self) -> None:
        self.authorizations: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.authorizations.append(request.headers["Authorization"])
        return httpx.Response(401, json={"message": "401: Unauthorized", "code": 0})


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> RejectingAPI:
    handler = RejectingAPI()
    real = httpx.AsyncClient

    def client(*args: object, **kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(handler)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client)
    return handler


def run(args: list[str], tmp: Path, input: str | None = None, **env: str | None) -> Result:
    environment = {**CLEAN_ENV, "SHARDCTL_RUNTIME_DIR": str(tmp / "run"),
                   "XDG_STATE_HOME": str(tmp / "state"), **env}
    return CliRunner().invoke(main, ["run", "--log-format", "json", *args], env=environment,
                              input=input)


def token_file(tmp: Path, content: str = SECRET + "\n", mode: int = 0o600) -> Path:
    path = tmp / "token"
    path.write_text(content)
    path.chmod(mode)
    return path


def test_a_private_token_file_is_used_and_never_warned_about(
        tmp_path: Path, api: RejectingAPI) -> None:
    result = run(["--token-file", str(token_file(tmp_path))], tmp_path)
    assert result.exit_code == 3, result.output  # the API saw it and rejected it
    assert api.authorizations == [f"Bot {SECRET}"]
    assert "warning" not in result.output
    assert SECRET not in result.output


def test_the_token_file_can_come_from_the_environment(
        tmp_path: Path, api: RejectingAPI) -> None:
    result = run([], tmp_path, SHARDCTL_TOKEN_FILE=str(token_file(tmp_path)))
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]


def test_a_symlink_to_a_private_file_is_followed(tmp_path: Path, api: RejectingAPI) -> None:
    # Mounted secrets (Kubernetes, systemd credentials) are symlinks to the real file.
    link = tmp_path / "link"
    link.symlink_to(token_file(tmp_path))
    result = run(["--token-file", str(link)], tmp_path)
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]


def test_a_dash_reads_the_token_from_stdin(tmp_path: Path, api: RejectingAPI) -> None:
    result = run(["--token-file", "-"], tmp_path, input=SECRET + "\n")
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o444])
def test_a_token_file_other_users_can_read_is_refused_with_chmod_600(
        tmp_path: Path, api: RejectingAPI, mode: int) -> None:
    path = token_file(tmp_path, mode=mode)
    result = run(["--token-file", str(path)], tmp_path)
    assert result.exit_code == 2, result.output
    assert "--token-file" in result.output and f"chmod 600 {path}" in result.output
    assert SECRET not in result.output
    assert not api.authorizations


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("\n  \n", "is empty"),
    (f"{SECRET}\n{OTHER}\n", "alone, on one line"),
    (f"{SECRET} {OTHER}", "alone, on one line"),
    ("x" * 5000, "not a token"),
])
def test_a_token_file_not_holding_one_token_is_refused_without_its_content(
        tmp_path: Path, api: RejectingAPI, content: str, message: str) -> None:
    result = run(["--token-file", str(token_file(tmp_path, content))], tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert SECRET not in result.output and OTHER not in result.output
    assert "xxxx" not in result.output
    assert not api.authorizations


@pytest.mark.parametrize("where", ["missing", "directory", "stdin"])
def test_an_unreadable_token_source_is_one_line(tmp_path: Path, api: RejectingAPI,
                                                where: str) -> None:
    path = {"missing": str(tmp_path / "nope"), "directory": str(tmp_path), "stdin": "-"}[where]
    result = run(["--token-file", path], tmp_path, input="")
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "--token-file" in result.output
    assert not api.authorizations


def test_token_on_the_command_line_still_works_but_warns_once(
        tmp_path: Path, api: RejectingAPI) -> None:
    result = run(["--token", SECRET], tmp_path)
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]
    assert result.stderr.count(ARGV_WARNING) == 1
    assert "ps" in ARGV_WARNING and "DISCORD_TOKEN" in ARGV_WARNING
    assert SECRET not in result.output


def test_token_from_the_environment_does_not_warn(tmp_path: Path, api: RejectingAPI) -> None:
    result = run([], tmp_path, DISCORD_TOKEN=SECRET)
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]
    assert "warning" not in result.stderr


def test_the_command_line_beats_the_environment_between_token_sources(
        tmp_path: Path, api: RejectingAPI) -> None:
    result = run(["--token-file", str(token_file(tmp_path))], tmp_path, DISCORD_TOKEN=OTHER)
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]


def test_two_tokens_from_the_command_line_are_a_usage_error(
        tmp_path: Path, api: RejectingAPI) -> None:
    result = run(["--token", OTHER, "--token-file", str(token_file(tmp_path))], tmp_path)
    assert result.exit_code == 2, result.output
    assert "one way" in result.output
    assert SECRET not in result.output and OTHER not in result.output
    assert not api.authorizations


def test_config_shows_the_token_file_path_not_its_content(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    result = CliRunner().invoke(main, ["config", "--token-file", str(path)], env=CLEAN_ENV)
    assert result.exit_code == 0, result.output
    assert f'token-file = "{path}"  # command line' in result.output
    assert SECRET not in result.output


# -- never in clear to another host -------------------------------------------------------


@pytest.mark.parametrize("url", ["http://example.com/api/v10", "http://10.0.0.5:8080/api",
                                 "http://discord.com/api/v10"])
def test_plain_http_to_another_host_is_refused_with_a_token(
        tmp_path: Path, api: RejectingAPI, url: str) -> None:
    result = run(["--api-url", url], tmp_path, DISCORD_TOKEN=SECRET)
    assert result.exit_code == 2, result.output
    assert "--api-url" in result.output and "https://" in result.output
    assert SECRET not in result.output
    assert not api.authorizations  # nothing was sent


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/api/v10", "http://localhost:9/api",
                                 "http://[::1]:9/api", "https://example.com/api/v10"])
def test_https_anywhere_and_http_to_loopback_are_accepted(
        tmp_path: Path, api: RejectingAPI, url: str) -> None:
    result = run(["--api-url", url], tmp_path, DISCORD_TOKEN=SECRET)
    assert result.exit_code == 3, result.output
    assert api.authorizations == [f"Bot {SECRET}"]


def test_token_file_mode_is_judged_on_the_opened_file_not_a_name_checked_before(
        tmp_path: Path) -> None:
    # What is read is what was checked: the check is an fstat of the open descriptor.
    from shardctl.cli.token import _read_private_file

    path = token_file(tmp_path)
    assert _read_private_file(str(path)).strip() == SECRET
    os.chmod(path, 0o640)
    with pytest.raises(ValueError, match="chmod 600"):
        _read_private_file(str(path))
