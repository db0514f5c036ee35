"""``scripts/bench [--quick] [--only NAME]... [--peers]``: run the figures, print the table,
write bench/results.json."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from bench import latency, memory, peers, recovery, scale, startup, steady, stream, throughput
from bench.common import Figure, log

FIGURES: dict[str, Callable[[bool], Awaitable[list[Figure]]]] = {
    "throughput": throughput.run,
    "startup": startup.run,
    "memory": memory.run,
    "latency": latency.run,
    "recovery": recovery.run,
    "steady": steady.run,
    "stream": stream.run,
    "scale": scale.run,
}
QUICK_NOTE = ("--quick scales down: figure 1 sends 4,000 instead of 15,000 events per shard "
              "and skips its floor run; "
              "figure 2 runs only its jittery start-up (not Discord's pace nor 256 shards); "
              "figure 3 measures 400 instead of 1,000 idle shards and skips the 2,500-shard "
              "5-minute soak; figure 4 runs 5 s instead of 20 s and skips its floor run; "
              "figure 6 sends for 2.5 s instead of 10 s and skips its floor and publish-window "
              "runs; figure 7 sends 1,000 "
              "instead of 5,000 events per shard; "
              "figure 8 (10,000 shards for 10 minutes) is skipped.  Figure 5 is unchanged.")


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "reference", "ratio", "target", "pass")]
    for f in figures:
        passed = {True: "PASS", False: "FAIL", None: "info"}[f.passed]
        rows.append((f.name, fmt(f.value), f.unit, fmt(f.reference), fmt(f.ratio),
                     f.target, passed))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_results(out: Path, results: dict[str, object]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return out


async def main(args: argparse.Namespace) -> int:
    names = args.only or list(FIGURES)
    figures: list[Figure] = []
    started = time.monotonic()
    for name in names:
        t0 = time.monotonic()
        try:
            if name == "scale":
                figures += await scale.run(args.quick, scale.Settings(
                    args.scale_shards, args.scale_minutes, args.scale_max_concurrency,
                    args.scale_sandbox_processes))
            else:
                figures += await FIGURES[name](args.quick)
        except Exception as exc:  # one broken figure must not hide the others
            traceback.print_exc()
            log(f"{name}: failed: {type(exc).__name__}: {exc}")
            figures.append(Figure(f"{name} (error)", None, "", target=str(exc)[:80],
                                  limit=0))
        log(f"{name}: {time.monotonic() - t0:.0f} s")
    if args.peers:
        figures += await peers.run(args.quick, names, figures)
    elapsed = time.monotonic() - started
    command = "scripts/bench " + " ".join(sys.argv[1:])
    print(f"\n$ {command.strip()}   ({elapsed:.0f} s, {platform.python_version()}, "
          f"{platform.machine()})")
    if args.quick:
        print(QUICK_NOTE)
    print(table(figures))
    out = write_results(Path(args.output), {
        "command": command.strip(), "quick": args.quick, "seconds": round(elapsed, 1),
        "figures": [f.as_json() for f in figures]})
    print(f"wrote {out}")
    return 0 if all(f.passed is not False for f in figures) else 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller runs, under two minutes")
    p.add_argument("--only", action="append", choices=list(FIGURES), metavar="NAME",
                   help=f"run only this figure (repeatable): {', '.join(FIGURES)}")
    p.add_argument("--peers", action="store_true",
                   help="also run discord.py, hikari and @discordjs/ws for figures 1, 2 and 6")
    p.add_argument("--scale-shards", type=int, default=10_000, metavar="N",
                   help="figure 8's shard count (a smaller one for a dry run)")
    p.add_argument("--scale-minutes", type=float, default=10.0, metavar="M",
                   help="how long figure 8 holds its shards")
    p.add_argument("--scale-max-concurrency", type=int, default=256, metavar="K",
                   help="the max_concurrency the sandbox grants in figure 8")
    p.add_argument("--scale-sandbox-processes", type=int, default=4, metavar="P",
                   help="sandbox processes sharing the gateway port in figure 8")
    p.add_argument("--output", default=str(Path(__file__).parent / "results.json"))
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(anyio.run(main, parse()))
