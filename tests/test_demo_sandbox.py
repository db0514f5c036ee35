"""`shardctl run` without a token: the built-in sandbox, announced first, kept apart."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from runkit import run_env

pytestmark = pytest.mark.slow


def test_the_first_line_names_the_sandbox_and_its_sessions_stay_out_of_the_state_dir() -> None:
    with run_env() as (path, env):
        env["XDG_STATE_HOME"] = str(path / "state-home")
        args = [sys.executable, "-m", "shardctl.cli", "run", "--processes", "1",
                "--identify-interval", "0.2"]
        process = subprocess.Popen(args, env=env, cwd=path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        watchdog = threading.Timer(30, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            lines = []
            for line in process.stdout:
                lines.append(line)
                if "shards READY after" in line:
                    break
            process.send_signal(signal.SIGINT)
            process.stdout.read()
            assert process.wait() == 0
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        assert lines[0].startswith("shardctl: no token set"), lines[:2]
        assert "sandbox" in lines[0]
        assert (path / "run" / "sandbox-sessions.json").is_file()
        assert not (path / "state-home").exists()
