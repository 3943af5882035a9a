"""`volume_checks` rows (the daily proof's summaries) through the three sinks, read back for
/healthz (`verify.latest_checks`), `status` (`http.format_health`) and the dashboard's API; a
database without the table; the spool carrying them."""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgrest_double import PostgrestDouble, make_key
from sink_kinds import Target, target
from structlog.testing import capture_logs
from supabase_db import MIGRATIONS

from streaming_service.dashboard.api import Dashboard
from streaming_service.dashboard.queries import DashboardReader
from streaming_service.http import HealthServer, format_health
from streaming_service.models import Batch, EquityRow, VolumeCheckRow
from streaming_service.sinks import PostgresSink
from streaming_service.sinks.supabase import SupabaseSink
from streaming_service.spool import Spool
from streaming_service.verify import latest_checks

__all__ = ["target"]  # the fixture, imported

MIGRATION = "20261207000000_create_volume_checks_table.sql"
WARNING = "volume_checks table missing: volume check rows will be dropped; the other tables are written"
AT = datetime(2026, 11, 25, 21, 5, tzinfo=UTC)


def check(ticker: str = "QQQ", day: date = date(2026, 11, 24), **changes: Any) -> VolumeCheckRow:
    row = VolumeCheckRow(ticker, day, 390, 389, 12_345_678, 12_345_700,
                         datetime(2026, 11, 24, 15, 41, tzinfo=UTC), -22, 1, AT)  # fmt: skip
    return replace(row, **changes)


def equity() -> tuple[EquityRow, ...]:
    return (EquityRow("QQQ", datetime(2026, 11, 24, 14, 30, tzinfo=UTC), 500.0, 100),)


async def test_checks_are_upserted_per_ticker_and_day_and_the_latest_read_back(target: Target) -> None:
    old, spy = (
        check(day=date(2026, 11, 23), minutes_matching=390, worst_minute=None, worst_minute_diff=None),
        check("SPY"),
    )
    await target.sink.write(Batch(equity=equity(), checks=(old, check(), spy)))
    again = check(minutes_matching=390, worst_minute=None, worst_minute_diff=None, minutes_filled=0)
    await target.sink.write(Batch(checks=(again,)))  # the day checked again: its row is replaced
    assert target.query("SELECT count(*) FROM volume_checks") == [(3,)]
    assert await target.sink.latest_volume_checks() == [again, spy]  # type: ignore[attr-defined]
    latest = await latest_checks(target.sink)
    assert set(latest) == {"QQQ", "SPY"}
    assert latest["SPY"] == {
        "day": "2026-11-24", "minutes_checked": 390, "minutes_matching": 389,
        "shares_recorded": 12_345_678, "shares_candles": 12_345_700,
        "worst_minute": "2026-11-24T15:41:00+00:00", "worst_minute_diff": -22, "minutes_filled": 1,
        "checked_at": "2026-11-25T21:05:00+00:00", "all_match": False,
        "line": "2026-11-24: 389/390 minutes match, 12,345,678 of 12,345,700 shares recorded; "
                "worst 10:41 New York (-22 shares); 1 minute filled",
    }  # fmt: skip
    assert latest["QQQ"]["all_match"] is True and latest["QQQ"]["worst_minute"] is None
    json.dumps(latest)  # JSON-ready as it is


async def test_a_refused_check_is_dead_lettered_and_the_rest_written(target: Target) -> None:
    impossible = check("SPY", minutes_matching=391)  # more matching minutes than checked
    await target.sink.write(Batch(equity=equity(), checks=(check(), impossible)))
    assert target.query("SELECT ticker FROM volume_checks") == [("QQQ",)]
    assert [(letter["table"], letter["row"]["ticker"]) for letter in target.letters()] == [
        ("volume_checks", "SPY")
    ]


async def test_latest_checks_of_a_sink_without_any_is_empty(target: Target) -> None:
    assert await latest_checks(target.sink) == {}


def test_status_shows_the_latest_proof_per_ticker() -> None:
    body: dict[str, Any] = {"state": "streaming", "ok": True, "volume_checks": {
        "QQQ": {"line": "2026-11-24: 389/390 minutes match, 1 of 2 shares recorded", "all_match": False},
        "SPY": {"line": "2026-11-24: 390/390 minutes match, 2 of 2 shares recorded", "all_match": True},
    }}  # fmt: skip
    lines = format_health(body).splitlines()
    assert lines[-2:] == [
        "proof: ✗ QQQ 2026-11-24: 389/390 minutes match, 1 of 2 shares recorded",
        "proof: ✓ SPY 2026-11-24: 390/390 minutes match, 2 of 2 shares recorded",
    ]
    assert format_health({**body, "volume_checks": {}}).splitlines()[-1] == (
        "proof: no day checked yet (`streaming-service verify`)"
    )
    assert "proof" not in format_health({"state": "streaming"})  # a service that does not say


