"""PEP 562 lazy exports for a package ``__init__``: a name's module loads on first use.

Why: a worker process must not load the supervisor's modules (httpx, cluster/) nor the CLI
the sandbox's websocket server just because a package ``__init__`` names them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def exports(package: str, where: Mapping[str, str], namespace: dict[str, Any],
            public: Iterable[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``where`` maps each public name to
    the module that defines it; a loaded name is cached in ``namespace`` (the globals)."""
    names = frozenset(public)

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return getattr_, dir_
