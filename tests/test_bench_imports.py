"""scripts/bench is not run by the suite (it measures; tests do not time), but it must not
rot: every module of bench/ imports against today's package (a renamed or moved name in
shardctl breaks the benchmark silently otherwise)."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "bench")])
                 if m.name != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module(f"bench.{name}")
    assert module.__name__ == f"bench.{name}"
    sys.modules.pop(f"bench.{name}", None)
