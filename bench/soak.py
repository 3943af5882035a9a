"""Memory of the long-lived `run` process over a whole simulated session, and what each dependency costs.

Usage: python bench/soak.py [--quick] [--speed 300]
- soak: the simulator (1 ticker, 80 option contracts, 5 trades/s) runs here; `run` runs as its own
  process (`tests/service_process.py`: settings from the environment, the Schwab client pointed at
  the simulator, trade times checked against its clock) writing to SQLite. Its RSS is sampled every
  second (`--quick`: every quarter) from /proc: steady RSS (median after the first tenth of the
  session), peak, warm-up (the middle's median minus the second tenth's: caches filling) and growth
  over the second half (the last tenth's median minus the middle's: what a leak would show). Whether
  pandas is mapped into it is read from /proc/PID/maps (it must not be: the market calendar is
  computed in a short child process). `--quick` stops once `run` was sent 5,000 trades.
- imports: peak RSS of `python -c "import X"` for each dependency, minus a bare interpreter's, all
  measured in this run (side by side: each interpreter's peak is its own).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from _rows import ROOT, quiet  # first: it puts tests/ on sys.path

# isort: split

from pg_cluster import PgCluster, PgClusterError

from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file

RUNNER = ROOT / "tests" / "service_process.py"
DEPENDENCIES = (
    "streaming_service.cli",
    "schwab",
    "supabase",
    "psycopg",
    "websockets",
    "pydantic_settings",
    "structlog",
    "tenacity",
    "pandas",
)
SESSION_S = 23_400.0  # 09:30 to 16:00


class Scale(NamedTuple):
    """How much one run does."""

    trades: float  # stop once `run` was sent this many trades (inf: at the session's end)
    sample_s: float  # RSS sampled every this many wall seconds


FULL = Scale(trades=math.inf, sample_s=1.0)
#: CI: the same steps, figures not meaningful. A count of trades, not a time: `run` takes seconds to
#: start streaming, many more on a busy machine
QUICK = Scale(trades=5000, sample_s=0.25)


def peak_rss_mib(code: str) -> float:
    """Peak RSS (MiB) of a fresh interpreter running `code` (its VmHWM: the forked parent's pages
    before exec, which the child's rusage would count, are not included)."""
    probe = f"{code}\nprint(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024


def import_costs() -> list[dict[str, Any]]:
    with ThreadPoolExecutor() as pool:  # side by side: each interpreter's peak is its own
        bare, *peaks = pool.map(peak_rss_mib, ["pass", *(f"import {module}" for module in DEPENDENCIES)])
    rows = [{"name": "memory: bare interpreter", "value": round(bare, 1), "unit": "MiB"}]
    for module, peak in zip(DEPENDENCIES, peaks, strict=True):
        cost = peak - bare
        rows.append({"name": f"memory: import {module}", "value": round(cost, 1), "unit": "MiB",
                     "baseline": round(bare, 1), "ratio": round((bare + cost) / bare, 2)})  # fmt: skip
    return rows


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _maps_pandas(pid: int) -> bool:
    return "/pandas/" in Path(f"/proc/{pid}/maps").read_text()


async def _soak(scale: Scale, speed: float, database_url: str | None = None) -> dict[str, Any]:
    market = SimulatedMarket(["QQQ"], seed=7, trades_per_second=5.0, session_seconds=SESSION_S)
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token.json"
        write_token_file(token)
        env = {
            k: v for k, v in os.environ.items() if k.isupper() and not k.startswith(("SCHWAB", "SUPABASE"))
        }
        env.update(STREAM_TICKER="QQQ", DATABASE_URL=database_url or f"sqlite:///{tmp}/soak.db",
                   OPTIONS_ENABLED="true", SKIP_MARKET_HOURS="true", HEALTH_PORT="0",
                   SPOOL_PATH=f"{tmp}/spool.db", DEAD_LETTER_PATH=f"{tmp}/dead.jsonl",
                   LOG_LEVEL="WARNING")  # fmt: skip
        async with SchwabSimulator(market, speed=speed, heartbeat_seconds=1.0) as sim:
            clock = [str(v) for v in (*sim.start_clock(), speed)]
            argv = [sys.executable, str(RUNNER), sim.api_base_url, str(token), *clock]
            proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the loop only polls it
                argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            samples: list[float] = []
            try:
                while not sim.session_finished.is_set() and len(sim.sent_trades) < scale.trades:
                    await asyncio.sleep(scale.sample_s)
                    if proc.poll() is not None:
                        raise SystemExit(f"the run process exited with {proc.returncode}")
                    samples.append(_rss_mib(proc.pid))
                if not sim.sent_trades:  # it starts within seconds on an idle machine
                    raise SystemExit(
                        f"the run process streamed nothing in the {SESSION_S / speed:.0f} s the session"
                        " lasted: run the soak on a less busy machine or with a lower --speed"
                    )
                simulated_s = sim.clock() - market.open_ms / 1000
                pandas = _maps_pandas(proc.pid)
                contracts = len({s for s in sim.option_truth})
            finally:
                with quiet("websockets.server"):  # `run` stopped while it connects fails its handshake
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 30)  # the simulator answers its goodbye meanwhile
                    await sim.stop()  # the connections' handlers end (and log) in here
    tenth = max(1, len(samples) // 10)
    return {
        "steady": statistics.median(samples[tenth:]),
        "peak": max(samples),
        "warmup": statistics.median(samples[len(samples) // 2 - tenth : len(samples) // 2])
        - statistics.median(samples[tenth : 2 * tenth]),
        "growth": statistics.median(samples[-tenth:])
        - statistics.median(samples[len(samples) // 2 - tenth : len(samples) // 2]),
        "pandas": pandas,
        "contracts": contracts,
        "samples": len(samples),
        "trades": len(market.trades),
        "simulated_s": simulated_s,
    }


def run(quick: bool = False, speed: float = 300.0) -> list[dict[str, Any]]:
    """The table's memory rows (see the module docstring). The run process writes to a local
    Postgres (as in production, where the database is another process) when one can be started."""
    scale = QUICK if quick else FULL
    rows = import_costs()  # before the soak: under `bench --quick`, the other parts have started by then
    try:
        with PgCluster() as cluster:
            soak = asyncio.run(_soak(scale, speed, cluster.dsn()))
        sink = "Postgres"
    except PgClusterError:
        soak, sink = asyncio.run(_soak(scale, speed)), "SQLite"
    hours = soak["simulated_s"] / 3600
    what = f"run → {sink}, 1 ticker + {soak['contracts']} contracts, {hours:.1f} h simulated"
    rows += [
        {"name": f"memory: steady RSS ({what})", "value": round(soak["steady"], 1), "unit": "MiB",
         "baseline": 100.0, "ratio": round(soak["steady"] / 100.0, 2), "note": "target ≤ 100 MiB"},
        {"name": "memory: peak RSS", "value": round(soak["peak"], 1), "unit": "MiB"},
        {"name": "memory: warm-up, 2nd tenth → middle of the session", "value": round(soak["warmup"], 1),
         "unit": "MiB"},
        {"name": "memory: growth over the second half", "value": round(soak["growth"], 1), "unit": "MiB",
         "baseline": 2.0, "note": "target ≤ 2 MiB"},
        {"name": "memory: pandas in the run process", "value": "yes" if soak["pandas"] else "no", "unit": ""},
    ]  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="until run was sent 5,000 trades")
    parser.add_argument("--speed", type=float, default=300.0, help="simulated seconds per second")
    args = parser.parse_args()
    started = time.monotonic()
    for row in run(args.quick, args.speed):
        print(f"{row['name']:<70} {row['value']!s:>8} {row['unit']}")
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
