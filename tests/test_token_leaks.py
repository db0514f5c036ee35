"""The bot token never shows: not in logs, reprs, exceptions, config, status or metrics.

A whole cluster runs against the sandbox with a distinctive token (the sandbox is configured
to accept exactly it) at DEBUG; everything it prints -- the supervisor's and every worker's
stdout and stderr, ``shardctl status``, ``shardctl config``, ``/metrics`` -- is grepped for
the token.  Status, config and metrics are included when this build has them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from shardctl import errors
from shardctl.cli import main as cli_main
from shardctl.cluster.config import RunConfig
from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.ports import unused_port
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.worker.shard import Shard

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Distinctive, so any leak (whole, or its most telling part) is unmistakable in a grep.
TOKEN = "MTA5LEAKCANARY.Gx7Qz9.s3cr3t-t0k3n-n3v3r-l0gg3d_Zq8wYv2"
SECRET_PART = "s3cr3t-t0k3n-n3v3r-l0gg3d"


def assert_clean(text: str, where: str) -> None:
    assert TOKEN not in text, f"the token appears in {where}"
    assert SECRET_PART not in text, f"part of the token appears in {where}"


def sandbox_config() -> SandboxConfig:
    return SandboxConfig(shard_count=4, max_concurrency=4, identify_interval=0.2,
                         heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0,
                         token=TOKEN)


@contextmanager
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sc-tok-") as tmp:
        yield Path(tmp)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardctl.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_a_full_run_never_prints_the_token() -> None:
    commands = set(cli_main.commands)  # type: ignore[attr-defined]
    run_options = {p.name for p in cli_main.commands["run"].params}  # type: ignore[attr-defined]
    with short_dir() as run_dir:
        env = {**os.environ, "SHARDCTL_RUNTIME_DIR": str(run_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("DISCORD_TOKEN", None)
        outputs: list[tuple[str, str]] = []
        async with Sandbox(sandbox_config()) as sb:
            metrics_port = unused_port()
            args = ["run", "--token", TOKEN, "--api-url", sb.api_url, "--processes", "2",
                    "--identify-interval", "0.2", "--log-level", "DEBUG",
                    "--state-file", str(run_dir / "state.json")]
            if "metrics_port" in run_options:
                args += ["--metrics-port", str(metrics_port)]
            out, err = run_dir / "run.out", run_dir / "run.err"
            with out.open("wb") as stdout, err.open("wb") as stderr:
                process = await anyio.open_process(
                    [sys.executable, "-m", "shardctl.cli", *args], env=env, stdout=stdout,
                    stderr=stderr)
            try:
                with anyio.fail_after(60):
                    while len(sb.records("identify")) < 4 or b"READY" not in out.read_bytes():
                        assert process.returncode is None, err.read_text()[-3000:]
                        await anyio.sleep(0.2)
                await sb.dispatch(0, "MESSAGE_CREATE", {"id": "1", "content": "hi"})
                if "status" in commands:
                    result = await anyio.to_thread.run_sync(
                        lambda: cli("status", "--json", env=env))
                    assert result.returncode == 0, result.stderr
                    outputs.append(("shardctl status", result.stdout + result.stderr))
                if "metrics_port" in run_options:
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    body = await anyio.to_thread.run_sync(
                        lambda: urllib.request.urlopen(url, timeout=10).read().decode())
                    assert "shardctl" in body
                    outputs.append(("/metrics", body))
            finally:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
            outputs.append(("shardctl run stdout", out.read_text()))
            outputs.append(("shardctl run stderr (supervisor and workers)", err.read_text()))
        if "config" in commands:
            result = cli("config", "--token", TOKEN, env=env)
            outputs.append(("shardctl config", result.stdout + result.stderr))
            result = cli("config", env={**env, "DISCORD_TOKEN": TOKEN})
            outputs.append(("shardctl config (token from the environment)",
                            result.stdout + result.stderr))
        state = run_dir / "state.json"
        if state.exists():
            outputs.append(("the state file", state.read_text()))
    stderr_text = dict(outputs)["shardctl run stderr (supervisor and workers)"]
    assert "DEBUG" in stderr_text and "worker" in stderr_text  # we grepped real logs
    for where, text in outputs:
        assert_clean(text, where)


async def test_reprs_logs_and_errors_never_show_the_token(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SHARDCTL_LOG_LEVEL", "DEBUG")  # the worker process logs everything
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config()) as sb:
            sup = Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                             identify_interval=0.2, runtime_dir=run_dir,
                             intents=Intents.default(), state_file=run_dir / "state.json")
            async with sup:
                with anyio.fail_after(30):
                    await sup.wait_ready()
                texts = [repr(sup), repr(sup.config), str(sup.config), repr(sup.status()),
                         repr(sup.slots), repr(sup._assignment(sup.slots[0])),
                         repr(sup.endpoints)]
            shard = Shard(id=0, token=TOKEN, total_shard_count=1, gateway=sb.gateway_url,
                          output=None, intents=Intents.default())
            texts.append(repr(shard))
            # A rejected token: the error names the problem, never the token.
            wrong = TOKEN.replace("LEAKCANARY", "WRONGTOKEN")
            with pytest.raises(errors.AuthenticationError) as info:
                async with Supervisor(token=wrong, api_url=sb.api_url, processes=1,
                                      identify_interval=0.2, runtime_dir=run_dir):
                    pass
            for text in (str(info.value), repr(info.value)):
                assert wrong not in text and "WRONGTOKEN" not in text
    with pytest.raises(errors.ConfigurationError) as bad:
        RunConfig(token=TOKEN, processes=-1)
    texts += [str(bad.value), repr(bad.value)]
    captured = capfd.readouterr()
    # Every logger of this process but the sandbox's server side, which plays Discord.
    ours = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
        if not r.name.startswith(("shardctl.sandbox", "websockets.server")))
    assert "worker" in captured.err  # the worker process's logs were captured
    for where, text in [("reprs and errors", "\n".join(texts)),
                        ("supervisor logs", ours),
                        ("worker stdout/stderr", captured.out + captured.err)]:
        assert_clean(text, where)


def test_refused_token_sources_and_destinations_never_show_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message of the token's new paths (issue 12): a token file others can read, a
    file holding more than the token, a config file holding it, plain http to another
    host, the argv warning, `config` with a token file."""
    from click.testing import CliRunner

    from shardctl.cli.token import TokenFile

    monkeypatch.chdir(tmp_path)
    env: dict[str, str | None] = {
        "DISCORD_TOKEN": None, "SHARDCTL_TOKEN": None, "SHARDCTL_TOKEN_FILE": None,
        "SHARDCTL_CONFIG": None, "SHARDCTL_RUNTIME_DIR": str(tmp_path / "run"),
        "SHARDCTL_LOG_FORMAT": None, "SHARDCTL_LOG_LEVEL": None}
    readable = tmp_path / "readable"
    readable.write_text(TOKEN + "\n")
    readable.chmod(0o644)
    two_lines = tmp_path / "two-lines"
    two_lines.write_text(f"{TOKEN}\n{TOKEN}\n")
    two_lines.chmod(0o600)
    private = tmp_path / "private"
    private.write_text(TOKEN + "\n")
    private.chmod(0o600)
    toml = tmp_path / "with-token.toml"
    toml.write_text(f'token = "{TOKEN}"\n')
    toml.chmod(0o644)
    runs: list[tuple[list[str], dict[str, str | None], int]] = [
        (["run", "--token-file", str(readable)], {}, 2),
        (["run", "--token-file", str(two_lines)], {}, 2),
        (["run", "--config", str(toml)], {}, 2),
        (["run", "--api-url", "http://example.com/api/v10"], {"DISCORD_TOKEN": TOKEN}, 2),
        (["run", "--token", TOKEN, "--token-file", str(private)], {}, 2),
        (["config", "--token", TOKEN, "--config", str(tmp_path / "none.toml")], {}, 2),
        (["config", "--token-file", str(private)], {}, 0),
    ]
    for args, extra, code in runs:
        result = CliRunner().invoke(cli_main, args, env={**env, **extra})
        where = f"shardctl {' '.join(a for a in args if TOKEN not in a)}"
        assert result.exit_code == code, (where, result.output)
        assert_clean(result.output, where)
    assert_clean(repr(TokenFile(str(private), TOKEN)) + str(TokenFile(str(private), TOKEN)),
                 "TokenFile repr")
    with pytest.raises(errors.ConfigurationError) as http:
        RunConfig(token=TOKEN, api_url="http://example.com/api/v10")
    assert_clean(str(http.value) + repr(http.value), "the error of the http rule")
