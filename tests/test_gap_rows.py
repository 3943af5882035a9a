"""`stream_gaps` rows through the three sinks: upserts on (ticker, started_at), refused rows
dead-lettered while the others are written, and a database without the table (its migration not
applied) that keeps the service writing everything else."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgrest_double import PostgrestDouble, make_key
from sink_kinds import Target, target
from structlog.testing import capture_logs
from supabase_db import MIGRATIONS

from streaming_service.errors import SinkRejected
from streaming_service.models import Batch, EquityRow, GapRow, IndicatorRow, OptionRow
from streaming_service.sinks import PostgresSink
from streaming_service.sinks.supabase import SupabaseSink

__all__ = ["target"]  # the fixture, imported

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
MIGRATION = "20251120000000_create_stream_gaps_table.sql"
WARNING = "stream_gaps table missing: gap rows will be dropped; the other tables are written"


def gap(minute: int = 0, *, minutes: int = 5, **changes: Any) -> GapRow:
    started = T0 + timedelta(minutes=minute)
    row = GapRow("QQQ", started, started + timedelta(minutes=minutes), "disconnect", 5, 1200, True)
    return replace(row, **changes)


def market_rows(count: int = 2) -> Batch:
    """Rows of the three other tables."""
    stamps = [T0 + timedelta(seconds=i) for i in range(count)]
    option = OptionRow(
        "QQQ", T0, "CALL", 500.0, date(2026, 11, 27), 1.3, 1.25, 1.35, 120, 4500, 0.2345, 0.5123,
        0.0456, -0.1234, 0.2011, "QQQ   261127C00500000",
    )  # fmt: skip
    return Batch(
        equity=tuple(EquityRow("QQQ", ts, 500.0 + i, 100 + i) for i, ts in enumerate(stamps)),
        indicators=tuple(IndicatorRow("QQQ", ts, None, 500.0) for ts in stamps),
        options=(option,),
    )


def stored_gaps(target: Target) -> list[tuple[Any, ...]]:
    """(ticker, started_at, ended_at, cause, backfilled, volume_missing, options_missed) by start,
    timestamps as aware datetimes and the flag as bool whatever the backend."""
    rows = target.query(
        "SELECT ticker, started_at, ended_at, cause, equity_backfilled_rows, volume_missing, "
        "options_missed FROM stream_gaps ORDER BY started_at"
    )
    return [(r[0], _aware(r[1]), _aware(r[2]), r[3], r[4], r[5], bool(r[6])) for r in rows]


def _aware(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def as_stored(row: GapRow) -> tuple[Any, ...]:
    return (row.ticker, row.started_at, row.ended_at, row.cause, row.equity_backfilled_rows,
            row.volume_missing, row.options_missed)  # fmt: skip


def counts(target: Target) -> dict[str, int]:
    tables = ("equity_data", "indicators", "option_prices")
    return {table: target.query(f"SELECT count(*) FROM {table}")[0][0] for table in tables}


# --- every sink ----------------------------------------------------------------------------------


async def test_gap_rows_are_upserted_on_ticker_and_started_at(target: Target) -> None:
    first, unknown_volume = gap(0), gap(30, volume_missing=None, options_missed=False, cause="restart")
    batch = replace(market_rows(), gaps=(first, unknown_volume))
    await target.sink.write(batch)
    ids = target.query("SELECT id FROM stream_gaps ORDER BY id")
    await target.sink.write(batch)  # a replay changes nothing
    assert target.query("SELECT id FROM stream_gaps ORDER BY id") == ids
    assert stored_gaps(target) == [as_stored(first), as_stored(unknown_volume)]
    assert counts(target) == {"equity_data": 2, "indicators": 2, "option_prices": 1}

    longer = replace(first, ended_at=first.ended_at + timedelta(minutes=10), cause="stale",
                     equity_backfilled_rows=15, volume_missing=-3, options_missed=False)  # fmt: skip
    await target.sink.write(Batch(gaps=(longer,)))  # the same key: the row is updated
    assert stored_gaps(target) == [as_stored(longer), as_stored(unknown_volume)]
    assert target.query("SELECT id FROM stream_gaps ORDER BY id") == ids
    assert getattr(target.sink, "gaps_dropped", None) == 0


@pytest.mark.parametrize(
    ("bad", "sqlstate"),
    [
        (gap(10, minutes=-1), "23514"),  # ends before it starts
        (gap(10, cause="crash"), "23514"),  # type: ignore[arg-type]  # not a cause the table knows
        (gap(10, equity_backfilled_rows=2**31), "22003"),  # beyond INTEGER
    ],
    ids=["ended-before-started", "unknown-cause", "integer-overflow"],
)
async def test_a_refused_gap_row_is_dead_lettered_and_the_others_written(
    target: Target, bad: GapRow, sqlstate: str
) -> None:
    good = (gap(0), gap(20))
    await target.sink.write(replace(market_rows(), gaps=(good[0], bad, good[1])))
    assert stored_gaps(target) == [as_stored(row) for row in good]
    assert counts(target) == {"equity_data": 2, "indicators": 2, "option_prices": 1}
    [letter] = target.letters()
    print(f"{target.kind}: {bad} -> {letter['code']}: {letter['error']}")
    assert letter["table"] == "stream_gaps"
    assert letter["code"] == target.refused_code(sqlstate)
    assert letter["row"]["started_at"] == bad.started_at.isoformat()
    await target.sink.write(replace(market_rows(), gaps=(good[0], bad, good[1])))  # a replay
    assert len(target.letters()) == 1


async def test_a_naive_gap_time_is_dead_lettered_without_being_sent(target: Target) -> None:
    naive = gap(10, ended_at=datetime(2026, 11, 24, 14, 50))
    await target.sink.write(Batch(gaps=(gap(0), naive)))
    assert stored_gaps(target) == [as_stored(gap(0))]
    [letter] = target.letters()
    assert (letter["code"], letter["table"]) == ("naive-timestamp", "stream_gaps")
    assert "ended_at" in letter["error"]


# --- Supabase: the sink does not own the schema ---------------------------------------------------


@pytest.fixture
def double(supabase_dsn: str) -> Iterator[PostgrestDouble]:
    with PostgrestDouble(supabase_dsn) as server:
        yield server


def supabase_sink(double: PostgrestDouble, tmp_path: Path) -> SupabaseSink:
    return SupabaseSink(double.url, make_key("service_role"), dead_letter_path=tmp_path / "dead.jsonl")


def table_counts(dsn: str) -> dict[str, int]:
    """Rows of the three other tables, read on the Postgres at `dsn`."""
    with psycopg.connect(dsn) as conn:
        tables = ("equity_data", "indicators", "option_prices")
        return {t: len(conn.execute(f"SELECT 1 FROM {t}".encode()).fetchall()) for t in tables}


def gap_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == WARNING]


async def test_supabase_without_stream_gaps_warns_once_and_writes_the_other_tables(
    double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE stream_gaps")  # a project that has not applied the new migration
    sink = supabase_sink(double, tmp_path)
    with capture_logs() as logs:
        await sink.open()
        double.requests.clear()
        await sink.write(replace(market_rows(), gaps=(gap(0), gap(30))))
        await sink.write(Batch(gaps=(gap(60),)))
    await sink.aclose()
    [warning] = gap_warnings(logs)
    print(f"warning: {warning['event']}; fix: {warning['fix']}; reason: {warning['reason']}")
    assert warning["log_level"] == "warning"
    assert MIGRATION in warning["fix"] and "supabase db push" in warning["fix"]
    assert "PGRST205" in warning["reason"]
    assert sink.gaps_dropped == 3 and sink.dead_letters.count == 0
    assert table_counts(supabase_dsn) == {"equity_data": 2, "indicators": 2, "option_prices": 1}
    assert "/rest/v1/stream_gaps" not in {r.path for r in double.requests}  # dropped, not sent


async def test_supabase_table_dropped_while_running_is_noticed_at_the_next_gap(
    double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    sink = supabase_sink(double, tmp_path)
    await sink.open()
    await sink.write(Batch(gaps=(gap(0),)))
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE stream_gaps")
    with capture_logs() as logs:
        await sink.write(replace(market_rows(), gaps=(gap(30),)))  # no SinkRejected: the service goes on
        await sink.write(replace(market_rows(), gaps=(gap(60),)))
    await sink.aclose()
    assert len(gap_warnings(logs)) == 1
    assert sink.gaps_dropped == 2
    assert table_counts(supabase_dsn) == {"equity_data": 2, "indicators": 2, "option_prices": 1}


async def test_supabase_missing_required_table_is_still_fatal(
    double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE option_prices")
    sink = supabase_sink(double, tmp_path)
    with pytest.raises(SinkRejected, match="PGRST205"):
        await sink.open()
    await sink.aclose()


# --- Postgres: the sink owns the schema -----------------------------------------------------------


def apply_files(dsn: str, files: list[Path]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files:
            with conn.transaction():
                conn.execute(path.read_bytes())


async def test_postgres_creates_stream_gaps_on_a_database_of_the_older_migrations(
    postgres_dsn: str, tmp_path: Path
) -> None:
    older = [p for p in sorted(MIGRATIONS.glob("*.sql")) if p.name != MIGRATION]
    apply_files(postgres_dsn, older)
    sink = PostgresSink(postgres_dsn, dead_letter_path=tmp_path / "dead.jsonl")
    with capture_logs() as logs:
        await sink.open()
        await sink.write(Batch(gaps=(gap(0),)))
    await sink.aclose()
    assert gap_warnings(logs) == [] and sink.gaps_dropped == 0
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM stream_gaps").fetchone() == (1,)


async def test_postgres_user_that_cannot_create_stream_gaps_drops_gaps_and_writes_the_rest(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """The tables belong to another role and the service's user may only write them (RLS
    bypassed): the migrations cannot run, but only stream_gaps was missing, so the sink starts."""
    older = [p for p in sorted(MIGRATIONS.glob("*.sql")) if p.name != MIGRATION]
    apply_files(postgres_dsn, older)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gap_writer') THEN "
            "CREATE ROLE gap_writer LOGIN BYPASSRLS; END IF; END $$"
        )
        conn.execute(
            "GRANT SELECT, INSERT, UPDATE ON equity_data, indicators, option_prices TO gap_writer; "
            "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gap_writer; "
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC"
        )
    dsn = psycopg.conninfo.make_conninfo(postgres_dsn, user="gap_writer")
    sink = PostgresSink(dsn, dead_letter_path=tmp_path / "dead.jsonl")
    with capture_logs() as logs:
        await sink.open()
        await sink.write(replace(market_rows(), gaps=(gap(0), gap(30))))
    await sink.aclose()
    [warning] = gap_warnings(logs)
    print(f"postgres without CREATE: {warning['reason']}")
    assert MIGRATION in warning["fix"] and "42501" in warning["reason"]
    assert sink.gaps_dropped == 2
    assert table_counts(postgres_dsn) == {"equity_data": 2, "indicators": 2, "option_prices": 1}
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.stream_gaps')").fetchone() == (None,)
