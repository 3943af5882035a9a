"""supabase/migrations on a real Postgres 15 with Supabase's roles: RLS, grants, CHECK, UNIQUE,
re-runs; the same files on a plain Postgres without those roles; the opt-in retention function."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from supabase_db import MIGRATIONS, apply_migrations

RETENTION = MIGRATIONS.parent / "optional" / "retention.sql"

ROWS = {
    "equity_data": "INSERT INTO equity_data (ticker, timestamp, price, volume) "
    "VALUES ('QQQ', '2026-11-24T14:30:00Z', 500.25, 100)",
    "indicators": "INSERT INTO indicators (ticker, timestamp, sma9, vwap) "
    "VALUES ('QQQ', '2026-11-24T14:30:00Z', 500.1, 500.2)",
    "option_prices": "INSERT INTO option_prices (ticker, timestamp, option_type, strike_price, "
    "expiration_date, bid, ask) VALUES ('QQQ', '2026-11-24T14:30:00Z', 'CALL', 500, '2026-11-27', 1.5, 1.6)",
    "stream_gaps": "INSERT INTO stream_gaps (ticker, started_at, ended_at, cause, volume_missing) "
    "VALUES ('QQQ', '2026-11-24T14:30:00Z', '2026-11-24T14:30:00Z', 'restart', 1200)",
    # `day` from the same instant, so that statements rewritten with another time get another key
    "volume_checks": "INSERT INTO volume_checks (ticker, day, minutes_checked, minutes_matching, "
    "shares_recorded, shares_candles, worst_minute, worst_minute_diff, minutes_filled, checked_at) "
    "VALUES ('QQQ', ('2026-11-24T14:30:00Z'::timestamptz AT TIME ZONE 'America/New_York')::date, "
    "390, 389, 12345678, 12345700, '2026-11-24T14:30:00Z', -22, 1, '2026-11-24T14:30:00Z')",
}
KEYS = {
    "equity_data": "ticker, timestamp",
    "indicators": "ticker, timestamp",
    "option_prices": "ticker, timestamp, option_type, strike_price, expiration_date",
    "stream_gaps": "ticker, started_at",
    "volume_checks": "ticker, day",
}
#: The tables retention.sql prunes (stream_gaps and volume_checks are not market data: they are kept).
PRUNED = ("equity_data", "indicators", "option_prices")


@contextmanager
def as_role(dsn: str, role: str) -> Iterator[psycopg.Connection]:
    """A connection whose statements run as `role` (SET ROLE), each in its own transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"SET ROLE {role}".encode())
        yield conn


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
        assert row is not None
        return int(row[0])


def test_all_migrations_are_recorded_and_safe_to_run_again(supabase_dsn: str) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM supabase_migrations.schema_migrations")]
        assert sorted(versions) == sorted(p.name.split("_")[0] for p in MIGRATIONS.glob("*.sql"))
        for path in sorted(MIGRATIONS.glob("*.sql")):  # re-run by hand, as in the SQL editor
            with conn.transaction():
                conn.execute(path.read_bytes())
        policies = conn.execute("SELECT tablename, policyname FROM pg_policies ORDER BY 1, 2").fetchall()
    assert {t for t, _ in policies} == set(ROWS)
    assert len(policies) == 2 * len(ROWS)  # still one read and one service policy per table


@pytest.mark.parametrize("table", sorted(ROWS))
def test_rls_enabled_with_indexes(supabase_dsn: str, table: str) -> None:
    with psycopg.connect(supabase_dsn) as conn:
        (rls,) = conn.execute(
            "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", [f"public.{table}"]
        ).fetchone() or (None,)
        found = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", [table])
        indexes = [r[0] for r in found]
    assert rls is True
    time_column = {"stream_gaps": "started_at", "volume_checks": "day"}.get(table, '"timestamp"')
    assert any(f"(ticker, {time_column} DESC)" in d for d in indexes), indexes


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize("table", sorted(ROWS))
def test_readers_can_select_but_never_write(supabase_dsn: str, role: str, table: str) -> None:
    with as_role(supabase_dsn, "service_role") as conn:
        conn.execute(ROWS[table].encode())
    with as_role(supabase_dsn, role) as conn:
        assert conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone() == (1,)
        for statement in (
            ROWS[table].replace("2026-11-24T14:30:00Z", "2026-11-25T14:30:00Z"),
            f"UPDATE {table} SET ticker = 'SPY'",
            f"DELETE FROM {table}",
            f"TRUNCATE {table}",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement.encode())
    assert count(supabase_dsn, table) == 1


@pytest.mark.parametrize("table", sorted(ROWS))
def test_service_role_upserts(supabase_dsn: str, table: str) -> None:
    upsert = f"{ROWS[table]} ON CONFLICT ({KEYS[table]}) DO UPDATE SET ticker = excluded.ticker"
    with as_role(supabase_dsn, "service_role") as conn:
        conn.execute(upsert.encode())
        conn.execute(upsert.encode())
        assert conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone() == (1,)


@pytest.mark.parametrize("table", sorted(ROWS))
def test_unique_keys_hold(supabase_dsn: str, table: str) -> None:
    with as_role(supabase_dsn, "service_role") as conn:
        conn.execute(ROWS[table].encode())
        with pytest.raises(errors.UniqueViolation):
            conn.execute(ROWS[table].encode())


def test_option_type_check_rejects_both(supabase_dsn: str) -> None:
    with as_role(supabase_dsn, "service_role") as conn, pytest.raises(errors.CheckViolation):
        conn.execute(ROWS["option_prices"].replace("'CALL'", "'BOTH'").encode())


