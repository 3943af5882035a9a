"""Recovery from a database outage, through the real service on a local Postgres (fsync on).

The simulator streams QQQ (20 trades/s at speed 60: 1,200 trades/s, a row per trade) over a real
WebSocket to the real `Service` (in this process). The database is stopped for N seconds; during
the outage a backlog of extra rows (ticker BKLG) is added to the writer, standing for a long
outage's rows; then the database is started again. Printed:

- time to first write: from the moment the database accepts connections again to the first
  committed batch. Baseline, same run: when the retry backoff sleeping at that moment would have
  ended (`WriteStats.retry_due_at`), i.e. what the writer waited before it probed the sink;
- drain rows/s: rows written from the first write until the spool is nearly empty (< 2,000).
  Baseline: the same rows written straight to the sink in the same batch size (no spool), which is
  what Postgres itself costs;
- stream ticks/s during the drain, against ticks/s in the seconds before the outage (how much the
  drain starves the live stream);
- peak RSS while draining (this process: simulator and service), against RSS before the outage.
Usage: python bench/recovery.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from _rows import Row, print_table, quiet, row  # first: it puts tests/ on sys.path

# isort: split

from catchup import direct, rows
from harness import running_service
from pg_cluster import PgCluster, fresh_database

from streaming_service.simulator import SchwabSimulator, SimulatedMarket

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
_SAMPLE_S = 0.05


class Scale(NamedTuple):
    """How much one run does."""

    outage_s: float  # the database is down this long
    backlog: int  # extra pairs (2 rows each) added to the writer during the outage
    before_s: float  # the window for ticks/s before the outage


FULL = Scale(outage_s=70.0, backlog=300_000, before_s=2.0)
QUICK = Scale(outage_s=1.0, backlog=10_000, before_s=0.5)  # CI: the same steps, figures not meaningful


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _run(scale: Scale) -> list[Row]:
    outage_s, backlog = scale.outage_s, scale.backlog
    market = SimulatedMarket(["QQQ"], seed=7, trades_per_second=20.0, session_seconds=23_400.0)
    with (
        PgCluster(durable=True) as cluster,
        fresh_database(cluster) as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        async with (
            SchwabSimulator(market, speed=60, heartbeat_seconds=1) as sim,
            running_service(sim, Path(tmp), database_url=dsn, options_enabled=False) as service,
        ):
            stats, pipeline = service.batcher.stats, service.pipeline
            while stats.rows_written < 2000:  # noqa: ASYNC110 - streaming and writing
                await asyncio.sleep(_SAMPLE_S)
            ticks, mark = pipeline.ticks, time.monotonic()
            await asyncio.sleep(scale.before_s)  # the window for ticks/s before the outage
            ticks_before = (pipeline.ticks - ticks) / (time.monotonic() - mark)
            rss_before = _rss_mib()

            with quiet("psycopg"):  # its writes in flight when the database stops: expected
                await asyncio.to_thread(cluster.stop)
                for pair in rows(backlog, "BKLG"):
                    service.batcher.add(pair)
                await asyncio.sleep(outage_s)  # the outage
                await asyncio.to_thread(cluster.start)
                up_at = time.time()
                due = stats.retry_due_at or up_at
                written, batches = stats.rows_written, stats.batches
                while stats.batches == batches:  # noqa: ASYNC110 - a measurement poll
                    await asyncio.sleep(0.01)
            first = time.time() - up_at
            first_rows, ticks, mark, peak = stats.rows_written, pipeline.ticks, time.monotonic(), 0.0
            while service.spool.depth >= 2000:
                peak = max(peak, _rss_mib())
                await asyncio.sleep(_SAMPLE_S)
            took = time.monotonic() - mark
            drain = (stats.rows_written - first_rows) / took
            ticks_during = (pipeline.ticks - ticks) / took
            print(f"outage {outage_s:.0f}s; {stats.rows_written - written:,} rows drained in "
                  f"{took:.2f}s; probes {stats.probes}")  # fmt: skip
        baseline = await direct(dsn, backlog // 2)
    return [
        row(f"time to first write after a {outage_s:.0f} s outage", first, "s", max(0.0, due - up_at)),
        row("drain into Postgres (fsync on)", drain, "rows/s", baseline),
        row("stream during the drain", ticks_during, "ticks/s", ticks_before),
        row("peak RSS while draining", peak, "MiB", rss_before),
    ]


def run(quick: bool) -> list[Row]:
    """The result rows (see the module docstring); `quick`: seconds instead of ~2 min."""
    return asyncio.run(_run(QUICK if quick else FULL))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 1 s outage, for CI")
    print_table(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
