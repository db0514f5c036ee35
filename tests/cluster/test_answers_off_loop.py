"""A 10,000-shard ``/metrics`` scrape or ``status`` answer never holds the supervisor's loop.

Proved without timing anything: one shard's latency is a :class:`LoopProbe`, a float that,
when the answer being built first does arithmetic with it, waits until the supervisor has
answered a ``/livez`` request meanwhile.  Built off the loop, the answer waits a moment and
completes; built on the loop (as before), nothing else can run, ``/livez`` is never
answered, and the probe gives up after :data:`PATIENCE` seconds and says so.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from clusterkit import short_dir
from prometheus_client.parser import text_string_to_metric_families
from statekit import reported_supervisor

from shardctl.cluster.metrics import serve_metrics
from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.control import ControlServer
from shardctl.ipc.status import request_status

pytestmark = [pytest.mark.anyio]

SHARDS = 10_000
#: How long the probe waits for /livez before it declares the loop blocked (not a timing:
#: off the loop it is released within milliseconds, on the loop never).
PATIENCE = 15.0
PROBED = SHARDS - 1


class LoopProbe(float):
    """A latency whose first use waits for :meth:`release` (from the test, after /livez)."""

    touched: threading.Event
    released: threading.Event
    gave_up: bool

    def __new__(cls, value: float) -> LoopProbe:
        probe = super().__new__(cls, value)
        probe.touched, probe.released, probe.gave_up = (threading.Event(), threading.Event(),
                                                        False)
        return probe

    def _wait(self) -> None:
        self.touched.set()
        if not self.released.wait(PATIENCE):
            self.gave_up = True

    def __float__(self) -> float:  # prometheus text: floatToGoString(value)
        self._wait()
        return super().__float__()

    def __mul__(self, other: Any) -> float:  # the status row: latency_ms
        self._wait()
        return float.__mul__(self, other)  # type: ignore[no-any-return]


@asynccontextmanager
async def serving(probe: LoopProbe) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient, str]]:
    """A 10,000-shard supervisor's /metrics server and control loop; the last shard's
    latency is ``probe``."""
    sup = reported_supervisor(SHARDS, latency=lambda shard: probe if shard == PROBED else 0.05)
    with short_dir() as run_dir:
        control = ControlServer(f"ipc://{run_dir / 'control.sock'}")
        try:
            async with anyio.create_task_group() as tg:
                sup._tg = sup._answers_tg = tg
                sup._control = control
                port = await tg.start(serve_metrics, sup, 0)
                tg.start_soon(sup._control_loop, control)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                             timeout=PATIENCE * 2) as http:
                    yield sup, http, control.endpoint
                tg.cancel_scope.cancel()
        finally:
            control.close()


async def livez_while_probed(probe: LoopProbe, http: httpx.AsyncClient) -> int:
    """Once the answer being built reaches the probe: /livez's status code, then release."""
    await anyio.to_thread.run_sync(probe.touched.wait, PATIENCE)
    try:
        return (await http.get("/livez")).status_code
    finally:
        probe.released.set()


async def test_the_supervisor_answers_livez_while_a_10000_shard_scrape_renders() -> None:
    probe = LoopProbe(0.125)
    got: dict[str, Any] = {}
    async with serving(probe) as (_, http, _), anyio.create_task_group() as tg:
        async def scrape() -> None:
            got["metrics"] = await http.get("/metrics")

        tg.start_soon(scrape)
        got["livez"] = await livez_while_probed(probe, http)

    assert not probe.gave_up, "the scrape held the event loop: /livez was not answered"
    assert got["livez"] == 200
    assert got["metrics"].status_code == 200
    latencies = {s.labels["shard"]: s.value for f in text_string_to_metric_families(
        got["metrics"].text) if f.name == "shardctl_shard_heartbeat_latency_seconds"
        for s in f.samples}
    assert len(latencies) == SHARDS and latencies[str(PROBED)] == 0.125


async def test_the_supervisor_answers_livez_while_a_10000_shard_status_is_built() -> None:
    probe = LoopProbe(0.125)
    got: dict[str, Any] = {}
    async with serving(probe) as (_, http, endpoint), anyio.create_task_group() as tg:
        async def status() -> None:
            got["status"] = await request_status(endpoint)

        tg.start_soon(status)
        got["livez"] = await livez_while_probed(probe, http)

    assert not probe.gave_up, "the status answer held the event loop: /livez was not answered"
    assert got["livez"] == 200
    shards = got["status"]["shards"]
    assert len(shards) == SHARDS and shards[PROBED]["latency_ms"] == 125.0
