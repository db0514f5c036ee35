"""A CURVE cluster on one host: a local and a `shardctl worker` process, and a stranger.

The loopback twin of test_remote_workers (which needs root for network namespaces): every
channel runs CURVE, the spawned worker and the joining worker both use the authorised
``worker`` key, a peer with another key gets no assignment, and when the joining worker dies
its shards RESUME on the local one.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from clusterkit import accepted_identifies, resumes, terminate

from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.control import ControlClient
from shardctl.ipc.security import CurveClient, generate_keys, load_client
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "curve-cluster-token"


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sc-cc-") as tmp:
        base = Path(tmp)
        generate_keys(base / "keys")
        generate_keys(base / "other")
        (base / "run").mkdir(mode=0o700)
        yield base


async def test_curve_cluster_serves_its_workers_ignores_strangers_and_moves_shards() -> None:
    with workspace() as base:
        config = SandboxConfig(shard_count=4, max_concurrency=4, identify_interval=0.2,
                               heartbeat_interval_ms=2000, guilds_per_shard=2,
                               session_ttl=60.0, token=TOKEN)
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with Sandbox(config) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=1, remote_workers=1,
                identify_interval=0.2, runtime_dir=base / "run",
                state_file=base / "run" / "state.json", control_endpoint=control,
                curve_keys=base / "keys", beat_interval=0.5, liveness_timeout=2.0) as sup:
            control = sup.endpoints["control"]
            assert all(ep.startswith("tcp://127.0.0.1:") for ep in
                       (sup.endpoints["limiter"], sup.endpoints["events_in"]))
            joining = await anyio.open_process(
                [sys.executable, "-m", "shardctl.cli", "worker", "--supervisor", control,
                 "--keys", str(base / "keys")])
            try:
                with anyio.fail_after(30):
                    await sup.wait_ready()
                local, remote = sup.slots
                assert not local.remote and remote.remote and remote.pid == joining.pid
                remote_shards = list(remote.shard_ids)
                assert remote_shards

                # Another cluster's key: the handshake fails, nothing is ever assigned.
                other = load_client(base / "other", "worker")
                stranger = ControlClient(control, curve=CurveClient(
                    server_public=load_client(base / "keys").server_public,
                    public=other.public, secret=other.secret))
                try:
                    # Once the handshake has failed the DEALER has no peer, and a send
                    # blocks (ZeroMQ's mute state): the sends are inside the deadline too.
                    with anyio.move_on_after(1.5) as scope:
                        await stranger.send("register", {"worker": None, "pid": 1})
                        await stranger.send("state",
                                            {"shards": [{"id": 0, "state": "failed"}]})
                        await stranger.receive()
                    assert scope.cancelled_caught
                finally:
                    stranger.close()
                assert all(s.state == "ready" for s in sup.status())

                identifies = accepted_identifies(sb)
                os.kill(joining.pid, signal.SIGKILL)
                with anyio.fail_after(30):
                    await sup.wait_until(lambda shards: all(
                        s.state == "ready" and s.pid == local.pid for s in shards))
                assert sorted(local.shard_ids) == [0, 1, 2, 3]
                assert accepted_identifies(sb) == identifies, "a RESUME was possible"
                assert all(resumes(sb, s) >= 1 for s in remote_shards)
                assert not sb.violations
            finally:
                await terminate(joining)
