"""Does the dashboard slow the recorder? Ticks/s of `run` with and without pages polling its API.

The simulator (speed 1, QQQ + 80 option contracts, RATE trades/s) runs here; `run` runs as its own
process (`tests/service_process.py`) writing to SQLite, with its health port (which serves the
dashboard) open. Its database already holds yesterday's whole session at one row per second
(23,400 rows), the heaviest series the page can ask for. Each load runs for the same wall time:

- baseline: nobody looks;
- one page: what an open page asks every 5 s (healthz, series since its last point, options, gaps),
  asked every second;
- 4 pages reloading: 4 clients asking, back to back, yesterday's whole series (downsampled to 2,000
  points), the option snapshot and /healthz.

Measured from the wire: ticks/s the service received (its /healthz `stream.ticks`) against trades/s
the simulator sent, the service's CPU (from /proc), and the API's answer times. The clients run in a
separate process, so their own CPU does not count against the simulator.
Usage: python bench/dashboard.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

from _rows import ROOT, Row, percentile, print_table, row  # first: it puts tests/ on sys.path

# isort: split

from pg_cluster import free_port

from streaming_service.dashboard.queries import day_bounds
from streaming_service.models import Batch, EquityRow, IndicatorRow
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
from streaming_service.sinks import SQLiteSink

RUNNER = ROOT / "tests" / "service_process.py"
RATE = 300.0  # trades per second offered
LOADS = ("baseline", "one page", "4 pages reloading")


class Scale(NamedTuple):
    """How much one run does."""

    seconds: float  # each load's measured wall time
    warmup_s: float  # streaming before the measurement: the first option snapshot, the first writes
    yesterday: int  # one-second rows of the session before (the page asks for 2,000 points of it)


FULL = Scale(seconds=30.0, warmup_s=3.0, yesterday=23_400)
#: CI: the same steps, figures not meaningful; in 2 s an open page asks twice (then `since` its last point)
QUICK = Scale(seconds=2.0, warmup_s=0.5, yesterday=4000)


def _get(port: int, path: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def poll(port: int, load: str, day: str, seconds: float) -> None:
    """The clients of `load` for `seconds`; prints a JSON line of answer times (ms)."""
    times: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def ask(path: str) -> Any:
        started = time.perf_counter()
        status, body = _get(port, path)
        times.append((time.perf_counter() - started) * 1000)
        if status not in (200, 503):
            errors[0] += 1
        return body

    def one_page() -> None:
        last = None
        while time.monotonic() < stop:
            ask("/healthz")
            since = "" if last is None else f"&since={last.replace('+', '%2B')}"
            points = ask(f"/api/series?ticker=QQQ{since}").get("points") or []
            last = points[-1]["timestamp"] if points else last
            ask("/api/options?ticker=QQQ")
            ask("/api/gaps?ticker=QQQ")
            time.sleep(1.0)

    def reloading() -> None:
        while time.monotonic() < stop:
            ask(f"/api/series?ticker=QQQ&day={day}&points=2000")
            ask("/api/options?ticker=QQQ")
            ask("/healthz")

    clients = [one_page] if load == "one page" else [reloading] * 4
    threads = [threading.Thread(target=client) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"times": times, "errors": errors[0]}), flush=True)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _yesterday(path: Path, market: SimulatedMarket, rows: int) -> str:
    """Write the session before the simulator's: `rows` one-second rows with indicators."""
    day = market.session_date - timedelta(days=1)
    opened = day_bounds(day)[0] + timedelta(hours=9, minutes=30)
    rng, price = random.Random(3), 500.0
    equity, indicators = [], []
    for i in range(rows):
        price = round(price + rng.uniform(-0.05, 0.05), 2)
        ts = opened + timedelta(seconds=i)
        equity.append(EquityRow("QQQ", ts, price, rng.randint(1, 50) * 100))
        indicators.append(IndicatorRow("QQQ", ts, price - 0.01, price + 0.01))
    sink = SQLiteSink(path)
    await sink.open()
    await sink.write(Batch(equity=tuple(equity), indicators=tuple(indicators)))
    await sink.aclose()
    return day.isoformat()


