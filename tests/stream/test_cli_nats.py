"""``shardctl nats``: a local JetStream server whose data outlives it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from shardctl.ports import unused_port

pytestmark = pytest.mark.anyio


async def jetstream_streams(url: str) -> int:
    """Streams the server holds, once it answers (a child process: retried until then)."""
    import nats

    while True:
        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
        except Exception:  # not listening yet
            await anyio.sleep(0.1)
            continue
        try:
            return int((await nc.jetstream().account_info()).streams)
        finally:
            await nc.close()


async def test_shardctl_nats_serves_jetstream_with_its_data_where_asked(tmp_path: Path
                                                                        ) -> None:
    import nats

    port = unused_port()
    url = f"nats://127.0.0.1:{port}"
    args = [sys.executable, "-m", "shardctl.cli", "nats", "--port", str(port),
            "--store-dir", str(tmp_path / "js")]
    for round_ in range(2):  # the stream made in the first run is there in the second
        process = await anyio.open_process(args, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
        try:
            with anyio.fail_after(30):
                streams = await jetstream_streams(url)
            if round_ == 0:
                assert streams == 0
                nc = await nats.connect(url)
                await nc.jetstream().add_stream(name="KEPT", subjects=["kept.>"])
                await nc.close()
            else:
                assert streams == 1
        finally:
            process.terminate()
            with anyio.fail_after(15):
                await process.wait()
    assert (tmp_path / "js" / "jetstream").is_dir()
