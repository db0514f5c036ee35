"""/metrics with --stream: what the stream stored, what waits, whether NATS is reachable."""

from __future__ import annotations

import pytest
from streamkit import short_dir
from test_stream_commands import SHARDS, cluster

from shardctl.stream.server import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_metrics_show_what_the_stream_stored(nats_server: NatsServer) -> None:
    from shardctl.cluster.metrics import render, snapshot

    with short_dir() as run_dir:
        async with cluster(run_dir, nats_server.url, commands=False) as (_, sup):
            text = render(snapshot(sup)).decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("shardctl_stream_")}
    assert values["shardctl_stream_stored_total"] >= SHARDS  # every READY at least
    assert values["shardctl_stream_connected"] == 1
    assert values["shardctl_stream_stalls_total"] == 0
