"""`check` reports each problem with its fix, proves write access without leaving rows behind."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from streaming_service.check import check_database, check_schwab_app, check_token
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
    *required, gaps = before[1:]
    assert [r.ok for r in required] == [False, False, False]
    assert all("table missing" in r.detail and "migrations" in r.fix for r in required)
    assert (gaps.name, gaps.ok, gaps.warn) == ("table stream_gaps", True, True)  # a warning, not a failure
    assert "20251120000000_create_stream_gaps_table.sql" in gaps.fix and "`run` creates it" in gaps.fix
    assert gaps.line().startswith("⚠ table stream_gaps: missing") and "fix:" in gaps.line()

    sink = sink_from_url(postgres_dsn)
    await sink.open()
    await sink.aclose()
    after = await check_database(settings)
    assert all(r.ok and not r.warn for r in after), [r.line() for r in after]
    assert [r.name for r in after[-2:]] == ["table stream_gaps", "write"]
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
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", **env},
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


@pytest.mark.xfail(
    strict=True,
    reason="WIRING PENDING: passes once cli._check calls check.check_schwab_app(settings); "
    "then remove this mark",
)
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
