"""Attackers on the control channel while a cluster runs against the sandbox (issue 12).

Each test runs a real cluster (worker processes, the bus, a ``shardctl events`` consumer
process) and lets one kind of attacker try everything the control channel offers: ask for
status, register for a slot (with the real worker's pid, a guessed secret, or as a remote
worker), forge state reports and replies, flood requests without reading.  Afterwards the
token never appeared in anything the attacker received, no worker was replaced or killed,
every shard is still READY and the consumer saw every event exactly once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import zmq
import zmq.asyncio
from clusterkit import consumer_process, push_messages, short_dir

from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.control import ControlClient, ControlMessage
from shardctl.ipc.security import CurveClient, generate_keys, load_client
from shardctl.sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TOKEN = "MTA5ATTACKCANARY.Gx7Qz9.c0ntr0l-t0k3n-n3v3r-l34k3d_Zq8"
SHARDS = 4
#: Long enough for a reply (or a CURVE handshake and a reply) on loopback, many times over.
QUIET = 1.0


@dataclass
class Loot:
    """Everything an attacker received, as text (checked for the token)."""

    messages: list[ControlMessage] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [m.kind for m in self.messages]

    def text(self) -> str:
        return "\n".join(f"{m.kind} {orjson.dumps(m.body).decode()}" for m in self.messages)


async def exchange(client: ControlClient, loot: Loot, *sends: tuple[str, dict[str, Any]]) -> None:
    """Send, then collect whatever comes back for QUIET seconds.  A DEALER whose CURVE
    handshake failed has no peer and its sends block: they share the deadline."""
    with anyio.move_on_after(QUIET * 2):
        for kind, body in sends:
            await client.send(kind, body)
    with anyio.move_on_after(QUIET):
        while True:
            loot.messages.append(await client.receive())


@dataclass
class Cluster:
    sb: Sandbox
    sup: Supervisor
    control: str


@asynccontextmanager
async def guarded_cluster(run_dir: Path, **options: Any) -> AsyncIterator[Cluster]:
    """A READY cluster with a consumer; on exit, checks that nothing was lost or replaced."""
    config = SandboxConfig(shard_count=SHARDS, max_concurrency=SHARDS, identify_interval=0.2,
                           heartbeat_interval_ms=2000, guilds_per_shard=2, session_ttl=60.0,
                           token=TOKEN)
    async with Sandbox(config) as sb, Supervisor(
            token=TOKEN, api_url=sb.api_url, processes=2, identify_interval=0.2,
            runtime_dir=run_dir, state_file=run_dir / "state.json", beat_interval=0.25,
            liveness_timeout=2.0, **options) as sup:
        with anyio.fail_after(30):
            await sup.wait_ready()
        pids = [slot.pid for slot in sup.slots]
        async with consumer_process(sup.endpoints["events"], "MESSAGE_CREATE",
                                    keys=options.get("curve_keys")) as consumer:
            with anyio.fail_after(10):
                await sup.wait_subscribed(b"MESSAGE_CREATE\0")
            sent: Counter[tuple[int, int]] = Counter()

            async def traffic() -> None:
                # Events keep flowing while the attacker works (paced, not a sync point).
                while True:
                    batch = await push_messages(sb, list(range(SHARDS)), 1)
                    sent.update((shard, seq) for shard, seqs in batch.items() for seq in seqs)
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(traffic)
                yield Cluster(sb, sup, sup.endpoints["control"])
                tg.cancel_scope.cancel()
            with anyio.fail_after(30):
                await consumer.wait_for(sent.total())
            assert sent.total() >= SHARDS
            assert consumer.seen == sent
        assert [slot.pid for slot in sup.slots] == pids, "a worker was replaced"
        assert all(slot.restarts == 0 for slot in sup.slots)
        assert all(s.state == "ready" for s in sup.status())
        assert not sb.violations


def assert_no_token(loot: Loot) -> None:
    text = loot.text()
    assert TOKEN not in text and "c0ntr0l-t0k3n" not in text, "the attacker got the token"
    assert "assign" not in loot.kinds


async def try_everything(control: str, sup: Supervisor, curve: CurveClient | None) -> Loot:
    """Every move of issue 12 item 1 on the control channel, from one peer."""
    loot = Loot()
    client = ControlClient(control, curve=curve)
    try:
        await exchange(client, loot, ("status", {}))
        pids = [slot.pid for slot in sup.slots]
        for index, pid in enumerate(pids):
            await exchange(client, loot,
                           ("register", {"worker": index, "pid": pid}),
                           ("register", {"worker": index, "secret": "00" * 32}),
                           ("register", {"worker": index}))
        await exchange(client, loot, ("register", {"worker": None, "pid": 1}),
                       ("state", {"shards": [{"id": 0, "state": "failed", "error": {
                           "kind": "AuthenticationError", "message": "forged", "code": 4004}}]}),
                       ("reply", {"id": "x", "ok": True}), ("beat", {}))
    finally:
        client.close()
    return loot


# -- without keys ----------------------------------------------------------------------------


async def test_a_stranger_on_an_insecure_loopback_control_gets_no_token_and_no_pids() -> None:
    with short_dir() as run_dir:
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with guarded_cluster(run_dir, control_endpoint=control,
                                   insecure_loopback=True) as cluster:
            loot = await try_everything(cluster.control, cluster.sup, curve=None)
            refused = cluster.sup.control_refusals
    assert_no_token(loot)
    assert refused["registration"] == 7  # every attempt counted (and logged once)
    statuses = [m.body for m in loot.messages if m.kind == "status"]
    assert statuses, "an anonymous peer still gets a (redacted) status"
    body = statuses[0]
    assert body["summary"]["shards"] == SHARDS and body["summary"]["all_ready"] is True
    for row in body["shards"]:
        assert set(row) <= {"id", "worker", "state"}, row
    for worker in body["workers"]:
        assert "pid" not in worker
    assert body.get("redacted") is True


async def test_a_stranger_on_the_private_ipc_control_cannot_take_a_slot() -> None:
    # The same OS user (the 0700 directory lets no one else in) counts as an operator: a
    # full status, pids included -- yet a pid is no credential.
    with short_dir() as run_dir:
        async with guarded_cluster(run_dir) as cluster:
            loot = await try_everything(cluster.control, cluster.sup, curve=None)
    assert_no_token(loot)
    statuses = [m.body for m in loot.messages if m.kind == "status"]
    assert statuses and all(row["pid"] for row in statuses[0]["shards"])


async def test_a_flood_of_status_requests_that_never_reads_leaves_the_cluster_running(
        ) -> None:
    # Issue 12 item 4: replies pile up for a peer that never reads, until the ROUTER's
    # send would block; the supervisor must drop them, never raise or wait.
    with short_dir() as run_dir:
        async with guarded_cluster(run_dir) as cluster:
            context = zmq.asyncio.Context()
            flood = context.socket(zmq.DEALER)
            flood.setsockopt(zmq.RCVHWM, 1)
            flood.setsockopt(zmq.LINGER, 0)
            flood.connect(cluster.control)
            try:
                request = [b"SC1", b"status", b"{}"]
                with anyio.fail_after(30):
                    for _ in range(5000):
                        await flood.send_multipart(request)
                # The supervisor is still serving: a well-behaved asker gets its answer.
                polite = ControlClient(cluster.control)
                try:
                    with anyio.fail_after(10):
                        await polite.send("status")
                        while (await polite.receive()).kind != "status":
                            pass
                finally:
                    polite.close()
                assert cluster.sup.control_refusals["rate"] > 4000
            finally:
                flood.close(linger=0)
                context.term()


async def test_strangers_flooding_status_never_keep_a_respawned_worker_out() -> None:
    # Strangers on an insecure loopback endpoint share one request budget; a worker's
    # registration is never charged to it, so it gets through while they exhaust it.
    with short_dir() as run_dir:
        config = SandboxConfig(shard_count=2, max_concurrency=2, identify_interval=0.2,
                               heartbeat_interval_ms=2000, guilds_per_shard=1, token=TOKEN)
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with Sandbox(config) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=1, identify_interval=0.2,
                runtime_dir=run_dir, state_file=run_dir / "state.json",
                control_endpoint=control, insecure_loopback=True) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            control = sup.endpoints["control"]
            context = zmq.asyncio.Context()
            floods = [context.socket(zmq.DEALER) for _ in range(20)]

            async def flood(sock: zmq.asyncio.Socket) -> None:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(control)
                while True:
                    await sock.send_multipart([b"SC1", b"status", b"{}"])
                    await anyio.sleep(0.01)

            try:
                # The floods end with their task group, before their sockets close: a send
                # woken on a closed socket fails with ENOTSOCK.
                async with anyio.create_task_group() as tg:
                    for sock in floods:
                        tg.start_soon(flood, sock)
                    old = sup.slots[0].pid
                    assert old is not None
                    os.kill(old, signal.SIGKILL)
                    with anyio.fail_after(30):
                        await sup.wait_until(lambda shards: all(
                            s.state == "ready" and s.pid not in (None, old) for s in shards))
                    tg.cancel_scope.cancel()
                assert sup.control_refusals["rate"] > 0, "the strangers never ran dry"
                assert sup.slots[0].restarts == 1
            finally:
                for sock in floods:
                    sock.close(linger=0)
                context.term()


async def test_a_status_request_read_during_a_stop_is_answered_not_a_crash() -> None:
    """The stop of ``async with Supervisor`` takes new requests no more, but the control
    loop still reads while the workers close: a ``status`` read then (an operator watching
    the stop, or a stranger's flood still queued) is answered; it once failed an assertion
    and took the whole stop down."""
    with short_dir() as run_dir:
        config = SandboxConfig(shard_count=2, max_concurrency=2, identify_interval=0.2,
                               heartbeat_interval_ms=2000, guilds_per_shard=1, token=TOKEN)
        context = zmq.Context()
        ask = context.socket(zmq.DEALER)
        ask.setsockopt(zmq.LINGER, 0)
        try:
            async with Sandbox(config) as sb:
                sup = Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                                 identify_interval=0.2, runtime_dir=run_dir,
                                 state_file=run_dir / "state.json")
                await sup.__aenter__()
                try:
                    with anyio.fail_after(30):
                        await sup.wait_ready()
                    ask.connect(sup.endpoints["control"])
                    ask.send_multipart([b"SC1", b"status", b"{}"])  # sync: no task switch
                finally:
                    # read by the control loop only once the stop has begun
                    await sup.__aexit__(None, None, None)
            reply = ask.recv_multipart(zmq.NOBLOCK) if ask.poll(5000) else None
        finally:
            ask.close()
            context.term()
    assert reply is not None, "the status request was not answered during the stop"
    assert reply[:2] == [b"SC1", b"status"]
    assert TOKEN.encode() not in b"".join(reply)


# -- with CURVE keys -------------------------------------------------------------------------


@asynccontextmanager
async def curve_cluster() -> AsyncIterator[tuple[Cluster, Path]]:
    with short_dir() as base:
        generate_keys(base / "keys")
        (base / "run").mkdir(mode=0o700)
        control = "tcp://127.0.0.1:*"  # the port the supervisor binds: sup.endpoints["control"]
        async with guarded_cluster(base / "run", control_endpoint=control,
                                   curve_keys=base / "keys") as cluster:
            yield cluster, base / "keys"


async def test_a_consumer_key_cannot_reach_the_control_channel() -> None:
    async with curve_cluster() as (cluster, keys):
        loot = await try_everything(cluster.control, cluster.sup, load_client(keys, "consumer"))
    assert_no_token(loot)
    assert loot.messages == [], "a consumer key was heard on the control channel"


async def test_a_worker_key_cannot_take_a_local_slot_or_a_busy_one() -> None:
    # The worker key is authorised, but every slot is taken: a spawned slot needs the
    # per-spawn secret, and there is no free remote slot.
    async with curve_cluster() as (cluster, keys):
        loot = await try_everything(cluster.control, cluster.sup, load_client(keys, "worker"))
    assert_no_token(loot)


async def test_an_operator_key_sees_the_full_status_but_cannot_register() -> None:
    async with curve_cluster() as (cluster, keys):
        loot = await try_everything(cluster.control, cluster.sup,
                                    load_client(keys, "operator"))
        pids = {slot.pid for slot in cluster.sup.slots}
    assert_no_token(loot)
    statuses = [m.body for m in loot.messages if m.kind == "status"]
    assert statuses and {row["pid"] for row in statuses[0]["shards"]} == pids
    assert "redacted" not in statuses[0]
