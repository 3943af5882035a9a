"""Recovery after a database outage: the writer probes the sink while its retry backoff sleeps and
writes as soon as the database answers again, not when the backoff (capped at an hour here) ends.
Real Postgres, stopped and started; probes of each sink kind against what they talk to."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pg_cluster import PgCluster, fresh_database
from polling import wait_until
from postgrest_double import PostgrestDouble, make_key

from streaming_service.batcher import Batcher
from streaming_service.models import EquityRow, IndicatorRow
from streaming_service.pipeline import RowPair
from streaming_service.sinks.postgres import PostgresSink
from streaming_service.sinks.sqlite import SQLiteSink
from streaming_service.sinks.supabase import SupabaseSink

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
#: Failed writes before the restart: the backoff then sleeps at least 2**(FAILURES-1) = 8 s.
FAILURES = 4


def pair(i: int) -> RowPair:
    ts = T0 + timedelta(seconds=i)
    return EquityRow("QQQ", ts, 500.0 + i, 100), IndicatorRow("QQQ", ts, None, 500.0)


async def test_first_write_after_an_outage_does_not_wait_for_the_backoff(tmp_path: Path) -> None:
    with PgCluster() as cluster, fresh_database(cluster) as dsn:
        sink = PostgresSink(dsn, timeout=2, dead_letter_path=tmp_path / "dead.jsonl")
        batcher = Batcher(sink, size=1, interval=3600, max_retry_wait=3600)
        task = asyncio.create_task(batcher.run())
        batcher.add(pair(0))
        await wait_until(lambda: batcher.stats.batches == 1)

        await asyncio.to_thread(cluster.stop)
        batcher.add(pair(1))
        await wait_until(lambda: batcher.stats.write_errors >= FAILURES, within=60)
        failed = batcher.stats.write_errors  # the writer now sleeps ≥ 8 s (exponential backoff)
        started = time.monotonic()
        await asyncio.to_thread(cluster.start)
        await wait_until(lambda: batcher.stats.batches == 2, within=6.0)  # old code: ≥ 8 s
        took = time.monotonic() - started
        print(f"first write {took:.2f}s after the restart began; probes {batcher.stats.probes}")
        assert batcher.stats.write_errors == failed  # the probe's go-ahead was right first time
        assert batcher.stats.probes >= FAILURES - 1  # every backoff sleep probed
        await batcher.close()
        await task
        await sink.aclose()


async def test_postgres_probe_says_whether_the_server_answers(tmp_path: Path) -> None:
    with PgCluster() as cluster, fresh_database(cluster) as dsn:
        sink = PostgresSink(dsn, timeout=2)
        assert await sink.probe()  # before open(): a connection, kept for the first write
        await asyncio.to_thread(cluster.stop)
        assert not await sink.probe()
        await asyncio.to_thread(cluster.start)
        assert await sink.probe()
        await sink.aclose()
        assert not await sink.probe()


async def test_supabase_probe_is_a_limit_0_get_and_false_on_503(supabase_dsn: str, tmp_path: Path) -> None:
    with PostgrestDouble(supabase_dsn) as double:
        sink = SupabaseSink(double.url, make_key("service_role"), dead_letter_path=tmp_path / "d.jsonl")
        assert await sink.probe()
        probe = double.requests[-1]
        assert (probe.method, probe.path, probe.query["limit"]) == ("GET", "/rest/v1/equity_data", ["0"])
        double.fail_next(1, "503")
        assert not await sink.probe()
        double.answer_next(1, 429, {"message": "slow down"}, headers={"Retry-After": "30"})
        assert not await sink.probe()
        assert await sink.probe()
        await sink.aclose()


async def test_sqlite_probe(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "db.sqlite", dead_letter_path=tmp_path / "d.jsonl")
    assert await sink.probe()
    await sink.open()
    assert await sink.probe()
    await sink.aclose()
    assert not await sink.probe()
