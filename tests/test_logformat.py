"""`shardctl run` without a terminal: plain lines, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading

import pytest

from runkit import run_args, run_env
from shardctl.logformat import JsonFormatter

pytestmark = pytest.mark.slow


def run_until_ready(extra: list[str], marker: str, stream: str) -> tuple[int, str, str]:
    """Start `shardctl run`, wait for ``marker`` on ``stream``, SIGINT it, collect output."""
    with run_env() as (path, env):
        process = subprocess.Popen(run_args(path, *extra), env=env, cwd=path, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        watchdog = threading.Timer(30, process.kill)
        watchdog.start()
        try:
            watched = process.stdout if stream == "stdout" else process.stderr
            other = process.stderr if stream == "stdout" else process.stdout
            assert watched is not None and other is not None
            collected: list[str] = []
            drain = threading.Thread(target=lambda: collected.append(other.read()))
            drain.start()
            seen = []
            for line in watched:
                seen.append(line)
                if marker in line:
                    break
            process.send_signal(signal.SIGINT)
            seen.append(watched.read())
            code = process.wait()
            drain.join()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
    watched_text, other_text = "".join(seen), "".join(collected)
    out, err = (watched_text, other_text) if stream == "stdout" else (other_text, watched_text)
    return code, out, err


def test_without_a_terminal_run_prints_plain_lines() -> None:
    code, out, err = run_until_ready([], "shards READY after", "stdout")
    assert code == 0, err
    assert "\x1b[" not in out  # no live view, no colours
    assert "shardctl: all 8 shards READY after" in out
    assert "shardctl: 8 shards over 2 workers" in out
    assert " INFO shardctl.cluster.supervisor: " in err


def test_log_format_json_writes_one_json_object_per_line() -> None:
    code, out, err = run_until_ready(["--log-format", "json"], "shards READY after", "stderr")
    assert code == 0, err
    assert out == ""
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert {"ts", "level", "logger", "process", "msg"} <= set(records[0])
    messages = [r["msg"] for r in records]
    assert any(m.startswith("all 8 shards READY after") for m in messages)
    # The workers inherit the format: any line of theirs is JSON too, named by worker.
    assert {r["process"] for r in records} <= {"supervisor", "worker[0]", "worker[1]"}
    assert any("sessions saved" in m for m in messages)


def test_json_formatter_keeps_one_line_per_record() -> None:
    record = logging.LogRecord("shardctl.x", logging.WARNING, __file__, 1,
                               "two\nlines %s", ("arg",), None)
    line = JsonFormatter("worker[3]").format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["msg"] == "two\nlines arg"
    assert data["level"] == "WARNING" and data["process"] == "worker[3]"
    assert data["ts"].endswith("Z")
