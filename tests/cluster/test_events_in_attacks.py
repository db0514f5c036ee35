"""A stranger on the supervisor's events-in endpoint, against a real cluster and sandbox.

events-in is a SUB socket any same-host process can find (the runtime directory's socket,
or a loopback port): what it publishes there must change nothing that is forwarded or
resumed (issue 12, item 2).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import orjson
import pytest
import zmq
from clusterkit import (
    TOKEN,
    accepted_identifies,
    consumer_process,
    push_messages,
    resumes,
    short_dir,
)

from batchkit import encode_batch
from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.bus import EventForwarder
from shardctl.ipc.events import encode_record
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def sandbox_config(shards: int) -> SandboxConfig:
    return SandboxConfig(shard_count=shards, max_concurrency=shards, identify_interval=0.2,
                         heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0)


def supervisor(sb: Sandbox, run_dir: Path, processes: int) -> Supervisor:
    return Supervisor(token=TOKEN, api_url=sb.api_url, processes=processes,
                      identify_interval=0.2, runtime_dir=run_dir,
                      state_file=run_dir / "state.json")


def forwarder(sup: Supervisor) -> EventForwarder:
    fwd = sup._forwarder
    assert fwd is not None
    return fwd


def refused(fwd: EventForwarder) -> bool:
    return getattr(fwd.stats, "refused", 0) > 0


async def forge(endpoint: str, batches: list[bytes], judged: Callable[[], bool]) -> None:
    """Publish ``batches`` from a stranger's PUB until the forwarder has judged them.

    A PUB drops what it sends before its connection is up (the slow joiner): resend until
    ``judged()`` says the forwarder saw them, one way or the other.
    """
    sock = zmq.Context.instance().socket(zmq.PUB)
    try:
        sock.connect(endpoint)
        with anyio.fail_after(10):
            while not judged():
                for batch in batches:
                    sock.send(batch)
                await anyio.sleep(0.02)
    finally:
        sock.close(linger=0)


def forged_batches(t: str, shard: int, seq: int, payload: bytes,
                   workers: range) -> list[bytes]:
    """The batch as the wire format documents it, claiming each worker with a guessed key,
    and the format before keys (version 1)."""
    record = encode_record(t, shard, seq, 0, payload)
    return [b"\x01\x00\x00\x01" + record,
            *(encode_batch([record], worker=w, key=bytes(32)) for w in workers)]


async def test_a_forged_ready_on_events_in_does_not_steer_the_next_resume() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb, supervisor(sb, run_dir, 2) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            fwd = forwarder(sup)
            victim = sup.slots[0]
            shard, old_pid = victim.shard_ids[0], victim.pid
            assert old_pid is not None
            real = fwd.last_session[shard]
            ready = orjson.dumps({"op": 0, "s": 1, "t": "READY", "d": {
                "session_id": "forged", "resume_gateway_url": "wss://attacker.invalid/"}})
            await forge(sup.endpoints["events_in"],
                        forged_batches("READY", shard, 1, ready, range(len(sup.slots))),
                        lambda: refused(fwd) or fwd.last_session.get(shard) != real)
            assert fwd.last_session[shard] == real
            # The respawned worker RESUMEs the real session, on the real resume URL.
            identifies = accepted_identifies(sb)
            os.kill(old_pid, signal.SIGKILL)
            with anyio.fail_after(30):
                await sup.wait_until(lambda shards: all(
                    s.state == "ready" and s.pid not in (None, old_pid) for s in shards
                    if s.id in victim.shard_ids))
            assert accepted_identifies(sb) == identifies
            assert resumes(sb, shard) >= 1
            assert not sb.violations


async def test_a_forged_high_seq_on_events_in_does_not_drop_real_events() -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(4)) as sb, supervisor(sb, run_dir, 2) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            fwd = forwarder(sup)
            shard = sup.slots[1].shard_ids[0]
            high = 10**9
            message = orjson.dumps({"op": 0, "s": high, "t": "MESSAGE_CREATE", "d": {}})
            await forge(sup.endpoints["events_in"],
                        forged_batches("MESSAGE_CREATE", shard, high, message,
                                       range(len(sup.slots))),
                        lambda: refused(fwd) or fwd.last_seq.get(shard) == high)
            assert fwd.last_seq[shard] < high
            async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE") as consumer:
                with anyio.fail_after(10):
                    await sup.wait_subscribed(b"MESSAGE_CREATE\0")
                sent = await push_messages(sb, [shard], 10)
                with anyio.fail_after(15):
                    await consumer.wait_for(10)
                assert consumer.seen == Counter((shard, seq) for seq in sent[shard])
            assert not sb.violations
