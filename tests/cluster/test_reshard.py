"""Resharding a running cluster (issue 16 item 1): real worker processes, the sandbox as
Discord, a stream of MESSAGE_CREATE flowing across the switch.

Discord sends a guild's events to every session whose ``[shard_id, num_shards]`` owns it,
so while both sets run, both receive them.  What a consumer may see twice is exactly what
README "Resharding" says: a copy from the old set before the RESHARD events, and a copy
from the new set after them, marked OVERLAP.  The proof runs under the sandbox's other
routing too (``newest``: a guild's events go only to its owner under the newest count from
that owner's READY on), where the old set stops getting them early and every event is
sent once: nothing may be lost and nothing delivered twice.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from clusterkit import TOKEN, short_dir

from shardctl.cluster import sessions as session_file
from shardctl.cluster.reshard import ReshardError
from shardctl.cluster.supervisor import Supervisor
from shardctl.ipc.consumer import Consumer
from shardctl.sandbox import Sandbox, SandboxConfig
from shardctl.sandbox.faults import parse_fault

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MESSAGES = 16_000
GUILDS = 32
#: sent before the reshard starts
BEFORE_RESHARD = 2_000
CHUNK = 80


def sandbox_config(remaining: int, routing: str = "every") -> SandboxConfig:
    return SandboxConfig(shard_count=8, max_concurrency=16, identify_interval=0.2,
                         heartbeat_interval_ms=5000, guilds_per_shard=GUILDS // 8,
                         session_ttl=120.0, session_start_remaining=remaining,
                         record_dispatches=False, routing=routing)


class Received:
    """What the consumer got, in order: message ids with their OVERLAP flag, and where
    the RESHARD events fell."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, bool]] = []
        self.arrivals: list[float] = []
        self.reshards: list[dict[str, Any]] = []
        #: events of any type marked OVERLAP (READY, GUILD_CREATE ... of the new set too)
        self.overlap_events = 0
        #: index into ``messages`` at the first RESHARD event
        self.switch_index: int | None = None
        self.changed = anyio.Event()

    async def read(self, bus: Consumer) -> None:
        async for event in bus:
            self.overlap_events += event.overlap
            if event.type == "MESSAGE_CREATE":
                self.messages.append((int(event.d["id"]), event.overlap))
                self.arrivals.append(anyio.current_time())
            elif event.type == "RESHARD":
                if self.switch_index is None:
                    self.switch_index = len(self.messages)
                self.reshards.append(event.d)
            self.changed.set()
            self.changed = anyio.Event()

    async def wait_for(self, ids: set[int]) -> None:
        while not ids <= {mid for mid, _ in self.messages}:
            await self.changed.wait()


async def stream(sb: Sandbox, sent: list[int], started: anyio.Event,
                 switched: anyio.Event, done: anyio.Event) -> None:
    """MESSAGE_CREATE over 32 guilds, routed as the sandbox's ``routing`` says: 16,000 at
    least, and on until the switch, so events flow the whole time both sets run (the old
    set's move the bus past the counters the new set was handed, which is why the new set
    is rebased after the switch; a pause before the new set started left nothing to
    rebase)."""
    n = 0
    while n < MESSAGES or not switched.is_set():
        if n == BEFORE_RESHARD:
            started.set()
        sent.append(await message(sb, n))
        n += 1
        if n % CHUNK == 0:
            await anyio.sleep(0.04)  # the stream's pace (~2,000/s), not a synchronisation
    done.set()


async def message(sb: Sandbox, n: int) -> int:
    """MESSAGE_CREATE number ``n``, in guild ``n % GUILDS``; its id."""
    guild = list(sb.world.guilds.values())[n % GUILDS]
    mid = 1_300_000_000_000_000_000 + n
    await sb.broadcast("MESSAGE_CREATE", {
        "id": str(mid), "guild_id": str(guild.id),
        "channel_id": str(guild.text_channel_id), "content": f"m{n}",
        "author": {"id": "1200000000000000001", "username": "someone"}})
    return mid


