"""`check` reports each problem with its fix, proves write access without leaving rows behind."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from postgrest_double import PostgrestDouble, make_key
from psycopg import sql

from streaming_service.check import CheckResult, check_database, check_schwab_app, check_token
from streaming_service.config import load_settings
from streaming_service.sinks import sink_from_url


def token_file(path: Path, age_days: float) -> Path:
    path.write_text(json.dumps({"creation_timestamp": int(time.time() - age_days * 86_400), "token": {}}))
    return path


def test_token_missing_expired_and_valid(tmp_path: Path) -> None:
    missing = check_token(tmp_path / "nope.json")
    assert not missing.ok and "does not exist" in missing.detail and "streaming-service auth" in missing.fix
    expired = check_token(token_file(tmp_path / "old.json", age_days=8))
    assert not expired.ok and "expired" in expired.detail and "streaming-service auth" in expired.fix
    fresh = check_token(token_file(tmp_path / "new.json", age_days=1))
    assert fresh.ok and "(in 5 d 23 h)" in fresh.detail and "soon" not in fresh.detail
    nearly = check_token(token_file(tmp_path / "late.json", age_days=6.5))
    assert nearly.ok and "renew it soon with `streaming-service auth`" in nearly.detail


SCHWAB_APP_FIX = "set SCHWAB_APP_KEY and SCHWAB_APP_SECRET in .env, from your app at developer.schwab.com"


@pytest.mark.parametrize(
    ("key", "secret", "named"),
    [
        (None, None, "SCHWAB_APP_KEY and SCHWAB_APP_SECRET"),
        ("", "", "SCHWAB_APP_KEY and SCHWAB_APP_SECRET"),  # what `cp .env.example .env` leaves
        ("  ", "s3cret", "SCHWAB_APP_KEY"),
        ("k3y", "\t", "SCHWAB_APP_SECRET"),
        ("k3y", None, "SCHWAB_APP_SECRET"),
    ],
)
def test_missing_or_blank_schwab_app_credentials_fail_with_the_fix(
    key: str | None, secret: str | None, named: str
) -> None:
    result = check_schwab_app(load_settings(schwab_app_key=key, schwab_app_secret=secret))
    print(result.line())
    assert not result.ok and result.name == "Schwab app credentials"
    assert result.detail.startswith(f"{named} ") and result.fix == SCHWAB_APP_FIX
    assert ("SCHWAB_APP_KEY" in result.detail) == ("SCHWAB_APP_KEY" in named)


def test_set_schwab_app_credentials_pass_without_showing_them() -> None:
    result = check_schwab_app(load_settings(schwab_app_key="k3y-value", schwab_app_secret="s3cret-value"))
    assert result.ok and result.line().startswith("✓ Schwab app credentials")
    assert "k3y-value" not in result.line() and "s3cret-value" not in result.line()


async def test_postgres_without_tables_fails_then_passes_after_open(postgres_dsn: str) -> None:
    settings = load_settings(database_url=postgres_dsn)
    before = await check_database(settings)
    assert before[0].ok  # reachable
    *required, gaps, checks = before[1:]
    assert [r.ok for r in required] == [False, False, False]
    assert all("table missing" in r.detail and "migrations" in r.fix for r in required)
    assert (gaps.name, gaps.ok, gaps.warn) == ("table stream_gaps", True, True)  # a warning, not a failure
    assert "20251120000000_create_stream_gaps_table.sql" in gaps.fix and "`run` creates it" in gaps.fix
    assert gaps.line().startswith("⚠ table stream_gaps: missing") and "fix:" in gaps.line()
    assert (checks.name, checks.ok, checks.warn) == ("table volume_checks", True, True)
    assert "20261207000000_create_volume_checks_table.sql" in checks.fix

    sink = sink_from_url(postgres_dsn)
    await sink.open()
    await sink.aclose()
    after = await check_database(settings)
    assert all(r.ok and not r.warn for r in after), [r.line() for r in after]
    assert [r.name for r in after[-3:]] == ["table stream_gaps", "table volume_checks", "write"]
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM equity_data").fetchone() == (0,)  # probe rolled back


async def test_postgres_missing_unique_key_is_reported(postgres_dsn: str) -> None:
    sink = sink_from_url(postgres_dsn)
    await sink.open()
    await sink.aclose()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE indicators DROP CONSTRAINT indicators_ticker_timestamp_key")
    results = {r.name: r for r in await check_database(load_settings(database_url=postgres_dsn))}
    assert not results["table indicators"].ok
    assert "no UNIQUE (ticker, timestamp)" in results["table indicators"].detail
    assert results["table equity_data"].ok


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_a_missing_stream_gaps_table_is_a_warning_and_the_write_probe_still_runs(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_dsn") if kind == "postgres" else f"sqlite:///{tmp_path / 'x.db'}"
    sink = sink_from_url(url)
    await sink.open()
    await sink.aclose()
    if kind == "postgres":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE stream_gaps")
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "x.db")) as lite:
            lite.execute("DROP TABLE stream_gaps")
    results = {r.name: r for r in await check_database(load_settings(database_url=url))}
    assert results["table stream_gaps"].ok and results["table stream_gaps"].warn
    assert results["write"].ok and all(r.ok for r in results.values())


async def test_unreachable_postgres_names_the_fix() -> None:
    results = await check_database(load_settings(database_url="postgresql://u:pw@127.0.0.1:1/db"))
    assert [r.ok for r in results] == [False]
    assert "DATABASE_URL" in results[0].fix and "pw" not in results[0].detail


async def test_sqlite_after_open_passes_and_probe_leaves_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    sink = sink_from_url(url)
    await sink.open()
    await sink.aclose()
    results = await check_database(load_settings(database_url=url))
    assert all(r.ok for r in results) and results[-1].name == "write"
    with sqlite3.connect(tmp_path / "x.db") as conn:
        assert conn.execute("SELECT count(*) FROM equity_data").fetchone() == (0,)


def run_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m streaming_service check` in `tmp_path` (no .env there) with only `env` set."""
    return subprocess.run(
        [sys.executable, "-m", "streaming_service", "check"],
        env={**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("age_days", "code"), [(1, 0), (8, 1)])
def test_cli_check_exit_code(tmp_path: Path, age_days: float, code: int) -> None:
    token_file(tmp_path / "token.json", age_days)
    result = run_check(
        tmp_path,
        SCHWAB_TOKEN_PATH=str(tmp_path / "token.json"),
        SCHWAB_APP_KEY="k3y",  # set, so that only the token decides once `check` checks them too
        SCHWAB_APP_SECRET="s3cret",
    )
    assert result.returncode == code, result.stderr
    assert ("✗ Schwab token" in result.stdout) == bool(code)
    assert "checks passed" in result.stdout


def test_cli_check_fails_on_blank_schwab_app_credentials(tmp_path: Path) -> None:
    """The first run: `cp .env.example .env` leaves both blank, the token file exists."""
    token_file(tmp_path / "token.json", age_days=1)
    result = run_check(
        tmp_path, SCHWAB_TOKEN_PATH=str(tmp_path / "token.json"), SCHWAB_APP_KEY="", SCHWAB_APP_SECRET=""
    )
    print(result.stdout)
    assert result.returncode == 1, result.stderr
    assert "✗ Schwab app credentials: SCHWAB_APP_KEY and SCHWAB_APP_SECRET are not set" in result.stdout
    assert f"fix: {SCHWAB_APP_FIX}" in result.stdout


# --- privileges vs missing vs wrong shape ----------------------------------------------------------

TABLES = ("equity_data", "indicators", "option_prices", "stream_gaps", "volume_checks")


@pytest.fixture
def login_role(postgres_dsn: str) -> Iterator[Callable[[], tuple[str, str]]]:
    """Make LOGIN roles with no privileges on the test database's tables: `make()` returns
    (role, its DATABASE_URL). Dropped after the test (before the database is)."""
    made: list[str] = []

    def make() -> tuple[str, str]:
        role = f"checker_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(role)))
        made.append(role)
        parts = urlsplit(postgres_dsn)
        return role, urlunsplit(parts._replace(netloc=f"{role}:pw@{parts.hostname}:{parts.port}"))

    yield make
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for role in made:
            conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


async def open_tables(url: str) -> None:
    sink = sink_from_url(url)
    await sink.open()
    await sink.aclose()


def shown(results: list[CheckResult]) -> dict[str, CheckResult]:
    for result in results:
        print(result.line())
    return {r.name: r for r in results}


async def test_postgres_role_without_privileges_is_told_what_to_grant_not_that_tables_are_missing(
    postgres_dsn: str, login_role: Callable[[], tuple[str, str]]
) -> None:
    await open_tables(postgres_dsn)  # the superuser owns the tables
    role, url = login_role()
    results = shown(await check_database(load_settings(database_url=url)))
    assert results["database"].ok
    for table in TABLES:  # stream_gaps too: it exists, so `run` writes it and would be refused
        r = results[f"table {table}"]
        assert not r.ok and not r.warn and "table missing" not in r.detail
        assert r.detail == (
            f"not permitted: role {role} lacks SELECT, INSERT, UPDATE on public.{table}"
            f" and USAGE on public.{table}_id_seq"  # the BIGSERIAL id: INSERT takes nextval()
            # the migrations enable RLS, with policies for Supabase's roles only:
            f" and a row-level security policy letting it insert and update public.{table}"
        )
        assert r.fix == (
            f"GRANT SELECT, INSERT, UPDATE ON public.{table} TO {role}; "
            f"GRANT USAGE ON SEQUENCE public.{table}_id_seq TO {role}; "
            f"CREATE POLICY streamer_writes ON public.{table} FOR ALL TO {role} USING (true) "
            "WITH CHECK (true) (or connect as the table's owner)"
        )
    assert "write" not in results
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:  # the fixes, as printed, work
        for table in TABLES:
            fix = results[f"table {table}"].fix.removesuffix(" (or connect as the table's owner)")
            conn.execute(fix.encode())
    after = shown(await check_database(load_settings(database_url=url)))
    assert all(r.ok and not r.warn for r in after.values()) and "write" in after


async def test_postgres_role_with_select_only_is_told_insert_and_update_are_missing(
    postgres_dsn: str, login_role: Callable[[], tuple[str, str]]
) -> None:
    await open_tables(postgres_dsn)
    role, url = login_role()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        grant = sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}")
        conn.execute(grant.format(sql.Identifier(role)))
    results = shown(await check_database(load_settings(database_url=url)))
    for table in TABLES:
        r = results[f"table {table}"]
        assert not r.ok and r.detail.startswith(
            f"not permitted: role {role} lacks INSERT, UPDATE on public.{table}"
            f" and USAGE on public.{table}_id_seq and "
        )
        assert r.fix.startswith(f"GRANT SELECT, INSERT, UPDATE ON public.{table} TO {role}; ")


