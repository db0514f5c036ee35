"""The supervisor resumes only at trusted hosts (gateway/resume_url.py), end to end."""

from __future__ import annotations

import os
import signal

import anyio
import orjson
import pytest
from clusterkit import TOKEN, accepted_identifies, resumes, short_dir

from shardctl.cluster.supervisor import Supervisor
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_session_whose_resume_host_is_not_trusted_is_never_resumed(
        caplog: pytest.LogCaptureFixture) -> None:
    # READY names a resume host that is neither Discord's nor the configured gateway's
    # (127.0.0.1): the respawned worker's shards IDENTIFY, and no session is saved.
    config = SandboxConfig(shard_count=2, max_concurrency=2, identify_interval=0.2,
                           heartbeat_interval_ms=2000, guilds_per_shard=1,
                           resume_host="localhost")
    with short_dir() as run_dir:
        async with Sandbox(config) as sb:
            async with Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                                  identify_interval=0.2, runtime_dir=run_dir,
                                  state_file=run_dir / "state.json") as sup:
                with anyio.fail_after(30):
                    await sup.wait_ready()
                old_pid = sup.slots[0].pid
                assert old_pid is not None
                assert all(s.resume_gateway_url is None for s in sup.status())
                os.kill(old_pid, signal.SIGKILL)
                with anyio.fail_after(30):
                    await sup.wait_until(lambda shards: all(
                        s.state == "ready" and s.pid not in (None, old_pid) for s in shards))
            assert accepted_identifies(sb) == 4  # twice each: no RESUME was possible
            assert resumes(sb) == 0
        saved = orjson.loads((run_dir / "state.json").read_bytes())
        assert saved["sessions"] == []
    refusals = [r.getMessage() for r in caplog.records
                if r.name == "shardctl.cluster.sessions" and "'localhost'" in r.getMessage()]
    assert len(refusals) == 1