async def until_in_step(sup: Supervisor, sb: Sandbox, received: Received,
                        sent: list[int]) -> None:
    """The new set numbers its own events from the counters it was handed when it started;
    where old-set events forwarded since then moved the bus past them (the stream makes that
    likely; the timing decides), it is rebased once its detour (the OVERLAP tail) ends, and
    its batches continue the bus again: nothing of it is renumbered any more.  The messages
    come one at a time, so the workers send batches of one event, whose trailer the
    forwarder does not read (it costs more than the event): their first event's number
    alone must show the set out of step.  Sends chunks of messages until one went through
    without a renumbered batch."""
    forwarder = sup._forwarder
    assert forwarder is not None

    async def chunk() -> None:
        ids = []
        for i in range(CHUNK):
            ids.append(await message(sb, len(sent) + i))
            await anyio.sleep(0.003)  # pacing, not a synchronisation
        sent.extend(ids)
        await received.wait_for(set(ids))
        await anyio.sleep(0.2)  # the stream's pace while the detour lasts (~12 s)

    while True:
        restamped = forwarder.stats.restamped
        await chunk()
        if forwarder.stats.restamped == restamped:
            break


async def watch_progress(sup: Supervisor, phases: list[tuple[str, str]]) -> None:
    """Every (phase, READY count) a running reshard's progress goes through."""
    while True:
        operation = sup.operation
        if operation is not None and operation["state"] == "running":
            phases.append((operation["phase"],
                           f"{operation['ready']}/{operation['new_shards']} READY"))
        await sup.wait_until(lambda _, seen=operation: sup.operation != seen)