@pytest.mark.parametrize(
    ("old", "new"),
    [("'restart'", "'crash'"), ("'2026-11-24T14:30:00Z', 'restart'", "'2026-11-24T14:29:59Z', 'restart'")],
)
def test_stream_gaps_checks_refuse_an_unknown_cause_and_an_end_before_the_start(
    supabase_dsn: str, old: str, new: str
) -> None:
    with as_role(supabase_dsn, "service_role") as conn, pytest.raises(errors.CheckViolation):
        conn.execute(ROWS["stream_gaps"].replace(old, new).encode())


def test_stream_gaps_defaults_and_a_null_volume_missing(supabase_dsn: str) -> None:
    with as_role(supabase_dsn, "service_role") as conn:
        conn.execute(ROWS["stream_gaps"].replace("1200", "NULL").encode())
        stored = conn.execute(
            "SELECT equity_backfilled_rows, volume_missing, options_missed, created_at IS NOT NULL "
            "FROM stream_gaps"
        ).fetchall()
    assert stored == [(0, None, False, True)]


@pytest.mark.parametrize(
    ("old", "new"),
    [("390, 389", "390, 391"), ("390, 389", "-1, 0"), ("'2026-11-24T14:30:00Z', -22", "NULL, -22"),
     ("'2026-11-24T14:30:00Z', -22", "'2026-11-24T14:30:00Z', NULL"), (", 1, '2026", ", -1, '2026")],
)  # fmt: skip
def test_volume_checks_refuse_impossible_counts_and_a_half_known_worst_minute(
    supabase_dsn: str, old: str, new: str
) -> None:
    with as_role(supabase_dsn, "service_role") as conn, pytest.raises(errors.CheckViolation):
        conn.execute(ROWS["volume_checks"].replace(old, new).encode())


def test_volume_checks_all_matching_has_no_worst_minute(supabase_dsn: str) -> None:
    matching = ROWS["volume_checks"].replace("'2026-11-24T14:30:00Z', -22", "NULL, NULL")
    with as_role(supabase_dsn, "service_role") as conn:
        conn.execute(matching.replace("390, 389", "390, 390").encode())
        stored = conn.execute("SELECT day::text, worst_minute, minutes_filled FROM volume_checks").fetchall()
    assert stored == [("2026-11-24", None, 1)]


def test_plain_postgres_without_supabase_roles_applies_them_too(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA supabase_migrations; CREATE TABLE supabase_migrations.schema_migrations "
            "(version text PRIMARY KEY, statements text[], name text)"
        )
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'anon'").fetchone() == (0,)
    assert len(apply_migrations(postgres_dsn)) == len(list(MIGRATIONS.glob("*.sql")))
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_policies").fetchone() == (0,)
        for statement in ROWS.values():
            conn.execute(statement.encode())  # the owner is not subject to RLS


# --- opt-in retention ----------------------------------------------------------------------------


def insert_aged_rows(dsn: str) -> None:
    """Per table: one row 100 days old and one 10 days old, by the database's clock (the one
    prune_market_data reads; a pinned test clock cannot reach the server)."""
    with as_role(dsn, "service_role") as conn:
        (now,) = conn.execute("SELECT now()").fetchone()  # type: ignore[misc]
        for age_days in (100, 10):
            when = (now - timedelta(days=age_days)).isoformat()
            for statement in ROWS.values():
                conn.execute(statement.replace("2026-11-24T14:30:00Z", when).encode())


def test_retention_is_not_installed_by_the_migrations(supabase_dsn: str) -> None:
    with psycopg.connect(supabase_dsn) as conn:
        assert conn.execute("SELECT to_regproc('public.prune_market_data')").fetchone() == (None,)
    assert not any("prune" in p.read_text() for p in MIGRATIONS.glob("*.sql"))


def test_prune_market_data_deletes_only_older_rows(supabase_dsn: str) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute(RETENTION.read_bytes())
        conn.execute(RETENTION.read_bytes())  # safe to run twice
    insert_aged_rows(supabase_dsn)
    with as_role(supabase_dsn, "service_role") as conn:
        deleted = conn.execute("SELECT * FROM prune_market_data(interval '90 days')").fetchall()
    assert sorted(deleted) == [(t, 1) for t in PRUNED]
    assert [count(supabase_dsn, t) for t in sorted(ROWS)] == [1 if t in PRUNED else 2 for t in sorted(ROWS)]


@pytest.mark.parametrize("keep", ["1 hour", "0 days", "-5 days"])
def test_prune_refuses_a_keep_shorter_than_a_day(supabase_dsn: str, keep: str) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute(RETENTION.read_bytes())
    insert_aged_rows(supabase_dsn)
    refused = pytest.raises(errors.InvalidParameterValue, match="at least 1 day")
    with psycopg.connect(supabase_dsn) as conn, refused:
        conn.execute("SELECT * FROM prune_market_data(%s::interval)", [keep])
    assert count(supabase_dsn, "equity_data") == 2


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_readers_cannot_prune(supabase_dsn: str, role: str) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute(RETENTION.read_bytes())
    with as_role(supabase_dsn, role) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for function"):
            conn.execute("SELECT * FROM prune_market_data(interval '90 days')")
        allowed = conn.execute(
            "SELECT has_function_privilege(%s, 'public.prune_market_data(interval)', 'EXECUTE')", [role]
        ).fetchone()
    assert allowed == (False,)


def test_retention_file_is_outside_the_migrations_folder() -> None:
    assert RETENTION.exists()
    assert Path(MIGRATIONS) not in RETENTION.parents
