"""`streaming-service check`: a ✓/✗ checklist of what `run` needs, each ✗ with its fix.

Checks, in order: configuration; the Schwab app credentials (SCHWAB_APP_KEY and SCHWAB_APP_SECRET set
and not blank); the Schwab token file (present, readable, refresh-token age against its 7-day life);
the database (reachable; then per table, each with its own fix: missing, not permitted for the
connecting role, or the wrong shape (columns or the upsert's UNIQUE key missing); then the
credentials can write, proven by an upsert that is rolled back). Nothing is left behind. The
optional `stream_gaps` and `volume_checks` tables are checked the same way, but the absence of one
is a warning (⚠, still a pass): `run` records everything else and drops its rows.

On Postgres the tables are read from pg_catalog, which shows every table whatever the role's
privileges (information_schema hides those it may not use): "not permitted" names the role
(`current_user`) and what it lacks: SELECT/INSERT/UPDATE on the table, USAGE on its id sequence,
and a row-level security policy (the migrations enable RLS with policies for Supabase's roles
only) — with the GRANT / CREATE POLICY statements that fix it.

Supabase's REST API has no transactions to roll back, so there the write probe is an upsert of one
deliberately invalid row per table (NULL `volume`, NULL `timestamp`, `option_type` 'ZZZZ', `cause`
'zzzz', `minutes_matching` above `minutes_checked`), sent
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
from streaming_service.sinks.base import OPTIONAL_TABLES, REQUIRED_TABLES, TABLE_COLUMNS, UNIQUE_KEYS
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
    problem that `run` survives: the check still passes), on a line of its own unless empty."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    def line(self) -> str:
        mark = "✗" if not self.ok else "⚠" if self.warn else "✓"
        shown = (not self.ok or self.warn) and self.fix
        return f"{mark} {self.name}: {self.detail}" + (f"\n    fix: {self.fix}" if shown else "")


def _no_optional_table(table: str, fix: str) -> CheckResult:
    rows = OPTIONAL_TABLES[table][1]
    return CheckResult(
        f"table {table}", True, f"missing: {rows} are not recorded (the other tables are)", fix, warn=True
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


@dataclass(frozen=True, slots=True)
class _Table:
    """What the database has under one of our tables' names: its columns, its UNIQUE keys, and the
    privileges the connecting role lacks on it (`lacking`, as phrases) with the GRANTs that fix them."""

    columns: frozenset[str]
    unique: frozenset[tuple[str, ...]]
    lacking: tuple[str, ...] = ()
    grants: tuple[str, ...] = ()


def _schema_results(
    found: dict[str, _Table], *, creates: dict[str, str], prefix: str = "", role: str = ""
) -> list[CheckResult]:
    """One line per table: missing (fix: `creates[table]`, how it comes to exist), not permitted for
    `role` (fix: the GRANTs), or the wrong shape (fix: make way for the real one). `prefix` is the
    schema shown before table names ("public." on Postgres)."""
    results = []
    for table, expected in TABLE_COLUMNS.items():
        have = found.get(table)
        if have is None:
            if table not in REQUIRED_TABLES:
                results.append(_no_optional_table(table, creates[table]))
            else:
                results.append(CheckResult(f"table {table}", False, "table missing", creates[table]))
            continue
        problems, fixes = [], []
        if have.lacking:
            problems.append(f"not permitted: role {role} lacks {' and '.join(have.lacking)}")
            fixes.append("; ".join(have.grants))
        missing = sorted(set(expected) - have.columns)
        key = UNIQUE_KEYS[table]
        shape = [f"columns missing: {', '.join(missing)}"] if missing else []
        if key not in have.unique:
            shape.append(f"no UNIQUE ({', '.join(key)})")
        if shape:
            problems += shape
            fixes.append(
                f"{prefix}{table} was created by something else (or altered since): rename or drop "
                f"it; then {creates[table]}"
            )
        results.append(
            CheckResult(
                f"table {table}",
                not problems,
                "; ".join(problems) or f"columns and UNIQUE ({', '.join(key)}) present",
                "; ".join(fixes),
            )
        )
    return results


def _check_sqlite(path: Path) -> list[CheckResult]:
    if not path.exists():
        return [CheckResult("database", True, f"sqlite {path} does not exist yet; `run` creates it")]
    try:
        with _sqlite(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            found: dict[str, _Table] = {}
            for table in tables:
                unique = set()
                for index in conn.execute(f"PRAGMA index_list({table})"):
                    if index[2]:  # unique
                        unique.add(tuple(r[2] for r in conn.execute(f"PRAGMA index_info({index[1]})")))
                columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                found[table] = _Table(frozenset(columns), frozenset(unique))
            results = [CheckResult("database", True, f"sqlite {path} opened")]
            results += _schema_results(found, creates=dict.fromkeys(TABLE_COLUMNS, "`run` creates it"))
            if all(r.ok for r in results):
                try:
                    conn.execute("BEGIN")
                    conn.execute(_PROBE)
                    conn.execute("ROLLBACK")
                except sqlite3.Error as exc:
                    fix = "make the file and its directory writable for this user (or run as their owner)"
                    results.append(CheckResult("write", False, f"sqlite {path}: {exc}", fix))
                else:
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


#: Who we are, and whether `run` could create missing tables (CREATE on schema public).
_ROLE_SQL = (
    "SELECT quote_ident(current_user), coalesce((SELECT has_schema_privilege(oid, 'CREATE') "
    "FROM pg_namespace WHERE nspname = 'public'), false)"
)
#: Our tables in schema public, from pg_catalog (information_schema hides tables the role may not
#: use): columns; the table privileges the role lacks; the sequences of its serial columns on which
#: it lacks USAGE (INSERT calls nextval()); whether row-level security stops its upserts (RLS on, the
#: role neither owns the table nor bypasses RLS, and no permissive policy of the role's covers INSERT
#: and UPDATE: the migrations enable RLS and add policies only for Supabase's roles).
_TABLES_SQL = """
SELECT c.relname,
       array(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
       array(SELECT p FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE']) WITH ORDINALITY AS u(p, o)
             WHERE NOT has_table_privilege(c.oid, p) ORDER BY o),
       array(SELECT quote_ident(sn.nspname) || '.' || quote_ident(s.relname)
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
             JOIN pg_namespace sn ON sn.oid = s.relnamespace
             WHERE d.classid = 'pg_class'::regclass AND d.refobjid = c.oid AND d.deptype = 'a'
               AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, 'USAGE, UPDATE') END
             ORDER BY s.relname),
       c.relrowsecurity
         AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE'))
         AND NOT (SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user)
         AND NOT coalesce((
             SELECT bool_or(p.polcmd IN ('a', '*')) AND bool_or(p.polcmd IN ('w', '*'))
             FROM pg_policy p WHERE p.polrelid = c.oid AND p.polpermissive
               AND (0 = ANY(p.polroles) OR EXISTS (SELECT FROM unnest(p.polroles) AS r(id)
                                                    WHERE r.id <> 0 AND pg_has_role(r.id, 'USAGE')))
           ), false)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)