@pytest.mark.timeout(300)  # its phases have bounds of their own: 60 + 120 s, a 30 s drain
@pytest.mark.parametrize("routing", ["every", "newest"])
async def test_reshard_8_to_16_under_load_loses_nothing_and_marks_the_overlap(
        monkeypatch: pytest.MonkeyPatch, routing: str) -> None:
    with short_dir() as run_dir:
        monkeypatch.setenv("XDG_STATE_HOME", str(run_dir / "xdg"))
        events = f"ipc://{run_dir}/ev.sock"
        async with Sandbox(sandbox_config(remaining=8 + 16, routing=routing)) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=2,
                           identify_interval=0.2, runtime_dir=run_dir,
                           events_endpoint=events) as sup, \
                Consumer(events) as bus, anyio.create_task_group() as tg:
            received = Received()
            tg.start_soon(received.read, bus)
            with anyio.fail_after(60):
                await sup.wait_ready()
                await sup.wait_subscribed(b"")
            old_file = sup.state_file
            identifies_before = len(sb.records("identify"))
            sb.recommend_shards(16)

            # The budget (16 left) cannot pay for 32 new shards: refused with the figures,
            # over the control channel as an operator would ask.
            refused = await anyio.run_process(
                [sys.executable, "-m", "shardctl.cli", "reshard", "--shards", "32",
                 "--control-endpoint", sup.endpoints["control"], "--timeout", "60"],
                check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert refused.returncode == 1, refused.stderr
            assert b"needs 32 session starts but only 16 of 1000 remain" in refused.stderr
            assert len(sb.records("identify")) == identifies_before
            assert len(sup.slots) == 2, "a refused reshard started workers"
            refusal = sup.operation
            assert refusal is not None and (refusal["kind"], refusal["state"],
                                            refusal["phase"]) == (
                "reshard", "failed", "budget_check")
            assert "needs 32 session starts" in refusal["error"]
            phases: list[tuple[str, str]] = []
            tg.start_soon(watch_progress, sup, phases)

            sent: list[int] = []
            started, switched, streamed = anyio.Event(), anyio.Event(), anyio.Event()
            tg.start_soon(stream, sb, sent, started, switched, streamed)
            with anyio.fail_after(120):
                await started.wait()
                result = await sup.reshard("auto")
                switched.set()
                await streamed.wait()
                await received.wait_for(set(sent))
                await until_in_step(sup, sb, received, sent)
            status = await anyio.run_process(
                [sys.executable, "-m", "shardctl.cli", "status", "--json",
                 "--control-endpoint", sup.endpoints["control"], "--timeout", "30"],
                check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert sup._forwarder is not None
            stats = sup._forwarder.stats
            tg.cancel_scope.cancel()

        # the progress moved through every phase, the new set's READY count up to 16, and
        # `shardctl status` shows the finished reshard
        steps = list(dict.fromkeys(phases))
        assert list(dict.fromkeys(p for p, _ in steps)) == [
            "budget_check", "starting", "catching_up", "retiring"], steps
        ready = [int(count.split("/")[0]) for phase, count in steps if phase != "budget_check"]
        assert ready == sorted(ready) and ready[0] < 16 and ready[-1] == 16, steps
        assert status.returncode == 0, status.stderr
        operation = orjson.loads(status.stdout)["operation"]
        assert (operation["kind"], operation["state"], operation["old_shards"],
                operation["new_shards"], operation["ready"]) == ("reshard", "done", 8, 16, 16)

        # identifies: the new set only, each shard once
        new_identifies = sb.records("identify")[identifies_before:]
        assert len(new_identifies) == 16
        assert sorted(r.shard_id for r in new_identifies) == list(range(16))
        assert not sb.violations, sb.violations
        closes = [r.details.get("code") for r in sb.records("client_close")]
        assert closes.count(1000) == 8, closes  # the old sessions end, never resumed

        assert (result.old_shards, result.new_shards) == (8, 16)
        assert sorted(r["shard_id"] for r in received.reshards) == list(range(16))
        assert all((r["old_shards"], r["new_shards"]) == (8, 16) for r in received.reshards)
        switch = received.switch_index
        assert switch is not None and 0 < switch < len(received.messages)

        # every id reached the consumer; a second copy only as documented: the first
        # before the switch from the old set, the second after it marked OVERLAP
        copies: dict[int, list[tuple[int, bool]]] = {}
        for index, (mid, overlap) in enumerate(received.messages):
            copies.setdefault(mid, []).append((index, overlap))
        assert set(copies) == set(sent)
        if routing == "newest":  # Discord sent each event once: the consumer gets it once
            assert len(received.messages) == len(copies), "a message was delivered twice"
        for mid, seen in copies.items():
            if len(seen) == 1:
                continue
            assert len(seen) == 2, (mid, seen)
            (first, first_marked), (second, second_marked) = seen
            assert not first_marked and first < switch, (mid, seen)
            assert second_marked and second >= switch, (mid, seen)
        overlap = sum(1 for _, marked in received.messages if marked)
        # the held events, plus those of the new set received in the tail after the switch
        assert received.overlap_events >= result.overlap_events
        assert all(not marked for _, marked in received.messages[:switch])

        # no window without events: the stream kept arriving across the switch
        gaps = [b - a for a, b in zip(received.arrivals, received.arrivals[1:], strict=False)]
        print(f"reshard ({routing}): {overlap} overlap events, {len(copies)} ids, "
              f"{len(received.messages) - len(copies)} second copies, "
              f"longest gap between two messages {max(gaps) * 1000:.0f} ms; batches "
              f"{stats.stamped} untouched, {stats.small} small, {stats.restamped} "
              f"renumbered; {stats.rebased} rebases")
        assert max(gaps) < 2.0

        # the state files: the new set's sessions under 16 shards; the old file empty
        new_file = session_file.default_state_file(TOKEN, 16, range(16))
        assert new_file != old_file
        body = orjson.loads(new_file.read_bytes())
        assert body["shard_count"] == 16 and len(body["sessions"]) == 16
        assert orjson.loads(old_file.read_bytes())["sessions"] == []


async def test_a_reshard_is_refused_with_one_line_when_it_cannot_work(
        tmp_path: Path) -> None:
    with short_dir() as run_dir:
        async with Sandbox(sandbox_config(remaining=100)) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.2, runtime_dir=run_dir,
                           state_file=tmp_path / "s.json") as sup:
            with anyio.fail_after(60):
                await sup.wait_ready()
            with pytest.raises(ReshardError, match="already runs 8 shards"):
                await sup.reshard("auto")  # Discord still recommends 8
            with pytest.raises(ReshardError, match="shard count of at least 1"):
                await sup.reshard(0)
            assert len(sup.slots) == 1


def small_sandbox() -> SandboxConfig:
    return SandboxConfig(shard_count=2, max_concurrency=4, identify_interval=0.2,
                         heartbeat_interval_ms=5000, guilds_per_shard=2, session_ttl=120.0)


def runs(count: int) -> Any:
    return lambda shards: len(shards) == count and all(s.state == "ready" for s in shards)


async def test_auto_reshard_follows_a_higher_recommendation(tmp_path: Path) -> None:
    with short_dir() as run_dir:
        async with Sandbox(small_sandbox()) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.2, runtime_dir=run_dir,
                           state_file=tmp_path / "s.json", auto_reshard=True,
                           reshard_check_interval=0.3) as sup:
            with anyio.fail_after(60):
                await sup.wait_ready()
                sb.recommend_shards(4)
                await sup.wait_until(runs(4))
            assert sup.shard_count == 4
        assert len(sb.records("identify")) == 2 + 4
        assert not sb.violations


