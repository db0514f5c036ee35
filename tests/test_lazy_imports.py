"""Each process loads only its own side of the package (issue 14, DESIGN.md §2).

A worker must not pay for the supervisor (``cluster/``, httpx) or the sandbox, and the
supervisor must not load the websocket client or server unless it runs the sandbox.  Each
case runs in a fresh interpreter, because this test process has imported everything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import shardctl

#: Prints the modules loaded after ``python -m shardctl.worker --help``: the entry point the
#: supervisor spawns (cluster/workers.py), stopped by argparse once every import has run.
WORKER = """
import runpy, sys
sys.argv = ["shardctl.worker", "--help"]
try:
    runpy.run_module("shardctl.worker", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
"""

#: The supervisor as ``shardctl run`` builds it, without starting it.
SUPERVISOR = """
import sys
from shardctl.cli import main
try:
    main(["run", "--help"])
except SystemExit:
    pass
import shardctl.cluster.metrics, shardctl.cluster.supervisor, shardctl.cli.liveview
from shardctl import RunConfig, Supervisor
"""

#: The built-in sandbox (``shardctl run`` without a token, ``shardctl sandbox``).
SANDBOX = """
from shardctl.sandbox import Sandbox
"""

PRINT_MODULES = "\nprint('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"


def loaded_by(code: str) -> set[str]:
    """Modules a fresh interpreter holds after running ``code``."""
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code + PRINT_MODULES],
                          capture_output=True, text=True, timeout=60, check=True)
    return set(done.stderr.split())


def under(modules: set[str], *roots: str) -> set[str]:
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}


def test_a_worker_process_never_imports_the_supervisor_httpx_or_the_sandbox() -> None:
    modules = loaded_by(WORKER)
    assert "shardctl.worker.process" in modules  # the probe did run the worker's imports
    assert not under(modules, "shardctl.cluster", "httpx", "shardctl.sandbox", "nats",
                     "shardctl.stream")


def test_the_supervisor_never_imports_websockets_or_the_worker() -> None:
    modules = loaded_by(SUPERVISOR)
    assert "shardctl.cluster.supervisor" in modules
    assert not under(modules, "websockets", "shardctl.worker", "shardctl.sandbox.server",
                     "nats")  # NATS only once --stream is used


def test_running_the_sandbox_is_what_loads_websockets() -> None:
    # The control case: proves the probe sees websockets when it is imported.
    assert under(loaded_by(SANDBOX), "websockets")


def test_importing_shardctl_loads_no_layer_until_a_name_is_used() -> None:
    modules = loaded_by("import shardctl")
    assert not under(modules, "shardctl.cluster", "shardctl.worker", "shardctl.ipc",
                     "shardctl.sandbox", "httpx", "websockets", "zmq")


def test_every_public_name_maps_to_its_module_and_dir_lists_it() -> None:
    assert {*shardctl._WHERE, "__version__"} == set(shardctl.__all__)
    assert set(shardctl.__all__) <= set(dir(shardctl))
    from shardctl.cluster.supervisor import Supervisor

    assert shardctl.Supervisor is Supervisor


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = shardctl.Nope


def test_naming_stream_consumer_loads_no_nats_until_it_connects() -> None:
    modules = loaded_by("import shardctl\nshardctl.StreamConsumer")
    assert "shardctl.stream.consumer" in modules
    assert not under(modules, "nats", "shardctl.cluster", "httpx", "websockets")
