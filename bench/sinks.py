"""Rows/s of our sinks against a naive one-row-per-request writer, in the same run.

- Postgres: `PostgresSink` into a throwaway crash-safe Postgres (fsync on) at BATCH_SIZE 10, 100
  and 1000 (each equity row with its indicators row: a batch holds 2 x BATCH_SIZE rows). Naive:
  one autocommitted `INSERT … ON CONFLICT DO UPDATE` per row on one connection.
- Supabase: `SupabaseSink` through `tests/postgrest_double.py` (a PostgREST stand-in over a Postgres
  with Supabase's roles; it pools its database connections) with 20 ms added to every request, a
  network round trip. Naive: supabase-py's `upsert` of one row per request.
Usage: python bench/sinks.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from _rows import Row, print_table, row  # first: it puts tests/ on sys.path

# isort: split

import psycopg
from pg_cluster import PgCluster, fresh_database
from postgrest_double import PostgrestDouble, make_key
from supabase_db import bootstrap_roles, prepare_database

from streaming_service.models import Batch, EquityRow, IndicatorRow
from streaming_service.sinks.base import TABLE_COLUMNS, upsert_conflict
from streaming_service.sinks.postgres import PostgresSink
from streaming_service.sinks.supabase import SupabaseSink

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
SIZES = (10, 100, 1000)
DELAY_S = 0.02


class Scale(NamedTuple):
    """How many equity rows (each with its indicators row) each writer writes."""

    postgres: int  # per batch size
    naive_postgres: int
    supabase: int  # per batch size
    naive_supabase: int


FULL = Scale(postgres=30_000, naive_postgres=3000, supabase=20_000, naive_supabase=250)
#: CI: the same writes, figures not meaningful
QUICK = Scale(postgres=1000, naive_postgres=100, supabase=200, naive_supabase=10)


def _batches(pairs: int, size: int, ticker: str) -> list[Batch]:
    out = []
    for start in range(0, pairs, size):
        stamps = [T0 + timedelta(milliseconds=10 * i) for i in range(start, min(pairs, start + size))]
        out.append(Batch(tuple(EquityRow(ticker, ts, 500.25, 100) for ts in stamps),
                         tuple(IndicatorRow(ticker, ts, 500.1, 500.2) for ts in stamps)))  # fmt: skip
    return out


async def _sink_rate(sink: PostgresSink | SupabaseSink, batches: list[Batch]) -> float:
    await sink.open()
    started = time.perf_counter()
    for batch in batches:
        await sink.write(batch)
    took = time.perf_counter() - started
    await sink.aclose()
    return sum(len(b) for b in batches) / took


async def _naive_postgres(dsn: str, pairs: int) -> float:
    sql = {t: f"INSERT INTO {t} ({', '.join(TABLE_COLUMNS[t])}) VALUES (%s, %s, %s, %s) "
              + upsert_conflict(t) for t in ("equity_data", "indicators")}  # fmt: skip
    batch = _batches(pairs, pairs, "NAIVE")[0]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for equity, indicators in zip(batch.equity, batch.indicators, strict=True):
            values = (equity.ticker, equity.timestamp, equity.price, equity.volume)
            await conn.execute(sql["equity_data"], values)
            await conn.execute(sql["indicators"], (indicators.ticker, indicators.timestamp, indicators.sma9,
                                                   indicators.vwap))  # fmt: skip
        return 2 * pairs / (time.perf_counter() - started)


async def _naive_supabase(sink: SupabaseSink, pairs: int) -> float:
    client = await sink.connect()
    batch = _batches(pairs, pairs, "NAIVE")[0]
    started = time.perf_counter()
    for equity, indicators in zip(batch.equity, batch.indicators, strict=True):
        for table, model in (("equity_data", equity), ("indicators", indicators)):
            values = {c: getattr(model, c) for c in TABLE_COLUMNS[table]}
            values["timestamp"] = model.timestamp.isoformat()
            await client.table(table).upsert(values, on_conflict="ticker,timestamp").execute()
    took = time.perf_counter() - started
    await sink.aclose()
    return 2 * pairs / took


async def _run(scale: Scale) -> list[Row]:
    pg_pairs, naive_pg, sb_pairs, naive_sb = scale
    rows: list[Row] = []
    with PgCluster(durable=True) as cluster, fresh_database(cluster) as dsn:
        await PostgresSink(dsn).open()  # the tables
        naive = await _naive_postgres(dsn, naive_pg)
        for size in SIZES:
            rate = await _sink_rate(PostgresSink(dsn), _batches(pg_pairs, size, f"PG{size}"))
            rows.append(row(f"Postgres sink, BATCH_SIZE={size}", rate, "rows/s", naive))
    with PgCluster(durable=True) as cluster, tempfile.TemporaryDirectory() as tmp:
        bootstrap_roles(cluster.dsn())
        with fresh_database(cluster) as dsn:
            prepare_database(dsn)
            with PostgrestDouble(dsn, delay_s=DELAY_S) as double:
                dead = Path(tmp) / "dead.jsonl"
                key = make_key("service_role")
                naive = await _naive_supabase(SupabaseSink(double.url, key, dead_letter_path=dead), naive_sb)
                for size in SIZES:
                    sink = SupabaseSink(double.url, key, dead_letter_path=dead)
                    rate = await _sink_rate(sink, _batches(sb_pairs, size, f"SB{size}"))
                    name = f"Supabase sink (+20 ms/request), BATCH_SIZE={size}"
                    rows.append(row(name, rate, "rows/s", naive))
    return rows


def run(quick: bool) -> list[Row]:
    """The result rows (see the module docstring); baseline = the naive writer of the same database."""
    return asyncio.run(_run(QUICK if quick else FULL))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows, for CI")
    print_table(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
