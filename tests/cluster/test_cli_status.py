"""`shardctl status` against a running supervisor, as a separate process."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import orjson
import pytest
from clusterkit import TOKEN, short_dir

from shardctl.cli.statusview import limiter_line
from shardctl.cluster.supervisor import Supervisor
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def status(endpoint: str, *args: str) -> tuple[int, str, str]:
    result = await anyio.run_process(
        [sys.executable, "-m", "shardctl.cli", "status", "--control-endpoint", endpoint, *args],
        check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def supervisor(sb: Sandbox, run_dir: Path, interval: float) -> Supervisor:
    return Supervisor(token=TOKEN, api_url=sb.api_url, processes=2, identify_interval=interval,
                      runtime_dir=run_dir, state_file=run_dir / "state.json")


async def test_status_lists_every_shard_and_fails_until_all_are_ready() -> None:
    # One bucket, 1 s apart: the first IDENTIFY is a second away when we first ask.
    config = SandboxConfig(shard_count=3, max_concurrency=1, identify_interval=1.0,
                           heartbeat_interval_ms=1000, guilds_per_shard=2)
    with short_dir() as run_dir:
        async with Sandbox(config) as sb, supervisor(sb, run_dir, 1.0) as sup:
            endpoint = sup.endpoints["control"]
            code, out, err = await status(endpoint, "--json")
            assert code == 1, err
            assert out, err
            early = orjson.loads(out)
            assert early["summary"]["all_ready"] is False
            assert [row["id"] for row in early["shards"]] == [0, 1, 2]

            with anyio.fail_after(20):
                await sup.wait_ready()
            with anyio.fail_after(10):  # a latency needs one heartbeat ACK
                await sup.wait_until(lambda shards: all(s.latency is not None for s in shards))
            code, out, err = await status(endpoint, "--json")
            assert code == 0, err
            body = orjson.loads(out)
            pids = {slot.pid for slot in sup.slots}
            for row in body["shards"]:
                assert row["state"] == "ready"
                assert row["pid"] in pids
                assert row["guilds"] == 2
                assert row["latency_ms"] >= 0
                assert row["seq"] >= 1
                assert 0 <= row["last_event_age"] < 60
            assert body["summary"] == {**body["summary"], "shards": 3, "ready": 3,
                                       "all_ready": True, "workers": 2}
            assert "session_id" not in body["shards"][0]
            # The built-in limiter's bucket: its margin (15 ms + 1 % of 1 s), no op 9.
            assert body["limiter"] == {"buckets": [{"bucket": 0, "margin_ms": 25.0, "op9": 0}],
                                       "op9": 0}

            code, out, err = await status(endpoint)
            assert code == 0, err
            lines = out.splitlines()
            assert lines[0].split()[:3] == ["shard", "pid", "state"]
            assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
            assert all(" ready " in f"{line} " for line in lines[1:4])
            assert lines[-2] == "identify margin 25.0 ms; 0 IDENTIFYs answered with op 9"
            assert lines[-1].startswith("3/3 shards READY (3 ready); 2 workers")
            # The status peer never became a worker: both slots still beat and run.
            assert all(slot.alive for slot in sup.slots)


async def test_status_without_a_supervisor_exits_3() -> None:
    with short_dir() as run_dir:
        code, _, err = await status(f"ipc://{run_dir}/control.sock", "--timeout", "0.5")
    assert code == 3
    assert "no supervisor answered" in err


async def test_status_over_curve_uses_the_operator_key_and_gets_everything() -> None:
    from shardctl.ipc.security import generate_keys

    config = SandboxConfig(shard_count=2, max_concurrency=2, identify_interval=0.2,
                           heartbeat_interval_ms=1000, guilds_per_shard=1)
    with short_dir() as base:
        generate_keys(base / "keys")
        (base / "run").mkdir(mode=0o700)
        async with Sandbox(config) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                runtime_dir=base / "run", state_file=base / "run" / "state.json",
                curve_keys=base / "keys") as sup:
            with anyio.fail_after(20):
                await sup.wait_ready()
            endpoint = sup.endpoints["control"]
            code, out, err = await status(endpoint, "--json", "--keys", str(base / "keys"))
            assert code == 0, err
            body = orjson.loads(out)
            assert {row["pid"] for row in body["shards"]} == {sup.slots[0].pid}
            assert "redacted" not in body
            # Without keys the CURVE handshake never happens: no answer at all.
            code, _, err = await status(endpoint, "--timeout", "1")
            assert code == 3, err


async def test_status_on_an_insecure_loopback_endpoint_is_redacted_and_says_so() -> None:
    config = SandboxConfig(shard_count=2, max_concurrency=2, identify_interval=0.2,
                           heartbeat_interval_ms=1000, guilds_per_shard=1)
    with short_dir() as run_dir:
        async with Sandbox(config) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                runtime_dir=run_dir, state_file=run_dir / "state.json",
                control_endpoint="tcp://127.0.0.1:*", insecure_loopback=True) as sup:
            with anyio.fail_after(20):
                await sup.wait_ready()
            code, out, err = await status(sup.endpoints["control"])
            assert code == 0, err
            lines = out.splitlines()
            assert [line.split()[:3] for line in lines[1:3]] == [["0", "-", "ready"],
                                                                  ["1", "-", "ready"]]
            assert str(sup.slots[0].pid) not in out
            assert lines[-1].startswith("(redacted for a peer without credentials")


def test_the_limiter_line_names_widened_buckets_and_op9s() -> None:
    body = {"buckets": [{"bucket": 0, "margin_ms": 17.0, "op9": 0},
                        {"bucket": 1, "margin_ms": 34.0, "op9": 1},
                        {"bucket": 2, "margin_ms": 17.0, "op9": 0}], "op9": 1}
    assert limiter_line(body) == ("identify margin 17.0 ms (bucket 1: 34.0 ms); "
                                  "1 IDENTIFY answered with op 9 (bucket 1: 1)")
    assert limiter_line({"buckets": []}) is None
