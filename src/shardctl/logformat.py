"""Log output of the supervisor and its workers: text for people, JSON lines for machines.

``--log-format json`` (``SHARDCTL_LOG_FORMAT=json``, which worker processes inherit) writes
one JSON object per line: ``{"ts": "2026-01-01T12:00:00.123Z", "level": "INFO",
"logger": "shardctl.cluster.supervisor", "process": "supervisor", "msg": "..."}``, plus
``"exc"`` with the traceback when there is one.  Standard library only: the worker process
uses it too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

FORMATS: Final = ("text", "json")
ENV_FORMAT: Final = "SHARDCTL_LOG_FORMAT"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def __init__(self, process: str = "supervisor") -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, object] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": self._process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, fmt: str, process: str = "supervisor",
              stream: TextIO | None = None, handler: logging.Handler | None = None) -> None:
    """Replace the root logger's handlers with one in ``fmt`` ("text" or "json")."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        if fmt == "json":
            handler.setFormatter(JsonFormatter(process))
        else:
            # The supervisor's text lines stay as they always were; workers name themselves.
            prefix = "" if process == "supervisor" else f"{process} "
            handler.setFormatter(logging.Formatter(
                f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def format_from_env() -> str:
    fmt = os.environ.get(ENV_FORMAT, "text").lower()
    return fmt if fmt in FORMATS else "text"
