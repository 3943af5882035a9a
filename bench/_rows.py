"""Result rows shared by the benchmarks: `run(quick) -> list[dict]` returns `row(...)`s, `main()`
prints them with `print_table`. A row is {name, value, unit, baseline, ratio}; ratio = value /
baseline (None without a baseline)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from streaming_service.logs import configure_logging  # noqa: E402

configure_logging("json", "ERROR")  # as in production, no per-write log line; keeps stdout clean

Row = dict[str, Any]


def row(name: str, value: float, unit: str, baseline: float | None = None) -> Row:
    """One result; `baseline` is the same-run reference it is compared with."""
    ratio = value / baseline if baseline else None
    return {"name": name, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio}


@contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Drop what `logger` (a stdlib logger) reports inside the block: for errors the benchmark causes
    on purpose (a database it stops, a process it stops while it connects); restored on exit."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        target.setLevel(level)


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values` (nearest rank); NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def print_table(rows: list[Row]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>12}  {'unit':<8}  {'baseline':>12}  ratio")
    for r in rows:
        base = "" if r["baseline"] is None else f"{r['baseline']:12,.1f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        print(f"{r['name']:<{width}}  {r['value']:12,.1f}  {r['unit']:<8}  {base:>12}  {ratio}")
