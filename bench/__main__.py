"""`python -m bench [--quick] [--only NAME ...] [--write bench/RESULTS.md]`: every benchmark, one table.

Each part measures its figures and a baseline in the same run and prints the ratio:
- wire: CPU µs per frame over a real loopback WebSocket (stock schwab-py's dispatch vs ours);
- sinks: rows/s of our sinks against a naive one-row-per-request writer;
- latency: trade → committed row, p50/p99, low-latency settings and defaults;
- recovery: first write after a database outage, drain rows/s, RSS while draining;
- soak: steady RSS and growth of `run` over a simulated session, import cost per dependency;
- dashboard: ticks/s and CPU of `run` with pages polling its dashboard API, against nobody looking.
`--quick` runs each at a small scale, all at once (CI runs it to keep the code working: the same code
paths, figures not meaningful, no thresholds). `--write` also writes the table as Markdown with the
machine, date and library versions.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PARTS = ("wire", "sinks", "latency", "recovery", "soak", "dashboard")
LIBRARIES = ("schwab-py", "websockets", "orjson", "psycopg", "supabase", "postgrest", "httpx")


def machine() -> str:
    """CPU model, cores, RAM, OS and Python of this machine."""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown CPU",
    )  # fmt: skip
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    system = f"{platform.platform()}, Python {platform.python_version()}"
    return f"{cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM, {system}"


def versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return "" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table lines: what, value, unit, baseline, ratio, note."""
    lines = ["| part | what | value | unit | baseline | ratio | note |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row.get(k) for k in ("part", "name", "value", "unit", "baseline", "ratio", "note")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def _common(row: dict[str, Any]) -> dict[str, Any]:
    """A part's row in the table's columns (wire.py's rows name a feed and a path, in µs/frame,
    beside stock schwab-py's dispatch)."""
    if "us_per_frame" not in row:
        return row
    us, ratio = row["us_per_frame"], row["ratio_to_schwab_py"]
    met = "met" if row.get("meets_target") else "not met"
    note = f"target ≤ {row['target']} x stock: {met}" if row.get("target") else None
    return {"name": f"{row['feed']}: {row['path']}", "value": us, "unit": "µs/frame",
            "baseline": round(us / ratio, 2) if ratio else None, "ratio": ratio, "note": note}  # fmt: skip


def measure(part: str, quick: bool) -> list[dict[str, Any]]:
    """The rows of `part` in the table's columns; says on stderr how long it took."""
    module = importlib.import_module(part)
    began = time.monotonic()
    rows = module.run(quick=quick)
    print(f"{part}: {len(rows)} figures in {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    return [{"part": part, **_common(row)} for row in rows]


def measure_all(parts: list[str], quick: bool) -> list[dict[str, Any]]:
    """The rows of every part, in order. The full run measures one part at a time; `quick` runs
    them all at once, each in a process of its own (CI: seconds in all; the figures mean nothing)."""
    if not quick:
        return [row for part in parts for row in measure(part, quick)]
    # fork: a spawned child would not find `measure` in `python -m bench`'s __main__; this process
    # has imported no more than the standard library yet
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(parts), mp_context=fork) as pool:
        futures = [pool.submit(measure, part, quick) for part in parts]
        return [row for future in futures for row in future.result()]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small and all at once (CI)")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--write", type=Path, help="also write the table as Markdown to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the parts import each other by name
    started = time.monotonic()
    lines = table(measure_all(args.only or list(PARTS), args.quick))
    print("\n".join(lines))
    if args.write:
        header = [
            "# Benchmark results",
            "",
            f"`python -m bench{' --quick' if args.quick else ''}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{time.monotonic() - started:.0f} s.",
            "",
            f"- Machine: {machine()}",
            f"- Libraries: {versions()}",
            "",
        ]
        args.write.write_text("\n".join([*header, *lines, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
