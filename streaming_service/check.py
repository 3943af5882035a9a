"""`streaming-service check`: a ✓/✗ checklist of what `run` needs, each ✗ with its fix.

Checks, in order: configuration; the Schwab app credentials (SCHWAB_APP_KEY and SCHWAB_APP_SECRET set
and not blank); the Schwab token file (present, readable, refresh-token age
against its 7-day life); the database (reachable; the three required tables with their columns and
UNIQUE keys; the credentials can write, proven by an upsert that is rolled back). Nothing is left
behind. The optional `stream_gaps` table is checked the same way, but its absence is a warning
(⚠, still a pass): `run` records everything else and drops gap rows.

Supabase's REST API has no transactions to roll back, so there the write probe is an upsert of one
deliberately invalid row per table (NULL `volume`, NULL `timestamp`, `option_type` 'ZZZZ', `cause`
'zzzz'), sent
with the table's `on_conflict` key. The database must refuse it with a NOT NULL or CHECK violation
(23502/23514), which proves that the key may write, the columns exist and the UNIQUE key matches
(else 42501, 42703/PGRST204 or 42P10), and nothing is written.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from streaming_service.config import Settings
from streaming_service.errors import AuthError, SinkRejected, SinkUnavailable, StreamerError
from streaming_service.sinks.base import GAPS_MIGRATION, REQUIRED_TABLES, TABLE_COLUMNS, UNIQUE_KEYS
from streaming_service.token import describe, read_token_info

__all__ = ["CheckResult", "check_database", "check_schwab_app", "check_token"]

_PROBE = (
    "INSERT INTO equity_data (ticker, timestamp, price, volume) "
    "VALUES ('ZZCHECK', '2000-01-03T14:30:00+00:00', 1, 1) "
    "ON CONFLICT (ticker, timestamp) DO UPDATE SET volume = excluded.volume"
)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the checklist; `fix` says what to do when `ok` is false or `warn` true (a
    problem that `run` survives: the check still passes)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    def line(self) -> str:
        mark = "✗" if not self.ok else "⚠" if self.warn else "✓"
        shown = not self.ok or self.warn
        return f"{mark} {self.name}: {self.detail}" + (f"\n    fix: {self.fix}" if shown else "")


def _no_gaps_table(fix: str) -> CheckResult:
    return CheckResult(
        "table stream_gaps", True, "missing: gap rows are not recorded (the other tables are)", fix, warn=True
    )


def _blank(secret: SecretStr | None) -> bool:
    return secret is None or not secret.get_secret_value().strip()


def check_schwab_app(settings: Settings) -> CheckResult:
    """Are SCHWAB_APP_KEY and SCHWAB_APP_SECRET set? None, empty and whitespace count as missing
    (`cp .env.example .env` leaves both empty). The values are never shown."""
    names = {"SCHWAB_APP_KEY": settings.schwab_app_key, "SCHWAB_APP_SECRET": settings.schwab_app_secret}
    missing = [name for name, value in names.items() if _blank(value)]
    if missing:
        verb = "are" if len(missing) > 1 else "is"
        return CheckResult(
            "Schwab app credentials",
            False,
            f"{' and '.join(missing)} {verb} not set (missing or blank)",
            "set SCHWAB_APP_KEY and SCHWAB_APP_SECRET in .env, from your app at developer.schwab.com",
        )
    return CheckResult("Schwab app credentials", True, "SCHWAB_APP_KEY and SCHWAB_APP_SECRET set")


def check_token(path: Path, *, now: float | None = None) -> CheckResult:
    """Is the token file usable, and how long until its refresh token expires?"""
    now = time.time() if now is None else now
    fix = "run `streaming-service auth`"
    try:
        info = read_token_info(path)
    except AuthError as exc:
        return CheckResult("Schwab token", False, str(exc).split(":")[0], fix)
    if info.expired(now):
        return CheckResult("Schwab token", False, f"{path}: {describe(info, now)}", fix)
    return CheckResult("Schwab token", True, f"{path}: {describe(info, now)}")


async def check_database(settings: Settings) -> list[CheckResult]:
    """Reachability, schema and write permission of the configured database."""
    url = settings.sink_url
    if url.startswith("sqlite:///"):
        return await asyncio.to_thread(_check_sqlite, Path(url.removeprefix("sqlite:///")))
    if url.startswith(("postgresql://", "postgres://")):
        return await _check_postgres(url)
    if url == "supabase":
        assert settings.supabase_url is not None
        if settings.supabase_service_role_key is None:
            return [CheckResult(
                "Supabase", False, "SUPABASE_SERVICE_ROLE_KEY is not set: the service cannot write",
                "set SUPABASE_SERVICE_ROLE_KEY (SUPABASE_ANON_KEY only reads, for the dashboard)",
            )]  # fmt: skip
        return await _check_supabase(
            settings.supabase_url, settings.supabase_service_role_key.get_secret_value()
        )
    return [CheckResult("database", False, f"no check for {url!r}", "set DATABASE_URL")]


def _schema_results(
    columns: dict[str, set[str]], unique: dict[str, set[tuple[str, ...]]]
) -> list[CheckResult]:
    results = []
    for table, expected in TABLE_COLUMNS.items():
        if table not in REQUIRED_TABLES and table not in columns:
            results.append(_no_gaps_table(f"`run` creates it (or apply {GAPS_MIGRATION})"))
            continue
        missing = sorted(set(expected) - columns.get(table, set()))
        key = UNIQUE_KEYS[table]
        problems = []
        if table not in columns:
            problems.append("table missing")
        elif missing:
            problems.append(f"columns missing: {', '.join(missing)}")
        if table in columns and key not in unique.get(table, set()):
            problems.append(f"no UNIQUE ({', '.join(key)})")
        results.append(
            CheckResult(
                f"table {table}",
                not problems,
                "; ".join(problems) or f"columns and UNIQUE ({', '.join(key)}) present",
                "apply supabase/migrations (README, 'Supabase'); `run` creates missing tables "
                "on Postgres and SQLite by itself",
            )
        )
    return results


def _check_sqlite(path: Path) -> list[CheckResult]:
    if not path.exists():
        return [CheckResult("database", True, f"sqlite {path} does not exist yet; `run` creates it")]
    try:
        with _sqlite(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
            unique: dict[str, set[tuple[str, ...]]] = {}
            for table in tables:
                for index in conn.execute(f"PRAGMA index_list({table})"):
                    if index[2]:  # unique
                        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index[1]})"))
                        unique.setdefault(table, set()).add(cols)
            results = [CheckResult("database", True, f"sqlite {path} opened")]
            results += _schema_results(columns, unique)
            if all(r.ok for r in results):
                conn.execute("BEGIN")
                conn.execute(_PROBE)
                conn.execute("ROLLBACK")
                results.append(CheckResult("write", True, "upsert into equity_data works (rolled back)"))
            return results
    except sqlite3.Error as exc:
        return [CheckResult("database", False, f"sqlite {path}: {exc}", "check the file and its permissions")]


@contextmanager
def _sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


async def _check_postgres(url: str) -> list[CheckResult]:
    import psycopg

    from streaming_service.sinks import sink_from_url

    name = sink_from_url(url).name
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        fix = "check DATABASE_URL and that the server is up"
        return [CheckResult("database", False, f"{name}: {reason}", fix)]
    async with conn:
        results = [CheckResult("database", True, f"{name} reachable")]
        rows = await (
            await conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = ANY(%s)",
                [list(TABLE_COLUMNS)],
            )
        ).fetchall()
        columns: dict[str, set[str]] = {}
        for table, column in rows:
            columns.setdefault(table, set()).add(column)
        keys = await (
            await conn.execute(
                "SELECT t.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i "
                "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "WHERE i.indisunique AND n.nspname = 'public' GROUP BY i.indexrelid, t.relname"
            )
        ).fetchall()
        unique: dict[str, set[tuple[str, ...]]] = {}
        for table, cols in keys:
            unique.setdefault(table, set()).add(tuple(cols))
        results += _schema_results(columns, unique)
        if all(r.ok for r in results):
            try:
                async with conn.transaction(force_rollback=True):
                    await conn.execute(_PROBE)
                results.append(CheckResult("write", True, "upsert into equity_data works (rolled back)"))
            except psycopg.Error as exc:
                results.append(
                    CheckResult(
                        "write",
                        False,
                        f"[{exc.sqlstate}] {' '.join(str(exc).split())}",
                        "the DATABASE_URL user needs INSERT and UPDATE on the three tables",
                    )
                )
        return results


#: One row per table that the schema must refuse (NOT NULL or CHECK) after every privilege check.
_REST_PROBES: dict[str, dict[str, object]] = {
    "equity_data": {
        "ticker": "ZZCHECK",
        "timestamp": "2000-01-03T14:30:00+00:00",
        "price": 1,
        "volume": None,
    },
    "indicators": {"ticker": "ZZCHECK", "timestamp": None, "sma9": None, "vwap": None},
    "option_prices": {
        "ticker": "ZZCHECK",
        "timestamp": "2000-01-03T14:30:00+00:00",
        "option_type": "ZZZZ",
        "strike_price": 1,
        "expiration_date": "2000-01-21",
    },
    "stream_gaps": {
        "ticker": "ZZCHECK",
        "started_at": "2000-01-03T14:30:00+00:00",
        "ended_at": "2000-01-03T14:31:00+00:00",
        "cause": "zzzz",
    },
}


_FIX_SCHEMA = "apply supabase/migrations to the project (README, 'Supabase')"


async def _check_supabase(url: str, key: str) -> list[CheckResult]:
    from streaming_service.sinks.supabase import BadRows, SupabaseSink, TableMissing

    sink = SupabaseSink(url, key, dead_letter_path=Path("/dev/null"))
    try:
        client = await sink.connect()
    except StreamerError as exc:
        return [CheckResult("Supabase", False, str(exc), "check SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY")]
    results: list[CheckResult] = []
    try:
        for table, probe in _REST_PROBES.items():
            columns = ",".join(TABLE_COLUMNS[table])
            upsert = client.table(table).upsert(
                probe, on_conflict=",".join(UNIQUE_KEYS[table]), returning="minimal"  # type: ignore[arg-type]
            )
            try:
                await sink.request(table, client.table(table).select(columns).limit(1))
                await sink.request(table, upsert)
            except SinkUnavailable as exc:
                return [CheckResult("Supabase", False, f"unreachable: {exc}", "check SUPABASE_URL")]
            except SinkRejected as exc:
                if isinstance(exc, TableMissing) and table not in REQUIRED_TABLES:
                    results.append(_no_gaps_table(f"apply {GAPS_MIGRATION} (`supabase db push`)"))
                    continue
                message, _, fix = str(exc).partition("; ")
                results.append(CheckResult(f"table {table}", False, message, fix))
                continue
            except BadRows as exc:
                if exc.code in ("23502", "23514"):  # the schema refused the probe: as it must
                    results.append(
                        CheckResult(f"table {table}", True, "readable, columns and key present, writable")
                    )
                    continue
                detail = f"[{exc.code}] {exc.message}"
                results.append(CheckResult(f"table {table}", False, detail, _FIX_SCHEMA))
                continue
            results.append(
                CheckResult(
                    f"table {table}",
                    False,
                    "the probe row was accepted: the table lacks the migrations' NOT NULL/CHECK constraints",
                    f"delete rows with ticker 'ZZCHECK' and {_FIX_SCHEMA}",
                )
            )
    finally:
        await sink.aclose()
    return [CheckResult("Supabase", True, f"{sink.name} reachable"), *results]
