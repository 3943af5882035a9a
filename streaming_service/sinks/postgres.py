"""Direct PostgreSQL sink (psycopg 3, async): one transaction and one round trip per batch.

Library errors are mapped at this boundary, by SQLSTATE (`sinks.base.classify_sqlstate`, the same
classification the Supabase sink applies to PostgREST's codes):

- cannot connect, connection lost, server shutting down, timeout, serialization failure, deadlock
  → `SinkUnavailable` (the next `write` reconnects by itself);
- the server refuses rows (SQLSTATE class 22 or 23: numeric overflow, a too long ticker, a CHECK
  or NOT NULL violation…) → the batch is written again in the same transaction with each table's
  rows split in halves, under savepoints, until the refused rows are isolated; the others are
  committed and each refused row goes to the dead-letter file (`sinks.dead_letters`) once, with
  its SQLSTATE. Rows with NaN, infinity or a naive timestamp are dead-lettered without being sent;
- credentials, privileges, a missing table or column (classes 28 and 42, 3D000, …) →
  `SinkRejected`, with the SQLSTATE and the server's message.

A missing table is created at `open()` by applying the migrations. If only optional tables
(`stream_gaps`, `volume_checks`) are missing and the migrations cannot create them (the user does
not own the tables), the sink warns once per table, writes the other tables and drops their rows
(`gaps_dropped`, `checks_dropped`).

Names and messages never contain the password.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from streaming_service.errors import ConfigError, SinkRejected, SinkUnavailable
from streaming_service.models import Batch, TableRow, VolumeCheckRow
from streaming_service.sinks.base import (
    LATEST_CHECKS_SQL,
    OPTIONAL_TABLES,
    PROBE_TIMEOUT_S,
    RECORDED_ROWS_SQL,
    REQUIRED_TABLES,
    TABLE_COLUMNS,
    RecordedRow,
    check_window,
    classify_sqlstate,
    column_values,
    recorded_row,
    upsert_conflict,
    volume_check_row,
    warn_missing_table,
)
from streaming_service.sinks.dead_letters import DeadLetters, Refused, row_values, split_storable

__all__ = ["PostgresSink", "migrations_dir"]

#: The Postgres type of each column of `TABLE_COLUMNS`, for the arrays an upsert unnests.
_COLUMN_TYPES: dict[str, tuple[str, ...]] = {
    "equity_data": ("varchar", "timestamptz", "numeric", "bigint"),
    "indicators": ("varchar", "timestamptz", "numeric", "numeric"),
    "option_prices": (
        "varchar", "timestamptz", "varchar", "numeric", "date", "numeric", "numeric", "numeric",
        "bigint", "bigint", "numeric", "numeric", "numeric", "numeric", "numeric", "varchar",
    ),
    "stream_gaps": ("varchar", "timestamptz", "timestamptz", "varchar", "integer", "bigint", "boolean"),
    "volume_checks": (
        "varchar", "date", "integer", "integer", "bigint", "bigint", "timestamptz", "bigint", "integer",
        "timestamptz",
    ),
}  # fmt: skip


def _upsert_sql(table: str) -> str:
    """INSERT of one array per column (unnest), updating the non-key columns on the UNIQUE key."""
    return (
        f"INSERT INTO {table} ({', '.join(TABLE_COLUMNS[table])})\n"
        f"SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in _COLUMN_TYPES[table])})\n"
        + upsert_conflict(table)
    )


_UPSERTS = {table: _upsert_sql(table) for table in TABLE_COLUMNS}

_MISSING_TABLES = "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass('public.' || t) IS NULL"

# libpq gives no SQLSTATE for errors raised while connecting; these server messages mean that
# retrying cannot help (wrong password, user or database), so they map to SinkRejected.
_PERMANENT_CONNECT_ERRORS = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
)

_Connection = psycopg.AsyncConnection[tuple[Any, ...]]
_Query = tuple[str | bytes, list[Any] | None]


def migrations_dir() -> Path:
    """Where the `*.sql` migrations are: `streaming_service/_migrations` in an installed wheel,
    else `<repo>/supabase/migrations` (editable install or source checkout). The path may not exist.
    """
    package_dir = Path(__file__).resolve().parent.parent
    bundled = package_dir / "_migrations"
    if bundled.is_dir():
        return bundled
    return package_dir.parent / "supabase" / "migrations"


class PostgresSink:
    """Writes batches to PostgreSQL through one connection.

    `dsn` is a libpq URL (`postgresql://user:password@host:port/dbname`) or key=value string.
    `timeout` bounds connecting and each write, in seconds. Prepared statements are disabled so
    the sink also works through a transaction-mode pooler (Supabase port 6543).

    The connection is in autocommit mode and every transaction is spelled out (`BEGIN` … `COMMIT`):
    with autocommit off, psycopg waits for its implicit `BEGIN` before pipelining the rest, which
    would cost a second round trip per batch.
    """

    def __init__(self, dsn: str, *, timeout: float = 30.0, dead_letter_path: Path | None = None) -> None:
        """`dead_letter_path`: the dead-letter file (None: `data/dead_letters.jsonl`).

        Raises `ConfigError` if `dsn` cannot be parsed (the message does not echo it)."""
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise ConfigError(
                "invalid Postgres DSN; expected postgresql://user:password@host:port/dbname"
            ) from None
        host = str(params.get("host") or params.get("hostaddr") or "localhost")
        self._where = f"{host}:{params.get('port') or 5432}"
        self.name = f"postgres:{self._where}/{params.get('dbname') or params.get('user') or ''}"
        self.dead_letters = DeadLetters(dead_letter_path)
        #: Round trips to the server made by `write` (a cost measure for benchmarks and tests).
        self.round_trips = 0
        #: Gap rows dropped because `stream_gaps` is missing and could not be created.
        self.gaps_dropped = 0
        #: Check rows dropped because `volume_checks` is missing and could not be created.
        self.checks_dropped = 0
        self._missing_optional: set[str] = set()
        self._dsn = dsn
        self._timeout = timeout
        self._conn: _Connection | None = None
        self._opened = False
        self._closed = False

    async def open(self) -> None:
        """Connect, and create the tables from the migration files if any of them is missing.

        Each migration file runs in its own transaction, in filename order; they are written to be
        safe to re-run. Idempotent. Raises `SinkUnavailable` if the server cannot be reached (or
        times out), `SinkRejected` if it refuses the login, a migration fails (unless only optional
        tables were missing: then a warning per table, and their rows are dropped) or the
        dead-letter file cannot be written.
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: open() after aclose()")
        await self.dead_letters.check()
        conn = await self._connection()
        failure = ""  # why the migrations could not create the optional tables
        try:
            if missing := await self._missing_tables(conn):
                try:
                    await self._apply_migrations(conn)
                except SinkRejected as exc:
                    if not set(missing) <= set(OPTIONAL_TABLES):
                        raise
                    failure = str(exc)
                missing = await self._missing_tables(conn)
                if required := [t for t in missing if t in REQUIRED_TABLES]:
                    raise SinkRejected(
                        f"{self.name}: tables {', '.join(required)} are still missing after "
                        f"applying the migrations in {migrations_dir()}"
                    )
        except psycopg.Error as exc:
            raise await self._fail(exc, "checking the tables") from exc
        self._missing_optional = {t for t in missing if t in OPTIONAL_TABLES}
        if not self._opened:  # once, not at every open()
            for table in sorted(self._missing_optional):
                reason = failure or f"not created by the migrations in {migrations_dir()}"
                warn_missing_table(self.name, table, reason)
        self._opened = True

    async def write(self, batch: Batch) -> None:
        """Upsert the batch's rows in one transaction, sent in one round trip (pipeline mode).

        Rows that repeat a key within one table of the batch are reduced to the last one, because
        Postgres refuses to update a row twice in one statement. `None` is stored as NULL, `0.0` as
        0; numbers are rounded by the columns' DECIMAL scale. Replaying a batch changes nothing.

        Rows the server refuses (SQLSTATE class 22/23), or that cannot be sent (NaN, infinity, a naive
        timestamp), are isolated and dead-lettered, the others committed: see the module docstring.
        Isolating costs up to 2·log2(rows) round trips per refused row (measured: 1000 rows with 3
        refused, 47 round trips in all; an all-refused batch of 200, 402). Raises
        `SinkUnavailable` (retry the batch; the next call reconnects) or `SinkRejected`; after either
        nothing of the batch is committed, except when the connection is lost while the commit is in
        flight — which a replay makes harmless.
        """
        if not self._opened or self._closed:
            raise RuntimeError(f"{self.name}: write() before open() or after aclose()")
        if not len(batch):
            return
        tables, refused = split_storable(batch)
        dropped = {table: tables.pop(table, []) for table in self._missing_optional}
        if tables:
            refused += await self._write_tables(list(tables.items()))
        await self.dead_letters.add(refused)
        self.gaps_dropped += len(dropped.get("stream_gaps", []))
        self.checks_dropped += len(dropped.get("volume_checks", []))

    async def recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]:
        """The `Sink.recorded_rows` contract, in one query (equity_data LEFT JOIN indicators).

        Raises `ValueError` for naive bounds, `SinkUnavailable` (the next call reconnects) or
        `SinkRejected`, and `RuntimeError` before `open()` or after `aclose()`."""
        check_window(since, until)
        if not self._opened or self._closed:
            raise RuntimeError(f"{self.name}: recorded_rows() before open() or after aclose()")
        conn = await self._connection()
        try:
            async with asyncio.timeout(self._timeout):
                records = await (await conn.execute(RECORDED_ROWS_SQL, [ticker, since, until])).fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            raise await self._fail(exc, "reading recorded rows") from exc
        except BaseException:  # cancelled mid-query: the connection's state is unknown
            await self._drop()
            raise
        return [recorded_row(ticker, *record) for record in records]

    async def latest_volume_checks(self) -> list[VolumeCheckRow]:
        """The `VolumeChecksReader` contract: each ticker's latest `volume_checks` row ([] without
        the table). Raises as `recorded_rows` does."""
        if not self._opened or self._closed:
            raise RuntimeError(f"{self.name}: latest_volume_checks() before open() or after aclose()")
        if "volume_checks" in self._missing_optional:
            return []
        conn = await self._connection()
        try:
            async with asyncio.timeout(self._timeout):
                records = await (await conn.execute(LATEST_CHECKS_SQL)).fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            raise await self._fail(exc, "reading volume checks") from exc
        except BaseException:
            await self._drop()
            raise
        return [volume_check_row(record) for record in records]

    async def probe(self) -> bool:
        """`SELECT 1` on the sink's connection, or on a new one (kept for the next write), within
        `PROBE_TIMEOUT_S`: True if the server answered (a refused login counts as an answer: the
        retried call reports it). Never raises a `SinkError`; cancel-safe (the connection is
        dropped)."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                conn = await self._connection(PROBE_TIMEOUT_S)
                await conn.execute("SELECT 1")
        except SinkRejected:
            return True
        except (SinkUnavailable, psycopg.Error, TimeoutError):
            await self._drop()
            return False
        except BaseException:
            await self._drop()
            raise
        return True

    async def _write_tables(self, tables: list[tuple[str, list[TableRow]]]) -> list[Refused]:
        """Commit `tables` in one transaction; return the rows the server refused."""
        conn = await self._connection()
        try:
            try:
                # Pipeline mode: every message is sent, then one Sync; an error skips the rest (COMMIT
                # included) and surfaces when the block exits, leaving the transaction to roll back.
                statements = [_upsert(table, rows) for table, rows in tables]
                await self._round_trip(conn, [("BEGIN", None), *statements, ("COMMIT", None)])
                return []
            except psycopg.Error as exc:
                if not _refuses_rows(exc):
                    raise
            return await self._write_isolating(conn, tables)
        except (psycopg.Error, TimeoutError) as exc:
            raise await self._fail(exc, "write") from exc
        except BaseException:  # cancelled mid-write: the transaction state is unknown
            await self._drop()
            raise

    async def _write_isolating(
        self, conn: _Connection, tables: list[tuple[str, list[TableRow]]]
    ) -> list[Refused]:
        """The batch again, in one transaction, each table's rows split in halves under a savepoint
        until the refused rows are isolated. A failed attempt's `ROLLBACK TO` rides with the next
        round trip."""
        refused: list[Refused] = []
        pending: list[_Query] = [("ROLLBACK", None), ("BEGIN", None)]  # end the failed transaction

        async def attempt(table: str, rows: list[TableRow]) -> psycopg.Error | None:
            nonlocal pending
            queries = [*pending, ("SAVEPOINT isolate", None), _upsert(table, rows)]
            pending = [("RELEASE SAVEPOINT isolate", None)]
            try:
                await self._round_trip(conn, queries)
            except psycopg.Error as exc:
                if not _refuses_rows(exc):
                    raise
                pending = [("ROLLBACK TO SAVEPOINT isolate", None), ("RELEASE SAVEPOINT isolate", None)]
                return exc
            return None

        async def isolate(table: str, rows: list[TableRow], known: psycopg.Error | None) -> int:
            """Write `rows` but the refused ones; `known` is their error if they are known to fail.
            Returns how many rows were refused."""
            error = known if known is not None else await attempt(table, rows)
            if error is None:
                return 0
            if len(rows) == 1:
                code = error.sqlstate or "no SQLSTATE"
                refused.append(Refused(table, code, _oneline(error), row_values(rows[0])))
                return 1
            middle = len(rows) // 2
            left = await isolate(table, rows[:middle], None)
            # The whole failed: if its first half did not, the second half is known to fail.
            return left + await isolate(table, rows[middle:], None if left else error)

        for table, rows in tables:
            await isolate(table, rows, None)
        await self._round_trip(conn, [*pending, ("COMMIT", None)])
        return refused

    async def _round_trip(self, conn: _Connection, queries: list[_Query]) -> None:
        """Send `queries` in one pipeline, within the timeout; raises the first error."""
        self.round_trips += 1
        async with asyncio.timeout(self._timeout), conn.pipeline():
            for query, params in queries:
                await conn.execute(query, params)

    async def aclose(self) -> None:
        """Close the connection; idempotent. Any open transaction is rolled back by the server."""
        self._closed = True
        await self._drop()

    async def _connection(self, within: float | None = None) -> _Connection:
        """The open connection, or a new one (connected within `within` s, default the sink's)."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        timeout = self._timeout if within is None else within
        try:
            async with asyncio.timeout(timeout):
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    prepare_threshold=None,
                    connect_timeout=max(1, int(timeout)),
                    application_name="streaming-service",
                )
        except TimeoutError:
            raise SinkUnavailable(
                f"{self.name}: connecting to {self._where} timed out after {timeout:g}s; "
                "check that the server is up and reachable from this host"
            ) from None
        except psycopg.OperationalError as exc:
            reason = _oneline(exc)
            if any(hint in reason for hint in _PERMANENT_CONNECT_ERRORS):
                raise SinkRejected(
                    f"{self.name}: the server refused the login: {reason}; "
                    "fix the user, password or database name in the DSN"
                ) from exc
            raise SinkUnavailable(
                f"{self.name}: cannot connect to {self._where}: {reason}; "
                "check that the server is running and the host and port in the DSN"
            ) from exc
        return self._conn

    async def _missing_tables(self, conn: _Connection) -> list[str]:
        rows = await (await conn.execute(_MISSING_TABLES, [list(TABLE_COLUMNS)])).fetchall()
        return [str(row[0]) for row in rows]

    async def _apply_migrations(self, conn: _Connection) -> None:
        files = sorted(migrations_dir().glob("*.sql"))
        if not files:
            raise SinkRejected(
                f"{self.name}: tables are missing and no migrations were found in "
                f"{migrations_dir()}; reinstall the package or apply supabase/migrations by hand"
            )
        for path in files:
            try:
                async with conn.transaction():
                    # No parameters: psycopg sends the file as one query, all statements in it.
                    await conn.execute(path.read_bytes())
            except psycopg.Error as exc:
                raise await self._fail(exc, f"migration {path.name}") from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _fail(self, exc: BaseException, doing: str) -> SinkRejected | SinkUnavailable:
        """Leave the connection clean (rolled back, or dropped) and map `exc` to a sink error."""
        conn = self._conn
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            retryable = classify_sqlstate(sqlstate) == "unavailable"
        else:  # no SQLSTATE: the connection failed, or the timeout struck
            retryable = isinstance(exc, TimeoutError | psycopg.OperationalError | psycopg.InterfaceError)
        if conn is not None and not retryable and not conn.closed:
            try:
                await conn.rollback()
            except psycopg.Error:
                retryable = True
        if retryable or (conn is not None and conn.closed):
            await self._drop()
        if isinstance(exc, TimeoutError):
            return SinkUnavailable(f"{self.name}: {doing}: no answer within {self._timeout:g}s")
        message = f"{self.name}: {doing} failed: [{sqlstate or 'no SQLSTATE'}] {_oneline(exc)}"
        if retryable:
            return SinkUnavailable(message)
        return SinkRejected(f"{message}; {_fix(sqlstate)}")


def _fix(sqlstate: str | None) -> str:
    if sqlstate and (sqlstate.startswith("28") or sqlstate == "42501"):
        return "check the user, password and privileges in DATABASE_URL"
    if sqlstate and sqlstate.startswith("42"):
        return (
            "the tables do not match what the service writes: apply supabase/migrations "
            "(a missing table is created at start)"
        )
    return "see the server's message"


def _refuses_rows(exc: psycopg.Error) -> bool:
    return exc.sqlstate is not None and classify_sqlstate(exc.sqlstate) == "bad_rows"


def _upsert(table: str, rows: list[TableRow]) -> _Query:
    """The table's upsert with one array per column (`unstorable` ran before)."""
    records = [column_values(table, row) for row in rows]
    return _UPSERTS[table], [list(column) for column in zip(*records, strict=True)]


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())
