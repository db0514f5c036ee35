from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import shardctl
import shardctl.cluster.commands

PACKAGE = Path(shardctl.__file__).parent

#: DESIGN.md §2: imports point down only.
ALLOWED: dict[str, set[str]] = {
    "gateway": {"errors", "gateway"},
    "ipc": {"errors", "gateway", "ipc"},
    # logformat and heap: standard-library-only leaves (workers log in the supervisor's
    # format; a worker process freezes its start-up heap like `shardctl run` does).
    "worker": {"errors", "gateway", "ipc", "worker", "_version", "logformat", "heap"},
    # _lazy: a standard-library-only leaf (PEP 562 exports of a package __init__).
    "sandbox": {"errors", "gateway", "sandbox", "_lazy"},
    "cluster": {"errors", "gateway", "ipc", "cluster", "_version", "stream"},
    # the durable stream: NATS lives here only (imported lazily, stream/_nats.py); ports: a
    # standard-library-only leaf (the port a local nats-server binds)
    "stream": {"errors", "gateway", "ipc", "stream", "ports"},
}


def test_all_names_exist_and_are_exported() -> None:
    assert sorted(shardctl.__all__) == sorted(set(shardctl.__all__))
    for name in shardctl.__all__:
        assert hasattr(shardctl, name), name
    for name in ("Shard", "Supervisor", "Consumer", "Intents", "LocalSessionLimiter",
                 "ShardctlError", "Commands", "CommandReply", "CommandRefusedError"):
        assert name in shardctl.__all__


def test_commands_load_without_the_supervisor() -> None:
    # A bot's consumer process sends commands: it must not pay for cluster/ or httpx.
    code = ("import sys, shardctl; shardctl.Commands; "
            "print(sorted(m for m in sys.modules if m.startswith(('shardctl.cluster', "
            "'httpx'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
    assert shardctl.CommandReply is shardctl.cluster.commands.CommandReply


def _imports(path: Path) -> set[str]:
    """Top-level shardctl subpackages a module imports (``shardctl.ipc.bus`` → ``ipc``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "shardctl":
            names = [f"shardctl.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "shardctl":
                found.add(parts[1] if len(parts) > 1 else "")
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_nothing_imports_upward(layer: str) -> None:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        upward = _imports(path) - ALLOWED[layer]
        assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}"


def test_only_ipc_imports_zmq() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "ipc":
            continue
        tree = ast.parse(path.read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom)}
        assert not any(m == "zmq" or m.startswith("zmq.") for m in modules), path


def test_nothing_outside_cli_imports_it() -> None:
    # The command line sits on top: the library, workers and the sandbox never need it.
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "cli":
            continue
        assert "cli" not in _imports(path), f"{path.relative_to(PACKAGE)} imports cli/"
