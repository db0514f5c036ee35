"""A cluster under faults, and a consumer process that proves what reached it.

What "no loss" means here (the contract the fault tests and the chaos run assert):

- Every ``MESSAGE_CREATE`` the sandbox accepted for a session (``sb.dispatch`` returned its
  ``s``) reaches the consumer exactly once, keyed by (shard, s, message id): the id tells the
  sessions of one shard apart, since a new session numbers from 1 again.
- A fault that keeps the session (op 7, op 9 true, drop, zombie, 4000, 4008, a corrupt or
  non-JSON frame, an outage, a dead or frozen worker, a supervisor restart) loses nothing:
  Discord replays the gap on RESUME, and no IDENTIFY is spent.
- A fault that ends the session (op 9 false, 4007, 4009) costs exactly one IDENTIFY for the
  shard.  What Discord would have sent the dead session after it ended is never sent by
  anyone (``sb.dispatch`` finds no live session and returns nothing), so it cannot be
  asked for; everything sent before the end, and everything of the new session, must
  arrive once.
- Per shard, the gateway ``s`` of the dispatches the consumer sees (all types) is
  contiguous within a session: every step is +1, and only a READY (``s`` = 1) starts over.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import orjson
from anyio.streams.text import TextReceiveStream
from clusterkit import TOKEN, short_dir, terminate

from shardctl.cluster.supervisor import Supervisor
from shardctl.gateway.intents import Intents
from shardctl.sandbox import Sandbox, SandboxConfig

Key = tuple[int, int, str]  # (shard, gateway s, message id)

_ids = itertools.count(1)


def sandbox_config(shards: int, **kw: Any) -> SandboxConfig:
    args: dict[str, Any] = {"shard_count": shards, "max_concurrency": shards,
                            "identify_interval": 0.2, "heartbeat_interval_ms": 2000,
                            "guilds_per_shard": 1, "session_ttl": 60.0,
                            "reconnect_close_after": 3.0}
    args.update(kw)
    return SandboxConfig(**args)


class EventLog:
    """``shardctl events`` (every type) in its own process: every line and every gap."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.messages: Counter[Key] = Counter()
        self.order: dict[int, list[tuple[int, str]]] = {}  # shard → (s, t) in arrival order
        self.lifecycle: list[tuple[int, str]] = []
        self.gaps: list[str] = []
        self._changed = anyio.Event()

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stdout):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            for line in lines:
                self._line(orjson.loads(line))
            self._wake()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        buffer = ""
        async for chunk in TextReceiveStream(self.process.stderr):
            buffer += chunk
            *lines, buffer = buffer.split("\n")
            self.gaps += [line for line in lines if line.startswith("gap:")]
            self._wake()

    def _line(self, event: dict[str, Any]) -> None:
        shard, seq, t = event["shard"], event["seq"], event["t"]
        if seq is None:
            self.lifecycle.append((shard, t))
            return
        self.order.setdefault(shard, []).append((seq, t))
        if t == "MESSAGE_CREATE":
            self.messages[(shard, seq, event["d"]["id"])] += 1

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds, re-checked on every line read (stdout or stderr)."""
        while not predicate():
            await self._changed.wait()

    async def wait_for(self, keys: Counter[Key]) -> None:
        """Until every key was seen at least once."""
        while any(k not in self.messages for k in keys):
            await self._changed.wait()

    def discontinuities(self) -> list[str]:
        """Steps of ``s`` that are not +1 within a session (a READY starts a new one)."""
        bad: list[str] = []
        for shard, seen in self.order.items():
            for (prev, _), (seq, t) in itertools.pairwise(seen):
                if seq != prev + 1 and t != "READY":
                    bad.append(f"shard {shard}: s {prev} then {seq} ({t})")
        return bad


@asynccontextmanager
async def event_log(endpoint: str, *types: str) -> AsyncIterator[EventLog]:
    args = [sys.executable, "-m", "shardctl.cli", "events", "--endpoint", endpoint]
    for t in types:
        args += ["--type", t]
    process = await anyio.open_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = EventLog(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(log._read_stdout)
            tg.start_soon(log._read_stderr)
            yield log
            tg.cancel_scope.cancel()
    finally:
        await terminate(process)


async def push(sb: Sandbox, shard_ids: list[int], count: int) -> Counter[Key]:
    """``count`` MESSAGE_CREATE per shard, each with a unique id; the keys the sandbox sent."""
    sent: Counter[Key] = Counter()
    for _ in range(count):
        for shard_id in shard_ids:
            guild = sb.world.guilds_for(shard_id, sb.config.shard_count)[0]
            mid = str(next(_ids))
            d = {"id": mid, "guild_id": str(guild.id), "channel_id": str(guild.text_channel_id),
                 "content": "m" + mid}
            for seq in await sb.dispatch(shard_id, "MESSAGE_CREATE", d):
                sent[(shard_id, seq, mid)] += 1
    return sent


@dataclass
class Cluster:
    sb: Sandbox
    sup: Supervisor
    log: EventLog
    run_dir: Path
    shards: list[int]
    sent: Counter[Key] = field(default_factory=Counter)
    #: (rule, shard) the fault itself causes: a frozen worker cannot heartbeat, so Discord
    #: closes its sockets 4000 ("heartbeat_late") if it notices before the supervisor does.
    excused: set[tuple[str, int | None]] = field(default_factory=set)

    async def push(self, count: int, shard_ids: list[int] | None = None) -> None:
        self.sent += await push(self.sb, self.shards if shard_ids is None else shard_ids,
                                count)

    async def settle(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a budget
        """Every shard ready, then one more message each; wait until all sent arrived.

        Events of one shard arrive in order, so once the last push has arrived anything
        that was going to be duplicated already has been.
        """
        try:
            with anyio.fail_after(timeout):
                # Discord's side first: the supervisor may not have heard of a fault yet.
                await self.sb.wait_for(lambda: all(self.live(s) for s in self.shards),
                                       timeout=timeout)
                await self.sup.wait_until(
                    lambda shards: all(s.state == "ready" for s in shards))
                await self.push(1)
                await self.log.wait_for(self.sent)
        except TimeoutError:
            missing = sorted(k for k in self.sent if k not in self.log.messages)
            not_live = [s for s in self.shards if not self.live(s)]
            states = {s.id: s.state for s in self.sup.status() if s.state != "ready"}
            raise AssertionError(
                f"not settled in {timeout:g} s: {len(missing)} messages missing "
                f"(first {missing[:10]}), shards not live at the sandbox {not_live}, "
                f"not ready {states}\n" + "\n".join(self.explain(k) for k in missing[:3])
            ) from None

    def explain(self, key: Key) -> str:
        """What the sandbox and the consumer saw of one shard around one message."""
        shard, seq, _ = key
        records = [r for r in self.sb.record if r.shard_id == shard]
        sent = [r.at for r in records if r.kind == "dispatch" and r.get("seq") == seq]
        at = sent[0] if sent else None
        lines = [f"shard {shard} s {seq}: sandbox dispatch records at {sent}"]
        if at is not None:
            for r in records:
                if abs(r.at - at) <= 3.0 and (r.kind != "dispatch"
                                               or abs((r.get("seq") or 0) - seq) <= 2):
                    lines.append(f"  {r.at - at:+.3f} conn {r.conn} {r.kind} {r.details}")
        got = [s for s, _ in self.log.order.get(shard, [])]
        if seq in got or not got:
            near = got
        else:
            i = next((n for n, s in enumerate(got) if s > seq), len(got))
            near = got[max(0, i - 3):i + 3]
        lines.append(f"  consumer saw s around it: {near}")
        return "\n".join(lines)

    def live(self, shard: int) -> bool:
        """The sandbox has exactly one authenticated socket with a session for ``shard``."""
        conns = self.sb.live_connections(shard)
        return len(conns) == 1 and conns[0].authed and conns[0].session is not None

    def assert_exactly_once(self) -> None:
        missing = [k for k in self.sent if k not in self.log.messages]
        extra = [k for k in self.log.messages if k not in self.sent]
        dups = [k for k, n in self.log.messages.items() if n > 1]
        assert not missing, f"lost: {missing[:10]}"
        assert not extra, f"never sent: {extra[:10]}"
        assert not dups, f"duplicated: {dups[:10]}"
        assert not self.log.discontinuities(), self.log.discontinuities()[:10]
        assert not self.log.gaps, self.log.gaps[:10]
        violations = [v for v in self.sb.violations if (v.rule, v.shard_id) not in self.excused]
        assert not violations, violations[:10]


@asynccontextmanager
async def cluster(shards: int = 4, processes: int = 2, *, config: SandboxConfig | None = None,
                  **options: Any) -> AsyncIterator[Cluster]:
    """Sandbox + Supervisor (worker processes) + an ``events`` consumer process, all ready."""
    cfg = config or sandbox_config(shards)
    with short_dir() as run_dir:
        async with Sandbox(cfg) as sb, Supervisor(
                token=TOKEN, api_url=sb.api_url, processes=processes, identify_interval=0.2,
                runtime_dir=run_dir, intents=Intents.default(),
                state_file=run_dir / "state.json", **options) as sup:
            with anyio.fail_after(30):
                await sup.wait_ready()
            async with event_log(sup.endpoints["events"]) as log:
                with anyio.fail_after(20):
                    await sup.wait_subscribed(b"")
                yield Cluster(sb, sup, log, run_dir, list(range(cfg.shard_count)))
