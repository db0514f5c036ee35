"""The documented exit codes of `shardctl run` (README "Exit codes")."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner

from shardctl import errors
from shardctl.cli import exit_code_for, main
from shardctl.cluster.supervisor import CrashLoopError


def test_each_fatal_cause_has_its_own_code() -> None:
    codes = {
        "auth": exit_code_for(errors.AuthenticationError("bad token", code=4004)),
        "intents": exit_code_for(errors.DisallowedIntentsError("privileged", code=4014)),
        "budget": exit_code_for(errors.SessionBudgetError("no starts left")),
        "fatal": exit_code_for(errors.GatewayFatalError("4012", code=4012)),
        "crash loop": exit_code_for(CrashLoopError("again")),
        "api": exit_code_for(errors.DiscordError("502")),
        "unexpected": exit_code_for(RuntimeError("bug")),
    }
    assert codes == {"auth": 3, "intents": 4, "budget": 5, "fatal": 6, "crash loop": 7,
                     "api": 8, "unexpected": 1}
    assert exit_code_for(errors.ConfigurationError("bad")) == 2


@pytest.mark.parametrize("args", [["--processes", "-1"], ["--shards", "none"],
                                  ["--intents", "NOT_AN_INTENT"], ["--bogus"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["run", *args], env={"SHARDCTL_CONFIG": None})
    assert result.exit_code == 2, result.output


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`run` configures the root logger of the process it runs in: put it back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_a_rejected_token_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    def reject(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"message": "401: Unauthorized", "code": 0})

    real = httpx.AsyncClient

    def client(*args: object, **kwargs: object) -> httpx.AsyncClient:
        kwargs["transport"] = httpx.MockTransport(reject)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx, "AsyncClient", client)
    # `run` hands its log settings to workers through the environment: restore it after.
    env = {"SHARDCTL_CONFIG": None, "SHARDCTL_LOG_FORMAT": None, "SHARDCTL_LOG_LEVEL": None}
    result = CliRunner().invoke(main, ["run", "--token", "bad", "--log-format", "json"],
                                env=env)
    assert result.exit_code == 3, result.output