async def test_postgres_write_probe_failure_names_the_role(
    postgres_dsn: str, login_role: Callable[[], tuple[str, str]]
) -> None:
    await open_tables(postgres_dsn)
    role, url = login_role()
    who = sql.Identifier(role)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {}").format(who))
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(who))
    rls = shown(await check_database(load_settings(database_url=url)))  # granted, but RLS has no policy
    for table in TABLES:
        r = rls[f"table {table}"]
        assert r.detail == (
            f"not permitted: role {role} lacks a row-level security policy letting it insert and "
            f"update public.{table}"
        )
        assert r.fix.startswith(f"CREATE POLICY streamer_writes ON public.{table} FOR ALL TO {role} ")
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        for table in TABLES:
            conn.execute(sql.SQL("CREATE POLICY w ON {} TO {} USING (true) WITH CHECK (true)").format(
                sql.Identifier(table), who
            ))  # fmt: skip
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(who))
    results = shown(await check_database(load_settings(database_url=url)))  # a read-only role
    assert all(results[f"table {t}"].ok for t in TABLES)
    write = results["write"]
    assert not write.ok and write.detail.startswith(f"as role {role}: [25006] ")
    assert f"role {role} " in write.fix


async def test_postgres_missing_tables_for_a_role_that_may_not_create_them(
    postgres_dsn: str, login_role: Callable[[], tuple[str, str]]
) -> None:
    role, url = login_role()  # PostgreSQL ≥ 15: no CREATE on schema public for other roles
    results = shown(await check_database(load_settings(database_url=url)))
    for table in TABLES[:3]:
        r = results[f"table {table}"]
        assert not r.ok and r.detail.startswith("table missing")
        assert "`run` cannot create it" in r.fix and f"GRANT CREATE ON SCHEMA public TO {role}" in r.fix
    gaps = results["table stream_gaps"]
    assert gaps.ok and gaps.warn and "`run` cannot create it" in gaps.fix


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
async def test_a_table_of_the_wrong_shape_is_not_reported_missing(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_dsn") if kind == "postgres" else f"sqlite:///{tmp_path / 'x.db'}"
    foreign = "CREATE TABLE equity_data (id integer PRIMARY KEY, ticker text, price numeric)"
    if kind == "postgres":
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(foreign)
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "x.db")) as lite:
            lite.execute(foreign)
    results = shown(await check_database(load_settings(database_url=url)))
    shape = results["table equity_data"]
    assert not shape.ok
    assert shape.detail == "columns missing: timestamp, volume; no UNIQUE (ticker, timestamp)"
    assert "created by something else" in shape.fix and "rename or drop it" in shape.fix
    missing = results["table indicators"]
    assert not missing.ok and missing.detail.startswith("table missing")
    assert missing.fix.startswith("`run` creates it") and "rename" not in missing.fix
    assert results["table stream_gaps"].warn and results["table stream_gaps"].ok


async def test_sqlite_read_only_file_fails_the_write_line(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    await open_tables(f"sqlite:///{path}")
    path.chmod(0o444)
    try:
        with path.open("r+b"):
            pass
    except PermissionError:
        pass
    else:
        reason = f"running as uid {os.geteuid()}: chmod 0444 does not stop this user writing {path}"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    results = shown(await check_database(load_settings(database_url=f"sqlite:///{path}")))
    assert all(results[f"table {t}"].ok for t in TABLES)
    write = results["write"]
    assert not write.ok and "readonly" in write.detail and "writable" in write.fix


async def test_supabase_key_without_grants_is_not_permitted_not_missing(supabase_dsn: str) -> None:
    with PostgrestDouble(supabase_dsn) as double:  # anon may read (RLS policy), not write
        settings = load_settings(supabase_url=double.url, supabase_service_role_key=make_key("anon"))
        results = shown(await check_database(settings))
    for table in TABLES:
        r = results[f"table {table}"]
        assert not r.ok and not r.warn and r.detail.startswith("not permitted: ")
        assert "42501" in r.detail and "missing" not in r.detail
        assert "SUPABASE_SERVICE_ROLE_KEY" in r.fix and "migrations" not in r.fix