async def _measure(load: str, scale: Scale) -> dict[str, Any]:
    market = SimulatedMarket(["QQQ"], seed=11, trades_per_second=RATE)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        day = await _yesterday(Path(tmp) / "rows.db", market, scale.yesterday)
        token = Path(tmp) / "token.json"
        write_token_file(token)
        ours = ("SCHWAB", "SUPABASE")
        env = {k: v for k, v in os.environ.items() if k.isupper() and not k.startswith(ours)}
        env.update(STREAM_TICKER="QQQ", DATABASE_URL=f"sqlite:///{tmp}/rows.db", SKIP_MARKET_HOURS="true",
                   HEALTH_PORT=str(port), SPOOL_PATH=f"{tmp}/spool.db", DEAD_LETTER_PATH=f"{tmp}/dead.jsonl",
                   LOG_LEVEL="WARNING")  # fmt: skip
        async with SchwabSimulator(market, speed=1.0, heartbeat_seconds=1.0) as sim:
            clock = [str(v) for v in (*sim.start_clock(), 1.0)]
            service = subprocess.Popen(  # noqa: ASYNC220 - started once; the loop only polls it
                [sys.executable, str(RUNNER), sim.api_base_url, str(token), *clock],
                cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await _streaming(port, service)
                await asyncio.sleep(scale.warmup_s)
                sent0, ticks0 = len(sim.sent_trades), await _ticks(port)
                cpu0, t0 = _cpu_s(service.pid), time.time()
                answers: dict[str, Any] = {"times": [], "errors": 0}
                if load == "baseline":
                    await asyncio.sleep(scale.seconds)
                else:
                    clients = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--poll", str(port), load, day, str(scale.seconds),
                        stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    out, _ = await clients.communicate()
                    answers = json.loads(out.decode().strip().splitlines()[-1])
                wall = time.time() - t0
                sent, ticks = len(sim.sent_trades) - sent0, await _ticks(port) - ticks0
                cpu = _cpu_s(service.pid) - cpu0
            finally:
                service.terminate()
                await asyncio.to_thread(service.wait, 30)  # the simulator answers its goodbye meanwhile
    return {"sent_per_s": sent / wall, "ticks_per_s": ticks / wall, "cpu": cpu / wall, **answers}


async def _ticks(port: int) -> int:
    _, body = await asyncio.to_thread(_get, port, "/healthz")
    return int(body["stream"]["ticks"])


async def _streaming(port: int, service: subprocess.Popen[bytes], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while True:
        if service.poll() is not None:
            raise SystemExit(f"the run process exited with {service.returncode}")
        try:
            _, body = await asyncio.to_thread(_get, port, "/healthz")
            if body.get("state") == "streaming" and body["stream"]["ticks"] > 0:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the run process did not start streaming within a minute")
        await asyncio.sleep(0.2)


def run(quick: bool = False) -> list[Row]:
    scale = QUICK if quick else FULL
    results = {load: asyncio.run(_measure(load, scale)) for load in LOADS}
    base = results["baseline"]
    rows = [row(f"dashboard: offered load ({RATE:.0f} trades/s, {scale.seconds:g} s per load)",
                round(base["sent_per_s"], 1), "trades/s")]  # fmt: skip
    for load, result in results.items():
        rows.append(row(f"dashboard: ticks/s received, {load}", round(result["ticks_per_s"], 1), "ticks/s",
                        round(base["ticks_per_s"], 1)))  # fmt: skip
        rows.append(row(f"dashboard: service CPU, {load}", round(100 * result["cpu"], 1), "%",
                        round(100 * base["cpu"], 1)))  # fmt: skip
        if result["times"]:
            times = result["times"]
            asked = f"{len(times)} requests, {result['errors']} errors"
            p50 = round(percentile(times, 0.5), 1)
            rows.append(row(f"dashboard: API answer p50, {load} ({asked})", p50, "ms"))
            rows.append(row(f"dashboard: API answer p99, {load}", round(percentile(times, 0.99), 1), "ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--poll", nargs=4, metavar=("PORT", "LOAD", "DAY", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.poll:
        port, load, day, seconds = args.poll
        poll(int(port), load, day, float(seconds))
        return
    print_table(run(args.quick))


if __name__ == "__main__":
    main()
