"""The CLI's security options: a loopback tcp control endpoint needs keys or an explicit
--insecure-loopback, and a worker started by hand without its secret is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shardctl.ports import unused_port

CLI = [sys.executable, "-m", "shardctl.cli"]


def test_run_refuses_a_loopback_tcp_control_endpoint_without_keys_or_opt_in(
        tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{unused_port()}"
    env = {"SHARDCTL_RUNTIME_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [*CLI, "run", "--token", "t0k3n-never-used", "--api-url", "http://127.0.0.1:9",
         "--control-endpoint", endpoint], env=env, capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert endpoint in errors[0] and "--insecure-loopback" in errors[0]
    assert "every user of this host" in errors[0]


@pytest.mark.parametrize("stdin", ["", "not-a-secret\n", "AB" * 32 + "\n"])
def test_a_worker_with_an_index_but_no_secret_on_stdin_is_refused(stdin: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardctl.worker", "--control", "ipc:///nonexistent/c",
         "--index", "0"], input=stdin, capture_output=True, text=True, timeout=60,
        check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "per-spawn secret" in result.stderr.splitlines()[-1]


def test_run_config_takes_loopback_tcp_control_only_with_keys_or_the_opt_in(
        tmp_path: Path) -> None:
    from shardctl.cluster.config import RunConfig
    from shardctl.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="--insecure-loopback"):
        RunConfig(token="t", control_endpoint="tcp://127.0.0.1:5555")
    RunConfig(token="t", control_endpoint="tcp://127.0.0.1:5555", insecure_loopback=True)
    RunConfig(token="t", control_endpoint="tcp://127.0.0.1:5555", curve_keys=tmp_path)
    RunConfig(token="t", control_endpoint=f"ipc://{tmp_path}/control.sock")