async def test_auto_reshard_answers_close_4011_instead_of_stopping(tmp_path: Path) -> None:
    with short_dir() as run_dir:
        async with Sandbox(small_sandbox()) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.2, runtime_dir=run_dir,
                           state_file=tmp_path / "s.json", auto_reshard=True,
                           reshard_check_interval=3600) as sup:
            with anyio.fail_after(60):
                await sup.wait_ready()
                sb.recommend_shards(4, require=True)
                # op 9 (not resumable): shard 0 IDENTIFYs again, with 2 shards: 4011
                await sb.inject(0, "invalid_session")
                await sup.wait_until(runs(4))
            assert sup.shard_count == 4
        closes = [r.details.get("code") for r in sb.records("server_close")]
        assert 4011 in closes
        assert len(sb.records("identify")) == 2 + 4


async def test_a_failed_new_set_is_abandoned_and_the_old_set_keeps_serving(
        tmp_path: Path) -> None:
    with short_dir() as run_dir:
        events = f"ipc://{run_dir}/ev.sock"
        async with Sandbox(small_sandbox()) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.2, runtime_dir=run_dir, events_endpoint=events,
                           state_file=tmp_path / "s.json") as sup, \
                Consumer(events, types=["MESSAGE_CREATE"]) as bus:
            with anyio.fail_after(60):
                await sup.wait_ready()
                await sup.wait_subscribed(b"MESSAGE_CREATE\0")
            old_slots = list(sup.slots)
            sb.recommend_shards(4, require=True)  # a new set of 3 is closed 4011
            with anyio.fail_after(60), pytest.raises(
                    ReshardError, match=r"shard \d of the new set failed"):
                await sup.reshard(3)
            assert sup.shard_count == 2 and sup.slots == old_slots
            assert all(s.state == "ready" for s in sup.status())
            guild = next(iter(sb.world.guilds.values()))
            await sb.broadcast("MESSAGE_CREATE", {"id": "77", "guild_id": str(guild.id),
                                                  "channel_id": str(guild.text_channel_id)})
            with anyio.fail_after(10):
                event = await bus.__anext__()
            assert event.d["id"] == "77" and not event.overlap
        assert 4011 in [r.details.get("code") for r in sb.records("server_close")]


async def test_an_abandoned_reshard_forwards_what_only_the_new_set_received(
        tmp_path: Path) -> None:
    """With ``newest`` routing the new set's READY shards are the only ones Discord sends
    their guilds to: when the reshard is abandoned, those events are not the old set's to
    deliver, and dropping the held ones would lose them."""
    config = SandboxConfig(shard_count=2, max_concurrency=1, identify_interval=0.5,
                           heartbeat_interval_ms=5000, guilds_per_shard=2, session_ttl=120.0,
                           routing="newest")
    with short_dir() as run_dir:
        events = f"ipc://{run_dir}/ev.sock"
        async with Sandbox(config) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.5, runtime_dir=run_dir, events_endpoint=events,
                           state_file=tmp_path / "s.json") as sup, \
                Consumer(events, types=["MESSAGE_CREATE"]) as bus, \
                anyio.create_task_group() as tg:
            with anyio.fail_after(60):
                await sup.wait_ready()
                await sup.wait_subscribed(b"MESSAGE_CREATE\0")
            outcome: list[BaseException] = []
            done = anyio.Event()

            async def reshard() -> None:
                try:
                    await sup.reshard(4)
                except ReshardError as exc:
                    outcome.append(exc)
                finally:
                    done.set()

            def new_zero() -> list[Any]:
                return [s for s in sb.started_sessions(sb.now())
                        if (s.shard_id, s.num_shards) == (0, 4)]

            tg.start_soon(reshard)
            guild = next(g for g in sb.world.guilds.values() if (g.id >> 22) % 4 == 0)
            with anyio.fail_after(60):
                await sb.wait_for(lambda: bool(new_zero()), timeout=60)
                for n in range(20):  # shard 0 of 4 is READY: they go there alone
                    await sb.broadcast("MESSAGE_CREATE", {
                        "id": str(1000 + n), "guild_id": str(guild.id),
                        "channel_id": str(guild.text_channel_id)})
                conn = new_zero()[0].conn
                assert conn is not None
                await conn.apply(parse_fault(("close", 4014)), sb.now())  # fatal: abandoned
                await done.wait()
                got: dict[int, bool] = {}
                while len(got) < 20:
                    event = await bus.__anext__()
                    got[int(event.d["id"])] = event.overlap
            assert outcome and "failed" in str(outcome[0])
            assert sorted(got) == list(range(1000, 1020))
            assert all(got.values()), "the new set's events are marked OVERLAP"
            assert sup.shard_count == 2
            # the new set is gone: the guild's events are the old set's again
            await sb.broadcast("MESSAGE_CREATE", {"id": "77", "guild_id": str(guild.id),
                                                  "channel_id": str(guild.text_channel_id)})
            with anyio.fail_after(10):
                event = await bus.__anext__()
            assert event.d["id"] == "77" and not event.overlap
        assert not sb.violations, sb.violations


