"""`python -m bench [--quick] [--only NAME ...] [--write bench/RESULTS.md]`: every benchmark, one table.

Each part measures its figures and a baseline in the same run and prints the ratio:
- wire: CPU µs per frame over a real loopback WebSocket (stock schwab-py's dispatch vs ours);
- sinks: rows/s of our sinks against a naive one-row-per-request writer;
- latency: trade → committed row, p50/p99, low-latency settings and defaults;
- recovery: first write after a database outage, drain rows/s, RSS while draining;
- soak: steady RSS and growth of `run` over a simulated session, import cost per dependency;
- dashboard: ticks/s and CPU of `run` with pages polling its dashboard API, against nobody looking.
`--quick` runs each at a small scale, all at once (CI runs it to keep the code working: the same code
paths, figures not meaningful, no thresholds). `--write FILE` rewrites FILE (bench/RESULTS.md) with the
machine, date and library versions and a `## <title>` section per part, each with its own table; the
sections' prose, the parts not run (`--only`) and everything from `## Capacity on the nano` on (kept by
hand) stay as they were.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

#: Each part's section title in RESULTS.md, in order; the docs link to their anchors (#cpu-per-frame).
SECTIONS = {
    "wire": "CPU per frame", "sinks": "Write throughput", "latency": "Latency",
    "recovery": "Recovery and catch-up", "soak": "Memory", "dashboard": "Dashboard",
}  # fmt: skip
PARTS = tuple(SECTIONS)
#: RESULTS.md from this heading on is kept by hand: --write leaves it as it is.
HAND_KEPT = "## Capacity on the nano"
TABLE_HEADER = "| part | what | value | unit | baseline | ratio | note |"
INTRO = (
    "Every measured figure of this project is recorded here, once; each stands beside a baseline "
    "measured in the same run, and `ratio` is figure ÷ baseline."
)
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
    lines = [TABLE_HEADER, "|---|---|---|---|---|---|---|"]
    for row in rows:
        cells = [row.get(k) for k in ("part", "name", "value", "unit", "baseline", "ratio", "note")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render_results(header: list[str], rows: list[dict[str, Any]], old: str) -> str:
    """RESULTS.md's new text: `header` (title, run, machine, libraries), the introduction of `old`,
    then a `## <title>` section (`SECTIONS`) per part: its prose in `old` (or a line naming its
    script) around a table of its `rows`; a part without rows keeps its section of `old` as it was.
    Then any other section of `old`, and everything of `old` from `HAND_KEPT` on, unchanged.
    `old` is '' when there is no file yet."""
    generated, hand_heading, hand_kept = old.partition(HAND_KEPT)
    chunks = re.split(r"^## (.+)\n", generated, flags=re.MULTILINE)
    preamble, sections = chunks[0], dict(zip(chunks[1::2], chunks[2::2], strict=True))
    lines = preamble.split("\n")
    after_header = next((i + 1 for i, line in enumerate(lines) if line.startswith("- Libraries:")), None)
    intro = "\n".join(lines[after_header:]) if after_header else f"\n{INTRO}\n\n"
    out = ["\n".join(header), "\n", intro]
    for part, title in SECTIONS.items():
        mine = [row for row in rows if row["part"] == part]
        body = sections.pop(title, None)
        if mine:
            body = _section_body(body or f"\n`bench/{part}.py`.\n\n", table(mine))
        if body is not None:
            out.append(f"## {title}\n{body.rstrip()}\n\n")
    out += [f"## {title}\n{body.rstrip()}\n\n" for title, body in sections.items()]
    text = "".join(out)
    return text + hand_heading + hand_kept if hand_heading else text.rstrip("\n") + "\n"


def _section_body(body: str, new_table: list[str]) -> str:
    """`body` (a section's text after its heading) with its table, or a new one after its prose,
    replaced by `new_table`."""
    lines = body.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER)), None)
    if start is None:
        while lines and not lines[-1]:
            lines.pop()
        before, after = [*lines, ""], ["", ""]
    else:
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        before, after = lines[:start], lines[end:]
    return "\n".join([*before, *new_table, *after])


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
    parser.add_argument(
        "--write", type=Path, help="also write the figures into this Markdown file (bench/RESULTS.md)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the parts import each other by name
    started = time.monotonic()
    parts = args.only or list(PARTS)
    rows = measure_all(parts, args.quick)
    print("\n".join(table(rows)))
    if args.write:
        flags = [*(["--quick"] * args.quick), *(["--only", *parts] * bool(args.only))]
        others = " (the other parts' sections are from earlier runs)" if args.only else ""
        took = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.monotonic() - started:.0f} s{others}"
        header = [
            "# Benchmark results",
            "",
            f"`{' '.join(['python -m bench', *flags])}`, {took}.",
            "",
            f"- Machine: {machine()}",
            f"- Libraries: {versions()}",
        ]
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(render_results(header, rows, old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
