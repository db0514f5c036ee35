"""The live view of `shardctl run` in a pseudo-terminal, and its ETA arithmetic."""

from __future__ import annotations

import signal
import sys

import pexpect
import pytest
from rich.console import Console

from runkit import run_args, run_env
from shardctl.cli.liveview import Progress, choose_mode, format_duration, identify_eta


def test_run_on_a_terminal_shows_progress_and_a_worker_table() -> None:
    with run_env() as (path, env):
        args = run_args(path)
        child = pexpect.spawn(args[0], args[1:], env=env, cwd=str(path), timeout=20,
                              dimensions=(40, 140), encoding="utf-8")
        try:
            child.expect(r"\d+/8 shards READY")
            child.expect("events/s")        # the per-worker table
            child.expect("8/8 shards READY")
            child.expect(r"4 ready")        # a worker's row: its state counts (4 shards each)
            child.kill(signal.SIGINT)
            child.expect(pexpect.EOF)
            child.close()
            assert child.exitstatus == 0, child.before
        finally:
            if child.isalive():
                child.terminate(force=True)


@pytest.mark.parametrize(
    ("waiting", "mc", "last", "now", "eta"),
    [
        ([], 1, {}, 0.0, 0.0),
        ([0], 1, {}, 0.0, 0.0),                      # a free bucket: at once
        ([0, 1, 2, 3], 1, {}, 0.0, 15.0),            # one bucket: 3 intervals after the first
        ([0, 1, 2, 3], 2, {}, 0.0, 5.0),             # two buckets of two
        ([0, 1, 2, 3], 2, {0: 8.0}, 10.0, 8.0),      # bucket 0 free at 13, then one more
        (list(range(1000)), 16, {}, 0.0, 62 * 5.0),  # 63 rounds of 16 (ceil(1000/16) = 63)
    ],
)
def test_eta_follows_the_limiter_schedule(waiting: list[int], mc: int,
                                          last: dict[int, float], now: float,
                                          eta: float) -> None:
    assert identify_eta(waiting, max_concurrency=mc, interval=5.0, last_grants=last,
                        now=now) == pytest.approx(eta)


def test_progress_line_and_modes() -> None:
    assert Progress(3, 8, 125.0).line == "3/8 shards READY  ETA 2m05s"
    assert Progress(8, 8, 0.0).line == "8/8 shards READY"
    assert format_duration(7260) == "2h01m"
    assert choose_mode("json", isatty=True) == "json"
    assert choose_mode("text", isatty=True) == "live"
    assert choose_mode("text", isatty=False) == "text"
    assert isinstance(Console(file=sys.stderr), Console)


def test_the_live_view_shows_a_running_operation_above_the_worker_table() -> None:
    import anyio

    from shardctl.cli.liveview import LiveView
    from shardctl.cluster.counters import EventTotals
    from shardctl.cluster.supervisor import ShardStatus
    from shardctl.cluster.workers import WorkerSlot

    class Cluster:
        """What the view reads of a Supervisor, mid-way through a rolling restart."""

        slots = [WorkerSlot(0, [0], pid=11), WorkerSlot(1, [1], pid=12)]
        event_totals = EventTotals()
        limiter = None
        info = None
        operation = {"kind": "restart-workers", "rolling": True, "state": "running",
                     "workers": [0, 1], "done": [0], "skipped": [], "phases": {"1": "resuming"},
                     "resumed": 1, "identified": 0, "elapsed_s": 2.0, "error": None}

        def status(self) -> list[ShardStatus]:
            return [ShardStatus(0, "ready", 0, 11), ShardStatus(1, "resuming", 1, 12)]

    async def render() -> str:
        console = Console(record=True, width=160)
        console.print(LiveView(Cluster(), console).render())  # type: ignore[arg-type]
        return console.export_text()

    text = anyio.run(render)
    assert ("rolling restart of workers: 1/2 workers replaced; worker 1 resuming; "
            "1 shards RESUMEd, 0 IDENTIFYed; 2.0 s") in text
    assert text.index("workers replaced") < text.index("events/s")


def test_the_live_view_shows_a_running_reshard_with_its_new_set_progress() -> None:
    import anyio

    from shardctl.cli.liveview import LiveView
    from shardctl.cluster.counters import EventTotals
    from shardctl.cluster.reshard_progress import ReshardProgress
    from shardctl.cluster.supervisor import ShardStatus
    from shardctl.cluster.workers import WorkerSlot

    progress = ReshardProgress(2, 4, 10.0, rolling_generation=0, clock=lambda: 11.5)
    progress.phase, progress.ready = "starting", 3

    class Cluster:
        """What the view reads of a Supervisor whose new shard set is coming up."""

        slots = [WorkerSlot(0, [0, 1], pid=11), WorkerSlot(1, [0, 1, 2, 3], pid=12)]
        event_totals = EventTotals()
        limiter = None
        info = None
        operation = progress.to_body()

        def status(self) -> list[ShardStatus]:
            return [ShardStatus(0, "ready", 0, 11), ShardStatus(1, "ready", 0, 11)]

    async def render() -> str:
        console = Console(record=True, width=160)
        console.print(LiveView(Cluster(), console).render())  # type: ignore[arg-type]
        return console.export_text()

    text = anyio.run(render)
    assert "reshard 2 -> 4 shards: starting the new set (3/4 READY); 1.5 s" in text
    assert text.index("3/4 READY") < text.index("events/s")