# --- a database without the table ----------------------------------------------------------------


async def test_supabase_without_volume_checks_warns_once_and_writes_the_rest(
    supabase_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE volume_checks")  # a project that has not applied the new migration
    with PostgrestDouble(supabase_dsn) as double:
        sink = SupabaseSink(double.url, make_key("service_role"), dead_letter_path=tmp_path / "dead.jsonl")
        with capture_logs() as logs:
            await sink.open()
            await sink.write(Batch(equity=equity(), checks=(check(),)))
            await sink.write(Batch(checks=(check("SPY"),)))
            assert await sink.latest_volume_checks() == []
        await sink.aclose()
    warnings = [e for e in logs if e["event"] == WARNING]
    assert len(warnings) == 1 and MIGRATION in warnings[0]["fix"]
    assert (sink.checks_dropped, sink.gaps_dropped) == (2, 0)
    with psycopg.connect(supabase_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM equity_data").fetchone() == (1,)


async def test_postgres_user_that_cannot_create_volume_checks_drops_them_and_writes_the_rest(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """The tables of the older migrations belong to another role; the service's user may only write
    them: the migrations cannot run, but only volume_checks was missing, so the sink starts."""
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for path in sorted(MIGRATIONS.glob("*.sql")):
            if path.name != MIGRATION:
                with conn.transaction():
                    conn.execute(path.read_bytes())
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'check_writer') THEN "
            "CREATE ROLE check_writer LOGIN BYPASSRLS; END IF; END $$"
        )
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE ON equity_data, indicators, option_prices, stream_gaps "
            "TO check_writer; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO check_writer; "
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC"
        )
    sink = PostgresSink(psycopg.conninfo.make_conninfo(postgres_dsn, user="check_writer"),
                        dead_letter_path=tmp_path / "dead.jsonl")  # fmt: skip
    with capture_logs() as logs:
        await sink.open()
        await sink.write(Batch(equity=equity(), checks=(check(),)))
        assert await sink.latest_volume_checks() == []
    await sink.aclose()
    [warning] = [e for e in logs if e["event"] == WARNING]
    assert MIGRATION in warning["fix"] and "42501" in warning["reason"]
    assert (sink.checks_dropped, sink.gaps_dropped) == (1, 0)
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM equity_data").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('public.volume_checks')").fetchone() == (None,)


# --- the spool, the dashboard ----------------------------------------------------------------------


async def test_the_spool_carries_check_rows(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=2**30)
    await spool.open()
    rows = (check(), check("SPY", worst_minute=None, worst_minute_diff=None))
    spool.put(rows)
    await spool.commit()
    taken = await spool.take(10)
    await spool.aclose()
    assert taken.batch == Batch(checks=rows)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_dashboard_api_answers_the_proof_of_a_day_or_the_latest_before_it(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'rows.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_dsn")
    from streaming_service.sinks import sink_from_url

    sink = sink_from_url(url, dead_letter_path=tmp_path / "dead.jsonl")
    await sink.open()
    dashboard = Dashboard({"source": "api", "tickers": ["QQQ"]}, DashboardReader.for_url(url))
    async with HealthServer("127.0.0.1", 0, lambda: (200, {"ok": True}), pages=dashboard.answer) as server:

        def get(path: str) -> tuple[int, Any]:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                return response.status, json.loads(response.read())
            finally:
                connection.close()

        await sink.write(Batch(equity=equity()))
        assert await asyncio.to_thread(get, "/api/checks?ticker=QQQ") == (
            200,
            {"ticker": "QQQ", "day": "2026-11-24", "table": True, "check": None},
        )
        await sink.write(Batch(checks=(check(), check(day=date(2026, 11, 20), minutes_filled=0))))
        status, body = await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=2026-11-24")
        assert status == 200 and body["check"]["line"].startswith("2026-11-24: 389/390 minutes match")
        later = (await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=2026-11-27"))[1]
        earlier = (await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=2026-11-23"))[1]
        assert (later["check"]["day"], earlier["check"]["day"]) == ("2026-11-24", "2026-11-20")
        assert (await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=2026-11-19"))[1]["check"] is None
        assert (await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=yesterday"))[0] == 400
        await sink.aclose()
        if kind == "sqlite":
            import sqlite3

            with sqlite3.connect(tmp_path / "rows.db") as lite:
                lite.execute("DROP TABLE volume_checks")
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP TABLE volume_checks")
        status, body = await asyncio.to_thread(get, "/api/checks?ticker=QQQ&day=2026-11-24")
        assert (status, body["table"], body["check"]) == (200, False, None)
    await dashboard.aclose()
