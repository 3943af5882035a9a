"""The production path under gateway trouble: supabase-py → PostgREST double → Postgres, while the
double answers 503 PGRST000, hangs past SINK_TIMEOUT, drops connections, answers 429 with
Retry-After and a proxy's 502/503 without a `code`. Every share arrives exactly once, no hole."""

from __future__ import annotations

from pathlib import Path

import psycopg
from harness import running_service
from polling import wait_until
from postgrest_double import PostgrestDouble, make_key

from streaming_service.simulator import SchwabSimulator, SimulatedMarket


def written(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*), coalesce(sum(volume), 0) FROM equity_data").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_gateway_faults_lose_nothing_and_duplicate_nothing(supabase_dsn: str, tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=31, trades_per_second=4.0, session_seconds=23_400.0)
    with PostgrestDouble(supabase_dsn) as double:
        settings = {
            "supabase_url": double.url, "supabase_service_role_key": make_key("service_role"),
            "options_enabled": False, "sink_timeout": 1.0, "batch_interval": 0.2,
        }  # fmt: skip
        async with (
            SchwabSimulator(market, speed=60, heartbeat_seconds=0.2) as sim,
            running_service(sim, tmp_path, **settings) as service,
        ):
            service.batcher._max_retry_wait = 0.5  # eight failures in a row: keep the backoff short
            # the start's span settled: recovery reads no more, so the faults below meet the writer
            settled = service.continuity.unsettled
            await wait_until(lambda: service.batcher.stats.rows_written > 50 and not settled())
            double.fail_next(2, "503", table="equity_data")
            double.fail_next(1, "timeout", table="indicators")
            double.fail_next(2, "close")
            double.answer_next(1, 429, {"message": "rate limited"}, headers={"Retry-After": "1"})
            html = {"Content-Type": "text/html"}
            double.answer_next(1, 502, "<html><body>Bad Gateway</body></html>", headers=html)
            double.answer_next(1, 503, {"message": "upstream unavailable"})
            errors = service.batcher.stats.write_errors
            await wait_until(lambda: service.batcher.stats.write_errors >= errors + 8, within=60)
            sim.pause()
            volume = sum(t.size for t in sim.sent_trades)
            rows = len({t.timestamp_ms for t in sim.sent_trades})
            await wait_until(lambda: service.pipeline.volume == volume)
            await wait_until(lambda: service.batcher.pending == 0 and written(supabase_dsn)[1] == volume)
            faults = service.batcher.stats.write_errors - errors
    print(f"gateway faults: {faults} failed writes retried; {rows} rows / {volume} shares written exactly")
    assert written(supabase_dsn) == (rows, volume)
    with psycopg.connect(supabase_dsn) as conn:
        indicator_rows = conn.execute("SELECT count(*) FROM indicators").fetchone()
    assert indicator_rows == (rows,)
