"""Workers on other hosts: three network namespaces joined by veth pairs, CURVE on.

The supervisor (with the sandbox) runs in one namespace, a ``shardctl worker --supervisor
tcp://...`` in each of two others.  Once every shard is READY, one worker's host vanishes
(its processes are SIGKILLed and its link goes down); its shards must move to the other
worker and RESUME: no new IDENTIFY, no sandbox violation, every event exactly once.

Needs root and iproute2 (CI has both); the namespaces and addresses (10.77.1.0/24,
10.77.2.0/24) exist only inside namespaces this test creates and always deletes.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from shardctl.ipc.security import generate_keys

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="creating network namespaces needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
]

HELPER = Path(__file__).with_name("netns_supervisor.py")
SUPERVISOR_IP = "10.77.1.1"
CONTROL = f"tcp://{SUPERVISOR_IP}:7700"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextmanager
def namespaces() -> Iterator[tuple[str, str, str]]:
    """Supervisor namespace S and worker namespaces W1, W2: W<i> reaches S over veth i."""
    tag = f"{os.getpid() % 100000}"
    sup, w1, w2 = f"scs{tag}", f"scw1{tag}", f"scw2{tag}"
    created: list[str] = []
    try:
        for ns in (sup, w1, w2):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        for i, ns in ((1, w1), (2, w2)):
            ip("-n", sup, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
               "netns", ns)
            ip("-n", sup, "addr", "add", f"10.77.{i}.1/24", "dev", f"v{i}")
            ip("-n", sup, "link", "set", f"v{i}", "up")
            ip("-n", ns, "addr", "add", f"10.77.{i}.2/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            # The supervisor listens on 10.77.1.1; W2 reaches it through its own veth.
            ip("-n", ns, "route", "add", "default", "via", f"10.77.{i}.1")
        yield sup, w1, w2
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20,
                           check=False)


class Lines:
    """JSON lines from a process's stdout, read by a thread, taken with a timeout."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            if line.startswith(b"{"):
                self._queue.put(orjson.loads(line))
        self._queue.put({"phase": "exited"})

    def expect(self, phase: str, timeout: float) -> dict[str, Any]:
        while True:
            message = self._queue.get(timeout=timeout)
            assert message["phase"] != "exited", f"the supervisor exited before {phase!r}"
            if message.get("phase") == phase:
                return message


def start(ns: str, args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as err:
        return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args],
                                stderr=err, env=env, start_new_session=True, **kwargs)


def kill_group(process: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_a_vanished_worker_host_s_shards_resume_on_the_other_worker() -> None:
    with tempfile.TemporaryDirectory(prefix="sc-ns-") as tmp, namespaces() as (sup, w1, w2):
        base = Path(tmp)
        keys = base / "keys"
        generate_keys(keys)
        run_dir = base / "run"
        run_dir.mkdir(mode=0o700)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            supervisor = start(sup, [str(HELPER), SUPERVISOR_IP, str(keys), str(run_dir)],
                               base / "supervisor.log", stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE)
            processes.append(supervisor)
            assert supervisor.stdout is not None and supervisor.stdin is not None
            lines = Lines(supervisor.stdout)
            lines.expect("started", timeout=30)
            workers = {ns: start(ns, ["-m", "shardctl.cli", "worker", "--supervisor", CONTROL,
                                      "--keys", str(keys)], base / f"{ns}.log")
                       for ns in (w1, w2)}
            processes += workers.values()

            ready = lines.expect("ready", timeout=90)
            owners = {int(shard): pid for shard, pid in ready["shards"].items()}
            # Every shard runs on one of the two remote workers, both in use.
            groups = {pid: os.getpgid(pid) for pid in set(owners.values())}
            assert set(groups.values()) == {p.pid for p in workers.values()}, ready
            victim_pid = next(pid for pid, group in groups.items() if group == workers[w1].pid)
            victim_shards = sorted(s for s, pid in owners.items() if pid == victim_pid)

            # The host vanishes: its processes die and its link goes down, no goodbye.
            kill_group(workers[w1])
            ip("-n", w1, "link", "set", "eth0", "down")
            supervisor.stdin.write(f"victim {victim_pid}\n".encode())
            supervisor.stdin.flush()

            moved = lines.expect("moved", timeout=120)
            survivor = next(pid for pid, group in groups.items() if group == workers[w2].pid)
            assert all(pid == survivor for pid in moved["shards"].values()), moved
            assert moved["identifies"] == ready["identifies"], "a RESUME was possible"
            assert all(moved["resumes"][str(s)] >= 1 for s in victim_shards), moved
            assert moved["violations"] == []
            assert moved["missing"] == [] and moved["duplicates"] == 0, moved
            assert moved["events"] == moved["expected"] > 0
            lines.expect("done", timeout=60)
        except BaseException:
            for name in ("supervisor.log", f"{w1}.log", f"{w2}.log"):
                path = base / name
                if path.exists():
                    sys.stderr.write(f"--- {name}\n{path.read_text()[-6000:]}\n")
            raise
        finally:
            for process in processes:
                kill_group(process)
