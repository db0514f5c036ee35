"""``shardctl limiter``: refusals at the edge, and a standalone service shared over ipc://."""

from __future__ import annotations

import itertools
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.ipc.limiter import LimiterClient


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
        (["--max-concurrency", "0"], 2, "max-concurrency"),
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