async def _log_lines(stream: Any, lines: list[str], changed: list[anyio.Event]) -> None:
    buffered = b""
    async for chunk in stream:
        buffered += chunk
        *complete, buffered = buffered.split(b"\n")
        lines.extend(line.decode() for line in complete)
        changed[0].set()
        changed[0] = anyio.Event()


async def test_a_reshard_identifies_through_the_shared_limiter_with_fresh_figures(
        tmp_path: Path) -> None:
    """``--limiter``: the new set's IDENTIFYs are paced by the external ``shardctl
    limiter`` (one bucket, 0.5 s apart, or the sandbox answers op 9), and the limiter is
    told Discord's figures as the reshard found them, not those of the start."""
    interval = 0.5
    config = SandboxConfig(shard_count=2, max_concurrency=1, identify_interval=interval,
                           heartbeat_interval_ms=5000, guilds_per_shard=2, session_ttl=120.0,
                           session_start_remaining=50)
    with short_dir() as run_dir:
        endpoint = f"ipc://{run_dir}/limiter.sock"
        limiter = await anyio.open_process(
            [sys.executable, "-m", "shardctl.cli", "limiter", "--bind", endpoint,
             "--identify-interval", str(interval), "--sandbox", "--max-concurrency", "1"],
            stdout=subprocess.DEVNULL)
        lines: list[str] = []
        changed = [anyio.Event()]

        def updates() -> list[str]:
            return [line for line in lines if "limits updated" in line]

        try:
            async with anyio.create_task_group() as logs:
                logs.start_soon(_log_lines, limiter.stderr, lines, changed)
                with anyio.fail_after(20):
                    while not any("serving" in line or "ipc://" in line for line in lines):
                        await changed[0].wait()
                async with Sandbox(config) as sb, \
                        Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                                   identify_interval=interval, runtime_dir=run_dir,
                                   state_file=tmp_path / "s.json", limiter=endpoint) as sup:
                    with anyio.fail_after(60):
                        await sup.wait_ready()
                    assert sup.limiter is None
                    sb.recommend_shards(4)
                    with anyio.fail_after(90):
                        await sup.reshard("auto")
                        while len(updates()) < 2:
                            await changed[0].wait()
                    assert sup.shard_count == 4
                logs.cancel_scope.cancel()
        finally:
            if limiter.returncode is None:
                limiter.terminate()
                with anyio.fail_after(10):
                    await limiter.wait()
            await limiter.aclose()

        # the start told the limiter 50 starts remain; the reshard, the 48 left after it
        assert "remaining=50" in updates()[0] and "remaining=48" in updates()[1], updates()
        assert not sb.records("identify_rejected") and not sb.records("invalid_session")
        assert not sb.violations, sb.violations
        new_set = sorted(r.at for r in sb.records("identify")[2:])
        assert len(new_set) == 4
        assert all(b - a >= interval for a, b in itertools.pairwise(new_set))


async def test_the_catch_up_asks_the_old_workers_for_their_seqs_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Between the last new READY and the switch the new set's events wait (with ``newest``
    routing the consumer gets nothing at all then): the old workers are asked for a state
    report at once, not at their next beat (30 s here, beyond the catch-up's 10 s bound)."""
    with short_dir() as run_dir:
        async with Sandbox(small_sandbox()) as sb, \
                Supervisor(token=TOKEN, api_url=sb.api_url, processes=1,
                           identify_interval=0.2, runtime_dir=run_dir, beat_interval=30.0,
                           liveness_timeout=120.0, state_file=tmp_path / "s.json") as sup:
            with anyio.fail_after(60):
                await sup.wait_ready()
            sb.recommend_shards(4)
            started = anyio.current_time()
            with anyio.fail_after(60):
                await sup.reshard("auto")
            took = anyio.current_time() - started
        assert "not all forwarded" not in caplog.text
        assert took < 8.0, took
        assert not sb.violations
