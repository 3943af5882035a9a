"""Catch-up after an outage: how fast a spooled backlog drains into a real local Postgres.

Usage: python bench/catchup.py [--pairs 50000]
Spools PAIRS equity rows with their indicator rows (2 x PAIRS rows) into a spool file, then lets the
writer (`Batcher`) drain it into a throwaway Postgres (initdb/pg_ctl, crash-safe settings, as
production runs) in MAX_BATCH_ROWS batches, deleting from the spool after each commit. Baseline,
measured in the same run: the same rows written straight to the sink in batches of the same size
(no spool), i.e. what Postgres itself costs. The target (issue 9) is >= 20,000 rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg_cluster import PgCluster, fresh_database  # noqa: E402

from streaming_service.batcher import MAX_BATCH_ROWS, Batcher  # noqa: E402
from streaming_service.models import Batch, EquityRow, IndicatorRow  # noqa: E402
from streaming_service.sinks.postgres import PostgresSink  # noqa: E402
from streaming_service.spool import Spool  # noqa: E402

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


def rows(pairs: int, ticker: str) -> list[tuple[EquityRow, IndicatorRow]]:
    out = []
    for i in range(pairs):
        ts = T0 + timedelta(milliseconds=250 * i)
        equity = EquityRow(ticker, ts, 500 + i % 100 / 100, 100 + i % 7)
        out.append((equity, IndicatorRow(ticker, ts, 500.1, 500.2)))
    return out


async def direct(dsn: str, pairs: int) -> float:
    sink = PostgresSink(dsn)
    await sink.open()
    data = rows(pairs, "BASE")
    half = MAX_BATCH_ROWS // 2
    started = time.perf_counter()
    for i in range(0, len(data), half):
        chunk = data[i : i + half]
        await sink.write(Batch(tuple(e for e, _ in chunk), tuple(ind for _, ind in chunk)))
    took = time.perf_counter() - started
    await sink.aclose()
    return 2 * pairs / took


async def through_spool(dsn: str, pairs: int, spool_path: Path) -> tuple[float, float]:
    spool = Spool(spool_path, max_bytes=2**34)
    await spool.open()
    started = time.perf_counter()
    for pair in rows(pairs, "QQQ"):
        spool.put(pair)
    await spool.commit()
    spooled = time.perf_counter() - started
    sink = PostgresSink(dsn)
    batcher = Batcher(sink, size=10, interval=3600, spool=spool)
    started = time.perf_counter()
    task = asyncio.create_task(batcher.run())
    await batcher.close(grace=600)
    await task
    took = time.perf_counter() - started
    assert spool.depth == 0 and batcher.stats.rows_written == 2 * pairs
    await spool.aclose()
    await sink.aclose()
    return 2 * pairs / spooled, 2 * pairs / took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50_000)
    args = parser.parse_args()
    with (
        PgCluster(durable=True) as cluster,
        fresh_database(cluster) as dsn,
        tempfile.TemporaryDirectory() as tmp,
    ):
        baseline = await direct(dsn, args.pairs)
        into_spool, drained = await through_spool(dsn, args.pairs, Path(tmp) / "spool.db")
    pairs = args.pairs
    print(f"rows: {2 * pairs} ({pairs} equity + {pairs} indicators), batches of {MAX_BATCH_ROWS}")
    print(f"baseline, straight to Postgres:     {baseline:10,.0f} rows/s")
    print(f"into the spool (one commit):        {into_spool:10,.0f} rows/s")
    print(f"spool -> Postgres (catch-up drain): {drained:10,.0f} rows/s ({drained / baseline:.2f}x baseline)")


if __name__ == "__main__":
    asyncio.run(main())
