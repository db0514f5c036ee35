"""The limiter service end to end over real ZeroMQ ipc://, clients in this process.

Grant times come from the service's own record (its clock, the event loop's), so the pace
is measured where it is decided.
"""

from __future__ import annotations

import functools
import itertools
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from limiterkit import serving

from shardctl.cluster.limiter_service import LimiterEvent, SessionLimiterService
from shardctl.gateway.limits import Limits
from shardctl.gateway.pacing import DEFAULT_MARGIN, IdentifyMargin
from shardctl.ipc.limiter import LimiterClient, Rejected

pytestmark = pytest.mark.anyio

INTERVAL = 0.1
SLACK = 0.06  # scheduling and release latency on a busy 2-core machine; well under INTERVAL


@pytest.fixture
def endpoint() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="sls-") as d:
        yield f"ipc://{Path(d) / 'l.sock'}"


async def identify_all(client: LimiterClient, shards: list[int]) -> None:
    async with anyio.create_task_group() as tg:
        for shard in shards:
            tg.start_soon(identify_one, client, shard)


async def identify_one(client: LimiterClient, shard: int) -> None:
    async with client.identify(shard):
        pass


def gaps(grants: list[LimiterEvent]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(grants)]


async def test_clients_in_one_process_share_one_pace(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL))
    async with serving(server):
        started = server.scheduler.last_grants()[0]  # a fresh limiter counts its start
        async with (LimiterClient(endpoint) as a, LimiterClient(endpoint) as b,
                    LimiterClient(endpoint) as c):
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(identify_all, a, [0, 1])
                    tg.start_soon(identify_all, b, [2, 3])
                    tg.start_soon(identify_all, c, [4, 5])
    grants = server.grants()
    assert sorted(g.shard_id or 0 for g in grants) == [0, 1, 2, 3, 4, 5]
    assert grants[0].at - started >= INTERVAL  # one interval before the first grant
    assert all(INTERVAL <= gap < INTERVAL + SLACK for gap in gaps(grants)), gaps(grants)


async def test_buckets_grant_together(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL, max_concurrency=4),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            await identify_all(client, list(range(8)))
    grants = server.grants()
    assert {g.shard_id for g in grants[:4]} == {0, 1, 2, 3}
    assert grants[3].at - grants[0].at < SLACK
    assert INTERVAL <= grants[4].at - grants[0].at < INTERVAL + SLACK


async def test_cancelled_waiter_wastes_no_slot(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with (serving(server), LimiterClient(endpoint) as client,
                anyio.create_task_group() as tg):
        with anyio.fail_after(5):
            await identify_one(client, 0)  # granted at once: the bucket is busy for 0.1 s
            waiter = anyio.CancelScope()

            async def doomed() -> None:
                with waiter:
                    await identify_one(client, 1)

            tg.start_soon(doomed)
            tg.start_soon(identify_one, client, 2)
            await server.wait_for(lambda: len(server.scheduler) == 2)
            waiter.cancel()
            await server.wait_for(lambda: len(server.grants()) == 2)
    first, second = server.grants()
    assert second.shard_id == 2
    assert INTERVAL <= second.at - first.at < INTERVAL + SLACK


async def test_closed_client_loses_its_queue_without_wasting_a_slot(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as survivor:
        with anyio.fail_after(5):
            async with LimiterClient(endpoint) as leaver:
                await identify_one(leaver, 0)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(identify_all, leaver, [1, 2, 3])
                    await server.wait_for(lambda: len(server.scheduler) == 3)
                    tg.cancel_scope.cancel()  # not a clean cancel: the client just goes away
                    # (its cancels may or may not leave before the socket closes)
            await identify_all(survivor, [4, 5])
    grants = server.grants()
    assert [g.shard_id for g in grants] == [0, 4, 5]
    assert all(INTERVAL <= gap < INTERVAL + SLACK for gap in gaps(grants)), gaps(grants)


async def test_release_paces_the_next_grant(endpoint: str) -> None:
    # The next grant of a bucket comes an interval after the holder is done, not after
    # the grant: a slow IDENTIFY send cannot bring two IDENTIFYs closer than the interval.
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={},
                                   hold_limit=1.0)
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):

            async def slow() -> None:
                async with client.identify(0):
                    await anyio.sleep(0.15)

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                await server.wait_for(lambda: len(server.grants()) == 1)
                tg.start_soon(identify_one, client, 1)
    first, second = server.grants()
    assert second.at - first.at >= 0.15 + INTERVAL


