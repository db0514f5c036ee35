"""``shardctl status`` as text: one aligned row per shard and a summary line."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Final

from shardctl.cluster.rolling import operation_text

COLUMNS: Final = ("shard", "pid", "state", "latency ms", "seq", "guilds", "last event")


def _age(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def rows(shards: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    return [(_cell(s.get("id")), _cell(s.get("pid")), _cell(s.get("state")),
             _cell(s.get("latency_ms")), _cell(s.get("seq")), _cell(s.get("guilds")),
             _age(s.get("last_event_age"))) for s in shards]


def summary_line(summary: Mapping[str, Any]) -> str:
    states = summary.get("states") or {}
    parts = ", ".join(f"{n} {state}" for state, n in states.items()) or "no shards"
    latency = summary.get("mean_latency_ms")
    text = (f"{summary.get('ready', 0)}/{summary.get('shards', 0)} shards READY ({parts}); "
            f"{summary.get('workers', 0)} workers")
    if latency is not None:
        text += f"; mean latency {latency} ms"
    return text


def limiter_line(limiter: Mapping[str, Any]) -> str | None:
    """The identify margin (the usual one, and any bucket's widened one) and op 9 count."""
    buckets = [b for b in limiter.get("buckets") or [] if isinstance(b, Mapping)]
    if not buckets:
        return None
    usual = Counter(b.get("margin_ms") for b in buckets).most_common(1)[0][0]
    wider = [f"bucket {b.get('bucket')}: {b.get('margin_ms')} ms" for b in buckets
             if b.get("margin_ms") != usual]
    hit = [f"bucket {b.get('bucket')}: {b.get('op9')}" for b in buckets if b.get("op9")]
    total = limiter.get("op9", 0)
    return (f"identify margin {usual} ms" + (f" ({', '.join(wider)})" if wider else "")
            + f"; {total} IDENTIFY{'' if total == 1 else 's'} answered with op 9"
            + (f" ({', '.join(hit)})" if hit else ""))


def format_table(body: Mapping[str, Any]) -> str:
    table = [COLUMNS, *rows(body.get("shards") or [])]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(w) if i not in (2,) else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in table]
    limiter = body.get("limiter")
    if isinstance(limiter, Mapping) and (line := limiter_line(limiter)) is not None:
        lines.append(line)
    operation = body.get("operation")
    if isinstance(operation, Mapping):
        lines.append(operation_text(operation))
    lines.append(summary_line(body.get("summary") or {}))
    if body.get("redacted"):
        lines.append("(redacted for a peer without credentials: pass --keys DIR with an "
                     "operator key, or ask over the ipc:// endpoint, for pids and seqs)")
    return "\n".join(lines)
