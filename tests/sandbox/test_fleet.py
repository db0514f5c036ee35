"""The sandbox as several processes behind one port (shardctl.sandbox.fleet)."""

from __future__ import annotations

import anyio
import pytest
from sandbox_client import RawClient

from shardctl.sandbox import SandboxConfig
from shardctl.sandbox.fleet import Fleet, fleet, order_warnings, pace_violations

SHARDS = 32


def config() -> SandboxConfig:
    return SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=5.0,
                         guilds_per_shard=1, members_per_guild=2, record_dispatches=False)


async def ready_clients(f: Fleet) -> dict[str, tuple[RawClient, dict[str, object]]]:
    """Identify shards one by one until sessions sit on both members; by resume URL."""
    by_host: dict[str, tuple[RawClient, dict[str, object]]] = {}
    for shard in range(SHARDS):
        c = await RawClient.open(f.gateway_url)
        d = (await c.ready(shard=[shard, SHARDS]))["d"]
        host = str(d["resume_gateway_url"])
        if host in by_host:
            await c.close()
        else:
            by_host[host] = (c, d)
        if len(by_host) == 2:
            break
    return by_host


@pytest.mark.anyio
@pytest.mark.slow
async def test_sessions_spread_over_members_and_a_resume_reaches_the_one_holding_it() -> None:
    async with fleet(config(), 2) as f:
        with anyio.fail_after(60):
            by_host = await ready_clients(f)
            # The kernel spread the sockets: each member named itself in resume_gateway_url,
            # on the gateway's own host (a client sends its token nowhere else).
            first, second = (m.resume_url for m in f.members)
            assert set(by_host) == {first, second}
            assert all(url.startswith("ws://127.0.0.1:") for url in by_host)
            c, d = by_host[second]
            seq = c.last_seq
            await c.close(4000)
            # The other member does not hold the session: op 9, not RESUMED.
            wrong = await RawClient.open(first)
            await wrong.hello()
            await wrong.resume(str(d["session_id"]), seq)
            assert (await wrong.recv_op(9))["d"] is False
            await wrong.close()
            right = await RawClient.open(str(d["resume_gateway_url"]))
            await right.hello()
            await right.resume(str(d["session_id"]), seq)
            assert (await right.recv_op(0, "RESUMED"))["t"] == "RESUMED"
            await right.close()
            await by_host[first][0].close()
            await f.fresh()
            counts = f.counts()
            assert counts["resumed"] == 1 and counts["violation"] == 0
            assert f.pace_violations() == []


def test_two_identifies_of_one_bucket_seen_by_two_members_break_the_fleets_pace() -> None:
    cfg = SandboxConfig(shard_count=4, max_concurrency=2, identify_interval=5.0,
                        session_start_total=3)
    # Shards 0 and 2 share bucket 0: 1 s apart; shard 1 (bucket 1) 0.5 s after shard 0.
    got = pace_violations(cfg, [(2, 101.0), (0, 100.0), (1, 100.5)])
    assert got == ["bucket 0: IDENTIFYs 1.000 s apart"]
    assert pace_violations(cfg, [(0, 100.0), (2, 105.0), (1, 100.5)]) == []
    assert pace_violations(cfg, [(0, 0.0), (1, 0.0), (2, 5.0), (3, 5.0)]) == [
        "4 IDENTIFYs > session_start_limit.total 3"]


def test_order_warnings_count_shards_identified_before_an_earlier_round_over_all_members() -> None:
    cfg = SandboxConfig(shard_count=6, max_concurrency=2)
    # Rounds: {0, 1}, {2, 3}, {4, 5}.  Shard 4 came before shard 1 (an earlier round).
    got = [(0, 1.0), (4, 2.0), (1, 3.0), (2, 6.0), (3, 6.0), (5, 11.0)]
    assert order_warnings(cfg, got) == 1
    assert order_warnings(cfg, [(s, float(s // 2)) for s in range(6)]) == 0
