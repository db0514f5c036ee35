"""Prometheus metrics, /livez and /readyz, scraped over HTTP from a running supervisor."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from clusterkit import TOKEN, push_messages, short_dir
from prometheus_client.parser import text_string_to_metric_families

from shardctl.cluster.metrics import readiness, serve_metrics
from shardctl.cluster.supervisor import ShardStatus, Supervisor
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def supervisor(sb: Sandbox, run_dir: Path) -> Supervisor:
    return Supervisor(token=TOKEN, api_url=sb.api_url, processes=2, identify_interval=0.2,
                      runtime_dir=run_dir, state_file=run_dir / "state.json",
                      beat_interval=0.2)


@pytest.mark.slow
async def test_metrics_are_served_and_follow_the_workers_reports() -> None:
    config = SandboxConfig(shard_count=4, max_concurrency=4, identify_interval=0.2,
                           heartbeat_interval_ms=1000, guilds_per_shard=2, session_ttl=60.0)
    with short_dir() as run_dir:
        async with Sandbox(config) as sb, supervisor(sb, run_dir) as sup, \
                anyio.create_task_group() as tg:
            port = await tg.start(serve_metrics, sup, 0)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                assert (await http.get("/livez")).status_code == 200
                with anyio.fail_after(20):
                    await sup.wait_ready()
                ready = await http.get("/readyz")
                assert ready.status_code == 200, ready.text
                await push_messages(sb, [0, 1, 2, 3], 5)
                with anyio.fail_after(10):  # counts arrive with the next state reports
                    await sup.wait_until(lambda shards: all(
                        sup.event_totals.totals(s.id).get("MESSAGE_CREATE") == 5
                        and s.latency is not None for s in shards))
                response = await http.get("/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                got = samples(response.text)
                assert (await http.get("/nope")).status_code == 404
            tg.cancel_scope.cancel()

    for shard in ("0", "1", "2", "3"):
        assert got[("shardctl_shard_ready", (("shard", shard),))] == 1
        assert got[("shardctl_shard_events_total", (("shard", shard),))] >= 5 + 1
        assert got[("shardctl_shard_reconnects_total", (("shard", shard),))] == 0
        assert got[("shardctl_shard_resumes_total", (("shard", shard),))] == 0
    assert got[("shardctl_shards", (("state", "ready"),))] == 4
    assert got[("shardctl_events_total", (("type", "MESSAGE_CREATE"),))] == 20
    assert got[("shardctl_events_total", (("type", "READY"),))] == 4
    assert got[("shardctl_identifies_total", ())] == 4
    assert got[("shardctl_worker_restarts_total", (("worker", "0"),))] == 0
    assert got[("shardctl_worker_up", (("worker", "1"),))] == 1
    assert got[("shardctl_bus_forwarded_total", ())] >= 20
    assert got[("shardctl_bus_upstream_gaps_total", ())] == 0
    # how many batches go through untouched depends on how the workers batched them
    # (tests/ipc/test_watermarks.py, tests/cluster/test_stamped_bus.py): served, counted
    assert got[("shardctl_bus_restamped_batches_total", ())] >= 0
    assert got[("shardctl_bus_stamped_batches_total", ())] >= 0
    # no consumer on events-batch here: nothing is sent there
    assert got[("shardctl_bus_batch_messages_total", ())] == 0
    assert got[("shardctl_bus_batch_subscribers", ())] == 0
    assert 0 <= got[("shardctl_shard_heartbeat_latency_seconds", (("shard", "0"),))] < 1
    for bucket in ("0", "1", "2", "3"):  # 15 ms + 1 % of 0.2 s, and no op 9
        label = (("bucket", bucket),)
        assert got[("shardctl_identify_margin_seconds", label)] == pytest.approx(0.017)
        assert got[("shardctl_identify_rejected_total", label)] == 0


def test_readyz_needs_every_shard_ready() -> None:
    def fake(*states: str) -> Supervisor:
        sup = Supervisor(token=TOKEN, api_url="http://127.0.0.1:9")
        sup._status = {i: ShardStatus(i, state=s) for i, s in enumerate(states)}
        return sup

    assert readiness(fake("ready", "ready"))[0]
    ok, text = readiness(fake("ready", "identifying"))
    assert not ok and "1 of 2" in text
    assert not readiness(fake())[0]
