"""`shardctl run` as a child process against its built-in sandbox (no token), for CLI tests."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def short_dir() -> Iterator[Path]:
    """ipc:// paths must stay under 107 bytes: pytest's tmp_path can be too deep."""
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def run_env() -> Iterator[tuple[Path, dict[str, str]]]:
    """A short private directory (ipc:// paths) and an environment without any token or
    SHARDCTL_* setting of the developer's."""
    path = Path(tempfile.mkdtemp(prefix="scrun-"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHARDCTL_") and k != "DISCORD_TOKEN"}
    env["SHARDCTL_RUNTIME_DIR"] = str(path / "run")
    env["PYTHONUNBUFFERED"] = "1"
    try:
        yield path, env
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_args(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shardctl.cli", "run", "--processes", "2",
            "--identify-interval", "0.2", "--state-file", str(path / "state.json"), *extra]
