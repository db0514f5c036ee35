"""A spawned worker asks the kernel for SIGTERM when its supervisor dies (Linux)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import anyio
import pytest

from shardctl.worker.parent import PARENT_PID_VARIABLE, die_with_parent, expected_parent

pytestmark = pytest.mark.anyio

#: A "supervisor" that starts a "worker" which arms the parent-death signal, reports its pid
#: and waits; the supervisor then waits forever.
MIDDLE = """
import subprocess, sys
WORKER = '''
import os, time
from shardctl.worker.parent import die_with_parent
assert die_with_parent(os.getppid())
print(os.getpid(), flush=True)
time.sleep(60)
'''
subprocess.Popen([sys.executable, "-c", WORKER], stdout=sys.stdout).wait()
"""

def test_the_parent_pid_comes_from_the_environment() -> None:
    assert expected_parent({PARENT_PID_VARIABLE: "123"}) == 123
    assert expected_parent({PARENT_PID_VARIABLE: "x"}) is None
    assert expected_parent({}) is None
    assert die_with_parent(None)  # a remote worker: nothing to follow


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
async def test_a_worker_gets_sigterm_when_its_supervisor_is_killed() -> None:
    middle = await anyio.open_process([sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE)
    try:
        assert middle.stdout is not None
        with anyio.fail_after(20):
            worker_pid = int((await middle.stdout.receive()).decode().split()[0])
        pidfd = os.pidfd_open(worker_pid)
        try:
            middle.kill()
            with anyio.fail_after(5):
                await anyio.wait_readable(pidfd)  # the worker exited
        finally:
            os.close(pidfd)
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed and reaped above
            middle.kill()
        await middle.wait()


def test_a_worker_whose_supervisor_is_already_gone_is_told_so() -> None:
    # run in a child: arming PR_SET_PDEATHSIG in the test runner itself would outlive the test
    code = ("import sys; from shardctl.worker.parent import die_with_parent; "
            "sys.exit(0 if die_with_parent(1) is False else 1)")
    result = subprocess.run([sys.executable, "-c", code], check=False, timeout=20)
    assert result.returncode == 0