"""
_UNIQUE_SQL = (
    "SELECT t.relname, array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i "
    "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
    "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
    "WHERE i.indisunique AND n.nspname = 'public' GROUP BY i.indexrelid, t.relname"
)


def _postgres_creates(role: str, may_create: bool) -> dict[str, str]:
    """Per table, how a missing table comes to exist: `run` applies the migrations, if the role
    may create tables in schema public."""
    creates = {}
    for table in TABLE_COLUMNS:
        migrations = "supabase/migrations" if table in REQUIRED_TABLES else OPTIONAL_TABLES[table][0]
        creates[table] = (
            f"`run` creates it (or apply {migrations})"
            if may_create
            else f"`run` cannot create it: role {role} may not create tables in schema public; "
            f"apply {migrations} as the database owner and grant {role} SELECT, INSERT, UPDATE on "
            f"public.{table} and USAGE on its id sequence (or GRANT CREATE ON SCHEMA public TO {role})"
        )
    return creates


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
        role_row = await (await conn.execute(_ROLE_SQL)).fetchone()
        assert role_row is not None
        role, may_create = str(role_row[0]), bool(role_row[1])
        unique: dict[str, set[tuple[str, ...]]] = {}
        for table, cols in await (await conn.execute(_UNIQUE_SQL)).fetchall():
            unique.setdefault(table, set()).add(tuple(cols))
        found: dict[str, _Table] = {}
        rows = await (await conn.execute(_TABLES_SQL, [list(TABLE_COLUMNS)])).fetchall()
        for table, columns, privileges, sequences, policed in rows:
            lacking = [f"{', '.join(privileges)} on public.{table}"] if privileges else []
            lacking += [f"USAGE on {seq}" for seq in sequences]
            grants = [f"GRANT SELECT, INSERT, UPDATE ON public.{table} TO {role}"] if privileges else []
            grants += [f"GRANT USAGE ON SEQUENCE {seq} TO {role}" for seq in sequences]
            if policed:
                lacking.append(f"a row-level security policy letting it insert and update public.{table}")
                grants.append(
                    f"CREATE POLICY streamer_writes ON public.{table} FOR ALL TO {role} "
                    "USING (true) WITH CHECK (true) (or connect as the table's owner)"
                )
            found[table] = _Table(
                frozenset(columns), frozenset(unique.get(table, ())), tuple(lacking), tuple(grants)
            )
        creates = _postgres_creates(role, may_create)
        results += _schema_results(found, creates=creates, prefix="public.", role=role)
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
                        f"as role {role}: [{exc.sqlstate}] {' '.join(str(exc).split())}",
                        f"role {role} has the privileges and policies but its upsert into "
                        "public.equity_data was refused: fix what the error names (a read-only "
                        "server or role, a trigger, …) or set DATABASE_URL to a role that may write",
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
    "volume_checks": {
        "ticker": "ZZCHECK",
        "day": "2000-01-03",
        "minutes_checked": 0,
        "minutes_matching": 1,
        "shares_recorded": 0,
        "shares_candles": 0,
        "minutes_filled": 0,
        "checked_at": "2000-01-03T21:00:00+00:00",
    },
}


_FIX_SCHEMA = "apply supabase/migrations to the project (docs/deployment.md, 'Supabase')"


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
                probe,
                on_conflict=",".join(UNIQUE_KEYS[table]),
                returning="minimal",  # type: ignore[arg-type]
            )
            try:
                await sink.request(table, client.table(table).select(columns).limit(1))
                await sink.request(table, upsert)
            except SinkUnavailable as exc:
                return [CheckResult("Supabase", False, f"unreachable: {exc}", "check SUPABASE_URL")]
            except SinkRejected as exc:
                if isinstance(exc, TableMissing) and table not in REQUIRED_TABLES:
                    migration = OPTIONAL_TABLES[table][0]
                    results.append(_no_optional_table(table, f"apply {migration} (`supabase db push`)"))
                    continue
                message, _, fix = str(exc).partition("; ")
                message = message.removeprefix(f"{sink.name}: {table}: ")
                if isinstance(exc, TableMissing):
                    message = f"table missing: {message}"
                elif "SUPABASE_SERVICE_ROLE_KEY" in fix:  # 401/403, 42501, a bad JWT
                    message = f"not permitted: {message}"
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
