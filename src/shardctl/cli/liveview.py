"""The terminal view of ``shardctl run``: start-up progress with an ETA, and one row per worker.

Starting N shards takes about ``(ceil(N / max_concurrency) - 1) * interval`` by Discord's
rules (DESIGN.md §6), minutes for a large bot; the ETA is computed from the limiter's own
schedule (the bucket of every shard not yet READY, and when each bucket may next IDENTIFY),
not extrapolated from progress so far.  Refreshed about once a second from
``Supervisor.status()`` and the workers' event counters.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import anyio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shardctl.cluster.rolling import operation_text
from shardctl.cluster.supervisor import ShardStatus, Supervisor

READY: Final = "ready"
REFRESH: Final = 1.0


def identify_eta(waiting: Iterable[int], *, max_concurrency: int, interval: float,
                 last_grants: Mapping[int, float], now: float) -> float:
    """Seconds until the last of ``waiting`` shard ids can IDENTIFY, by the limiter's rules:
    one per bucket (``shard_id % max_concurrency``) per ``interval``, each bucket free
    ``interval`` after its last grant."""
    per_bucket = Counter(s % max_concurrency for s in waiting)
    eta = 0.0
    for bucket, count in per_bucket.items():
        free_in = max(0.0, last_grants.get(bucket, -math.inf) + interval - now)
        eta = max(eta, free_in + (count - 1) * interval)
    return eta


def format_duration(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class Progress:
    ready: int
    total: int
    eta: float | None

    @property
    def line(self) -> str:
        text = f"{self.ready}/{self.total} shards READY"
        if self.ready < self.total and self.eta is not None:
            text += f"  ETA {format_duration(self.eta)}"
        return text


def progress(sup: Supervisor) -> Progress:
    """READY count and the ETA from the limiter's schedule (or, with a shared limiter, from
    the pace alone)."""
    shards = sup.status()
    ready = sum(1 for s in shards if s.state == READY)
    # Shards with a session will RESUME: they take no identify slot.
    waiting = [s.id for s in shards if s.state != READY and not s.session_id]
    now = anyio.current_time()
    if sup.limiter is not None:
        try:
            scheduler = sup.limiter.scheduler
        except RuntimeError:
            return Progress(ready, len(shards), None)
        gap = scheduler.interval + max(scheduler.margins().values(), default=0.0)
        eta = identify_eta(waiting, max_concurrency=scheduler.max_concurrency,
                           interval=gap, last_grants=scheduler.last_grants(), now=now)
    elif sup.info is not None:
        eta = identify_eta(waiting, max_concurrency=sup.info.session_start_limit.max_concurrency,
                           interval=sup.config.identify_interval, last_grants={}, now=now)
    else:
        return Progress(ready, len(shards), None)
    return Progress(ready, len(shards), eta)


class LiveView:
    """Renders a supervisor; :meth:`run` keeps a rich ``Live`` display up until cancelled."""

    def __init__(self, sup: Supervisor, console: Console | None = None) -> None:
        self._sup = sup
        self.console = console or Console()
        # worker index -> (time, events total) at the previous refresh, for events/s
        self._last: dict[int, tuple[float, int]] = {}
        self._rates: dict[int, float] = {}

    def _update_rates(self, by_worker: Mapping[int, list[ShardStatus]], now: float) -> None:
        for index, shards in by_worker.items():
            total = sum(self._sup.event_totals.total(s.id) for s in shards)
            before = self._last.get(index)
            if before is not None and now > before[0]:
                self._rates[index] = max(0, total - before[1]) / (now - before[0])
            self._last[index] = (now, total)

    def render(self) -> RenderableType:
        sup = self._sup
        shards = sup.status()
        by_worker: dict[int, list[ShardStatus]] = {slot.index: [] for slot in sup.slots}
        for s in shards:
            by_worker.setdefault(s.worker, []).append(s)
        self._update_rates(by_worker, anyio.current_time())
        state = progress(sup)
        head = Table.grid(padding=(0, 2))
        head.add_row(ProgressBar(total=max(1, state.total), completed=state.ready, width=40),
                     Text(state.line, style="bold"))
        table = Table(title=None, expand=False)
        for name, justify in (("worker", "right"), ("pid", "right"), ("shards", "right"),
                              ("states", "left"), ("events/s", "right"),
                              ("latency ms", "right"), ("restarts", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for slot in sup.slots:
            members = by_worker.get(slot.index, [])
            counts = Counter(s.state for s in members)
            states = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
            latencies = [s.latency for s in members if s.latency is not None]
            mean = f"{sum(latencies) / len(latencies) * 1000:.0f}" if latencies else "-"
            rate = self._rates.get(slot.index)
            table.add_row(str(slot.index), str(slot.pid or "-"), str(len(members)), states,
                          "-" if rate is None else f"{rate:.1f}", mean, str(slot.restarts))
        operation = sup.operation
        if operation is None:
            return Group(head, table)
        # A drain or restart, running or the last one (cluster/rolling.py).
        style = {"running": "bold yellow", "failed": "bold red"}.get(operation["state"])
        return Group(head, Text(operation_text(operation), style=style or ""), table)

    async def run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=4) as live:
            while True:
                await anyio.sleep(REFRESH)
                live.update(self.render())


#: Without a terminal, a start-up progress line is logged this often until every shard is READY.
PROGRESS_LOG_INTERVAL: Final = 10.0

log = logging.getLogger("shardctl.run")


def choose_mode(log_format: str, *, isatty: bool) -> str:
    """"live" on a terminal with text logs; "json" with --log-format json; else "text"."""
    if log_format == "json":
        return "json"
    return "live" if isatty else "text"


class Display:
    """How ``shardctl run`` talks to its operator in one of three modes.

    ``live``: the rich view on the terminal, logs printed above it.  ``text``: the plain
    lines shardctl always printed on stdout, logs on stderr.  ``json``: every line, logs
    included, as one JSON object per line on stderr (``logformat``), nothing on stdout.
    """

    def __init__(self, mode: str, console: Console | None = None) -> None:
        self.mode = mode
        self.console = console or Console()

    def log_handler(self) -> logging.Handler | None:
        """The handler logs need in this mode (None: logformat's stream handler)."""
        if self.mode != "live":
            return None
        return RichHandler(console=self.console, show_path=False, markup=False)

    def say(self, message: str) -> None:
        if self.mode == "live":
            self.console.print(Text(message))
        elif self.mode == "json":
            log.info("%s", message.removeprefix("shardctl: "))
        else:
            print(message, flush=True)

    async def watch(self, sup: Supervisor) -> None:
        """Until cancelled: the live view, or progress lines while shards are starting."""
        if self.mode == "live":
            await LiveView(sup, self.console).run()
            return
        while True:
            with anyio.move_on_after(PROGRESS_LOG_INTERVAL):
                # A failure is the supervisor's to raise, from run().
                with contextlib.suppress(Exception):
                    await sup.wait_ready()
                return
            state = progress(sup)
            log.info("startup: %s", state.line)
