"""``shardctl limiter``: refusals at the edge, and a standalone service shared over ipc://."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.cluster.limiter_service import SessionLimiterService
from shardctl.ipc.limiter import LimiterClient
from shardctl.ports import unused_port


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="slcli-") as d:
        yield Path(d)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--identify-interval", "1"], 2, "add --sandbox"),
        (["--reset-after", "1000"], 2, "--reset-after needs --remaining"),
        (["--total", "10"], 2, "--total needs --remaining"),
        (["--bind", "tcp://0.0.0.0:7000"], 2, "CURVE"),
        (["--bind", "tcp://0.0.0.0:7000", "--sandbox", "--identify-interval", "0.1"], 2,
         "loopback"),
        (["--bind", "udp://x:1"], 2, "unsupported endpoint"),
        (["--bind", "tcp://127.0.0.1:7000"], 2, "--insecure-loopback"),
        (["--max-concurrency", "0"], 2, "max-concurrency"),
        (["--identify-margin-ms", "nan"], 2, "Invalid value for '--identify-margin-ms'"),
        (["--identify-margin-percent", "-1"], 2, "Invalid value for '--identify-margin-percent'"),
    ],
)
def test_refusals(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(main, ["limiter", *args])
    assert result.exit_code == code, result.output
    assert message in result.output


def test_help_documents_the_sandbox_rule() -> None:
    result = CliRunner().invoke(main, ["limiter", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # help is wrapped to the terminal
    assert "Below 5 only with --sandbox" in text
    assert "would earn op 9" in text


@pytest.mark.anyio
async def test_standalone_service_paces_a_client_and_stops_cleanly(short_dir: Path) -> None:
    sock = short_dir / "limiter.sock"
    interval = 0.1
    process = await anyio.open_process(
        [sys.executable, "-c", "from shardctl.cli import main; main()", "limiter",
         "--bind", f"ipc://{sock}", "--identify-interval", str(interval), "--sandbox",
         "--remaining", "10", "--total", "10", "--reset-after", "60000"],
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(8):
            line = b""
            async for chunk in process.stdout:
                line += chunk
                if b"\n" in line:
                    break
            assert line.strip().decode() == f"ipc://{sock}"
            entered: list[tuple[float, float]] = []
            async with LimiterClient(f"ipc://{sock}") as client:
                for shard in range(3):
                    async with client.identify(shard):
                        entered.append((anyio.current_time(), 0.0))
                    entered[-1] = (entered[-1][0], anyio.current_time())
            # Each grant came at least an interval after the previous holder was done
            # (its release), measured here, on the client's own clock.
            for (_, left), (came, _) in itertools.pairwise(entered):
                assert came - left >= interval
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
        assert not sock.exists()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.fail_after(5):
                await process.wait()
        await process.aclose()


async def _run_against(limiter: str, short_dir: Path) -> tuple[int | None, str, float]:
    """``shardctl run --limiter LIMITER`` on the built-in sandbox: (exit code, stderr, s)."""
    env = {**os.environ, "SHARDCTL_RUNTIME_DIR": str(short_dir)}
    env.pop("DISCORD_TOKEN", None)  # the built-in sandbox: nothing leaves this host
    started = time.monotonic()
    process = await anyio.open_process(
        [sys.executable, "-m", "shardctl.cli", "run", "--limiter", limiter,
         "--limiter-timeout", "2", "--processes", "1", "--shards", "1",
         "--state-file", str(short_dir / "s.json"), "--log-format", "json"],
        env=env, stdout=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        err = ""
        with anyio.move_on_after(30):
            async for chunk in process.stderr:
                err += chunk.decode()
            await process.wait()
        return process.returncode, err, time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.aclose()


def _error_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if x.startswith("shardctl: error:")]
    assert "Traceback" not in err
    assert "worker 0 started" not in err  # nothing was spawned
    return line


@pytest.mark.anyio
@pytest.mark.slow
async def test_run_with_a_limiter_nobody_serves_fails_fast_naming_it(short_dir: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{unused_port()}"
    code, err, took = await _run_against(endpoint, short_dir)
    assert code == 2, err
    assert took < 20  # the sandbox's start, then the 2 s wait, not forever
    line = _error_line(err)
    assert endpoint in line and "no limiter answered" in line


@pytest.mark.anyio
@pytest.mark.slow
async def test_run_with_a_limiter_that_refuses_its_limits_fails_saying_why(
        short_dir: Path) -> None:
    # A loopback limiter without keys: anyone may ask it for slots, nobody may set its pace.
    server = SessionLimiterService("tcp://127.0.0.1:*", insecure_loopback=True)
    async with anyio.create_task_group() as tg:
        endpoint = await tg.start(server.serve)
        code, err, _ = await _run_against(endpoint, short_dir)
        tg.cancel_scope.cancel()
    assert code == 2, err
    line = _error_line(err)
    assert endpoint in line and "refused our limits" in line and "anonymous" in line
    assert server.scheduler.max_concurrency == 1