async def test_max_concurrency_update_while_running(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identify_all, client, [0, 1, 2, 3, 4])
                # Change it once the first IDENTIFY is out (a held grant would count as
                # sent at its hold limit, which is slower than this test wants to measure).
                await server.wait_for(
                    lambda: len(server.grants()) == 1 and not any(server.scheduler.holding()))
                await client.configure(max_concurrency=2)  # over the wire, acknowledged
                await server.wait_for(lambda: server.scheduler.max_concurrency == 2)
    grants = server.grants()
    assert len(grants) == 5
    # After the change two buckets run side by side, never sooner than an interval after
    # the last grant made before it.
    assert INTERVAL <= grants[1].at - grants[0].at < INTERVAL + SLACK
    assert grants[2].at - grants[1].at < SLACK
    assert {grants[1].bucket, grants[2].bucket} == {0, 1}


async def test_empty_budget_holds_grants_and_says_until_when(
    endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = SessionLimiterService(endpoint,
                                   Limits(interval=0.02, remaining=1, total=5, reset_after=0.4),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identify_all, client, [0, 1, 2])
                await server.wait_for(lambda: len(server.scheduler) == 2)
                assert server.scheduler.budget_exhausted()
                assert "session start budget exhausted; next grant at 20" in caplog.text
                assert len(server.grants()) == 1
    first, second, _ = server.grants()
    assert second.at - first.at >= 0.4 - 0.02  # held until the reset, then granted
    assert server.scheduler.remaining == 3


async def test_restarted_service_gets_the_waiting_requests_again(endpoint: str) -> None:
    async with (LimiterClient(endpoint, ping_interval=0.05) as client,
                anyio.create_task_group() as tg):
        tg.start_soon(identify_one, client, 7)
        # Its start-up wait outlasts the test.
        first = SessionLimiterService(endpoint, Limits(interval=5.0))
        async with serving(first):
            with anyio.fail_after(5):
                await first.wait_for(lambda: len(first.scheduler) == 1)
        # The first limiter is gone, and the request with it; the client asks the next one.
        second = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
        async with serving(second):
            with anyio.fail_after(5):
                await second.wait_for(lambda: len(second.grants()) == 1)
        assert second.grants()[0].shard_id == 7


async def test_idle_service_sleeps(endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            await identify_all(client, [0, 1])
            await server.wait_for(lambda: not any(server.scheduler.holding()))
        cpu = time.process_time()
        await anyio.sleep(0.5)  # nothing to do: neither end may spin meanwhile
        assert time.process_time() - cpu < 0.2


async def identify_noting_entry(client: LimiterClient, shard: int, entered: dict[int, float],
                                hold: float = 0.0) -> None:
    async with client.identify(shard):
        entered[shard] = time.monotonic()
        if hold:
            await anyio.sleep(hold)


async def test_same_clock_clients_are_granted_early_and_start_on_the_slot(
        endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={}, lead=0.05)
    entered: dict[int, float] = {}
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for shard in range(3):
                    tg.start_soon(identify_noting_entry, client, shard, entered)
    grants = server.grants()
    assert [g.shard_id for g in grants] == [0, 1, 2]
    # Issued ahead of the slot (the grant's trip and the timer's lateness are hidden)...
    assert all(g.issued is not None and g.issued < g.at for g in grants[1:])
    # ...and no shard entered before its start: the starts keep the pace.
    assert all(entered[g.shard_id or 0] >= g.at for g in grants)
    assert all(INTERVAL <= gap < INTERVAL + SLACK for gap in gaps(grants)), gaps(grants)


@pytest.mark.parametrize("margin", [None, IdentifyMargin(), IdentifyMargin(floor=0.03)])
async def test_a_same_clock_bucket_is_paced_from_the_send_plus_the_margin(
        endpoint: str, margin: IdentifyMargin | None) -> None:
    limits = Limits(interval=INTERVAL, **({} if margin is None else {"margin": margin}))
    server = SessionLimiterService(endpoint, limits, last_grants={}, hold_limit=1.0)
    entered: dict[int, float] = {}
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identify_noting_entry, client, 0, entered, 0.05)
                await server.wait_for(lambda: len(server.grants()) == 1)
                tg.start_soon(identify_one, client, 1)
    _, second = server.grants()
    (release,) = [e for e in server.record if e.kind == "release" and e.shard_id == 0]
    # The bucket is paced from the end of the send (not from when the release was handled),
    # and the next grant comes an interval plus the margin later (DEFAULT_MARGIN unless
    # given).
    sent_at = float(release.detail.split("sent_at=")[1].split()[0])
    handled = float(release.detail.split("handled=")[1].split()[0])
    assert entered[0] + 0.05 <= sent_at < handled
    assert release.at == pytest.approx(sent_at, abs=2e-6)
    expected = (DEFAULT_MARGIN if margin is None else margin).base(INTERVAL)
    assert f"margin={expected:.6f}" in release.detail
    assert INTERVAL + expected <= second.at - release.at < INTERVAL + expected + 1e-9


async def test_an_op9_report_widens_every_bucket_logs_once_and_grants_nothing(
        endpoint: str, caplog: pytest.LogCaptureFixture) -> None:
    margin = IdentifyMargin(floor=0.01)
    server = SessionLimiterService(endpoint,
                                   Limits(max_concurrency=2, interval=INTERVAL, margin=margin),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            await identify_all(client, [0])
            (grant,) = server.grants()
            with caplog.at_level(logging.WARNING, "shardctl.cluster.limiter_service"):
                client.identify_rejected(0, 0.004)
                await server.wait_for(lambda: any(e.kind == "rejected" for e in server.record))
                # Again for the same grant, and for one it never made: both ignored.
                client._post(Rejected(client.client_id, 0, 0, 0.0025))
                client._post(Rejected(client.client_id, 99, 2, 0.0025))
                await identify_all(client, [2, 1])
    assert server.scheduler.margins() == {0: 0.02, 1: 0.02}
    assert server.scheduler.rejections() == {0: 1, 1: 0}
    (rejected,) = [e for e in server.record if e.kind == "rejected"]
    assert (rejected.shard_id, rejected.bucket) == (0, 0)
    (warning,) = [r.getMessage() for r in caplog.records if "op 9" in r.getMessage()]
    assert "shard 0" in warning and "0.004 s after it was sent" in warning
    assert "bucket 0" in warning and "now 20.0 ms (was 10.0" in warning
    assert "--identify-margin-ms" in warning
    # The next IDENTIFY of bucket 0 came an interval plus the widened margin after the
    # rejected one was sent; no grant was added for the report.
    grants = server.grants()
    assert [g.shard_id for g in grants] == [0, 1, 2]
    (release,) = [e for e in server.record if e.kind == "release" and e.shard_id == 0]
    assert grants[2].at - release.at >= INTERVAL + 0.02
    assert grant is grants[0]


async def test_clients_on_another_clock_are_granted_on_the_slot_and_paced_on_release(
        endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from shardctl.cluster import limiter_service

    monkeypatch.setattr(limiter_service, "clock_id", lambda: "another-host")
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL), last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        with anyio.fail_after(5):
            await identify_all(client, [0, 1, 2])
            await server.wait_for(lambda: not any(server.scheduler.holding()))
    grants = server.grants()
    assert all(g.issued == g.at for g in grants)  # no early grants: it would not wait
    releases = [e for e in server.record if e.kind == "release"]
    assert len(releases) == 3
    for release in releases:  # its sent_at is not believed: paced from the handling
        assert f"handled={release.at:.6f}" in release.detail
    assert all(INTERVAL <= gap < INTERVAL + SLACK for gap in gaps(grants)), gaps(grants)


async def test_the_start_gate_waits_while_shards_keep_asking(endpoint: str) -> None:
    # Asks 0.15 s apart with a 0.3 s quiet period: the asking takes 0.45 s in all, longer
    # than the quiet period, and no grant comes before the last shard has asked.
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL, max_concurrency=4),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        server.gate(anyio.current_time() + 10.0)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(server.open_gate_when_asked, 4, quiet=0.3))
                first = anyio.current_time()
                for shard in range(4):
                    if shard:
                        await anyio.sleep(0.15)  # the arrival pattern under test
                    last = anyio.current_time()  # the request cannot arrive before this
                    tg.start_soon(identify_one, client, shard)
                    await server.wait_for(
                        lambda n=shard + 1: len(server.scheduler) + len(server.grants()) == n)
    grants = server.grants()
    assert len(grants) == 4
    assert last - first > 0.3  # longer than the quiet period ...
    assert min(g.at for g in grants) >= last  # ... and still nothing before the last ask


async def test_the_start_gate_opens_when_no_shard_asked_for_the_quiet_period(
        endpoint: str) -> None:
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL, max_concurrency=4),
                                   last_grants={})
    async with serving(server), LimiterClient(endpoint) as client:
        server.gate(anyio.current_time() + 10.0)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(identify_all, client, [0, 1])
                await server.wait_for(lambda: len(server.scheduler) == 2)
                asked = anyio.current_time()
                # Shards 2 and 3 never ask: the gate opens 0.2 s after the last request.
                await server.open_gate_when_asked(4, quiet=0.2)
    grants = server.grants()
    assert len(grants) == 2
    assert all(asked + 0.2 <= g.at < asked + 0.2 + SLACK for g in grants)


@pytest.mark.slow
async def test_a_client_holding_many_grants_is_probed_once_per_interval(
        endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 2,500-shard worker holds a grant per bucket while its other requests keep arriving:
    # a probe per held grant on every wake-up filled its queue, and the grants and pongs
    # behind the probes were dropped ("service lost the request", again and again).
    from shardctl.ipc.limiter import LimiterWireServer

    probes: list[float] = []
    real_probe = LimiterWireServer.probe

    def counting(self: LimiterWireServer, peer: bytes) -> bool:
        probes.append(time.monotonic())
        return real_probe(self, peer)

    monkeypatch.setattr(LimiterWireServer, "probe", counting)
    probe_interval = 0.05
    server = SessionLimiterService(endpoint, Limits(interval=INTERVAL, max_concurrency=8),
                                   last_grants={}, probe_interval=probe_interval)
    async with serving(server), LimiterClient(endpoint) as client:
        held = anyio.Event()
        release = anyio.Event()
        holding = 0

        async def hold(shard: int) -> None:
            nonlocal holding
            async with client.identify(shard):
                holding += 1
                if holding == 8:
                    held.set()
                await release.wait()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for shard in range(8):
                    tg.start_soon(hold, shard)
                await held.wait()
                probes.clear()
                started = time.monotonic()
                for shard in range(8, 408):  # 400 messages wake the service's loop
                    tg.start_soon(identify_one, client, shard)
                    await anyio.sleep(0.001)
                elapsed = time.monotonic() - started
                release.set()
                tg.cancel_scope.cancel()
    assert probes, "a holder past the probe interval is probed"
    assert len(probes) <= elapsed / probe_interval + 2, (len(probes), elapsed)
