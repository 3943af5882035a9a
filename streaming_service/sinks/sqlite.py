"""Embedded SQLite sink: the default for demos and single-box use, no server needed.

The five tables mirror the Postgres schema (same names, columns, UNIQUE keys and CHECKs). SQLite has no
TIMESTAMPTZ or DECIMAL, so timestamps are ISO-8601 UTC text with milliseconds
('2026-11-24T14:30:00.123+00:00', which sorts chronologically) and numbers are REAL/INTEGER;
equity and indicator values are rounded to the Postgres columns' scale before writing, and
CHECKs mirror VARCHAR(10) and DECIMAL(10, 2), so for those tables both sinks accept and store the
same data. Timestamps closer than a millisecond share a key here (Postgres keeps microseconds).

All sqlite3 calls run in a worker thread on one connection, one call at a time (`SqliteFile`).

A row SQLite refuses (a CHECK or NOT NULL constraint, an integer beyond 64 bits) does not stop the
batch: that table's rows are written again one by one within the transaction, the others are
committed and each refused row goes to the dead-letter file (`sinks.dead_letters`) once, with
SQLite's error name (`SQLITE_CONSTRAINT_CHECK`, …) as its code. Rows with NaN, infinity or a naive
timestamp are dead-lettered without being sent. A locked or full database is `SinkUnavailable`;
anything else SQLite refuses is `SinkRejected`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from streaming_service.errors import SinkError, SinkRejected, SinkUnavailable
from streaming_service.models import Batch, TableRow, VolumeCheckRow
from streaming_service.sinks.base import (
    LATEST_CHECKS_SQL,
    RECORDED_ROWS_SQL,
    TABLE_COLUMNS,
    RecordedRow,
    check_window,
    encoded_values,
    recorded_row,
    upsert_conflict,
    volume_check_row,
)
from streaming_service.sinks.dead_letters import DeadLetters, Refused, row_values, split_storable
from streaming_service.sqlite_file import SqliteFile

__all__ = ["SQLiteSink"]

_T = TypeVar("_T")
#: What a single row can fail with: a constraint, a value SQLite cannot hold.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, OverflowError)
#: Error names worth retrying: another process holds the lock; the disk is full or failing.
_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS equity_data (
    id INTEGER PRIMARY KEY,
    ticker TEXT NOT NULL CHECK (length(ticker) <= 10),
    timestamp TEXT NOT NULL,
    price REAL NOT NULL CHECK (abs(price) < 1e8),
    volume INTEGER NOT NULL,
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (ticker, timestamp)
);
CREATE TABLE IF NOT EXISTS indicators (
    id INTEGER PRIMARY KEY,
    ticker TEXT NOT NULL CHECK (length(ticker) <= 10),
    timestamp TEXT NOT NULL,
    sma9 REAL CHECK (abs(sma9) < 1e8),
    vwap REAL CHECK (abs(vwap) < 1e8),
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (ticker, timestamp)
);
CREATE TABLE IF NOT EXISTS option_prices (
    id INTEGER PRIMARY KEY,
    ticker TEXT NOT NULL CHECK (length(ticker) <= 10),
    timestamp TEXT NOT NULL,
    option_type TEXT NOT NULL CHECK (option_type IN ('CALL', 'PUT')),
    strike_price REAL NOT NULL,
    expiration_date TEXT NOT NULL,
    last_price REAL,
    bid REAL,
    ask REAL,
    volume INTEGER,
    open_interest INTEGER,
    implied_volatility REAL,
    delta REAL,
    gamma REAL,
    theta REAL,
    vega REAL,
    option_symbol TEXT CHECK (length(option_symbol) <= 50),
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (ticker, timestamp, option_type, strike_price, expiration_date)
);
CREATE TABLE IF NOT EXISTS stream_gaps (
    id INTEGER PRIMARY KEY,
    ticker TEXT NOT NULL CHECK (length(ticker) <= 10),
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    cause TEXT NOT NULL CHECK (cause IN ('restart', 'disconnect', 'stale', 'sink')),
    equity_backfilled_rows INTEGER NOT NULL DEFAULT 0
        CHECK (equity_backfilled_rows BETWEEN -2147483648 AND 2147483647),
    volume_missing INTEGER,
    options_missed INTEGER NOT NULL DEFAULT 0 CHECK (options_missed IN (0, 1)),
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (ticker, started_at),
    CHECK (ended_at >= started_at)
);
CREATE TABLE IF NOT EXISTS volume_checks (
    id INTEGER PRIMARY KEY,
    ticker TEXT NOT NULL CHECK (length(ticker) <= 10),
    day TEXT NOT NULL,
    minutes_checked INTEGER NOT NULL CHECK (minutes_checked BETWEEN 0 AND 2147483647),
    minutes_matching INTEGER NOT NULL,
    shares_recorded INTEGER NOT NULL,
    shares_candles INTEGER NOT NULL,
    worst_minute TEXT,
    worst_minute_diff INTEGER,
    minutes_filled INTEGER NOT NULL DEFAULT 0 CHECK (minutes_filled BETWEEN 0 AND 2147483647),
    checked_at TEXT NOT NULL,
    created_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    UNIQUE (ticker, day),
    CHECK (minutes_matching BETWEEN 0 AND minutes_checked),
    CHECK ((worst_minute IS NULL) = (worst_minute_diff IS NULL))
);
CREATE INDEX IF NOT EXISTS idx_equity_data_ticker_timestamp ON equity_data (ticker, timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_indicators_ticker_timestamp ON indicators (ticker, timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_option_prices_ticker_timestamp
    ON option_prices (ticker, timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_stream_gaps_ticker_started_at ON stream_gaps (ticker, started_at DESC);
CREATE INDEX IF NOT EXISTS idx_volume_checks_ticker_day ON volume_checks (ticker, day DESC);
"""

_UPSERTS = {
    table: f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
    + upsert_conflict(table)
    for table, columns in TABLE_COLUMNS.items()
}
_RECORDED = RECORDED_ROWS_SQL.replace("%s", "?")


def iso_utc(ts: datetime) -> str:
    """Format an aware datetime as stored: UTC, milliseconds, '+00:00' (sub-ms digits dropped).

    Raises `ValueError` for a naive datetime.
    """
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"naive timestamp {ts.isoformat()}: rows must carry timezone-aware UTC")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds")


def _record(table: str, row: TableRow) -> tuple[Any, ...]:
    """The row's parameters for its table's upsert (`unstorable(row)` must be None)."""
    return encoded_values(table, row, iso_utc)


def _bound(ts: datetime) -> str:
    """`ts` as stored, rounded up to the millisecond: a stored (millisecond) time t is >= ts, or
    < ts, exactly when it is so compared with this."""
    extra = ts.microsecond % 1000
    return iso_utc(ts + timedelta(microseconds=1000 - extra) if extra else ts)


class SQLiteSink:
    """Writes batches to a SQLite file (WAL journal, synchronous=NORMAL).

    `busy_timeout` is how long, in seconds, a write waits for another process's lock before
    raising `SinkUnavailable`.
    """

    def __init__(
        self, path: Path, *, busy_timeout: float = 5.0, dead_letter_path: Path | None = None
    ) -> None:
        """`dead_letter_path`: the dead-letter file (None: `data/dead_letters.jsonl`)."""
        self.path = Path(path)
        self.name = f"sqlite:{self.path}"
        self.dead_letters = DeadLetters(dead_letter_path)
        self._file = SqliteFile(self.path, _SCHEMA, busy_timeout=busy_timeout)
        self._closed = False
        #: Always 0: `open()` creates `stream_gaps` and `volume_checks` like the other tables.
        self.gaps_dropped = 0
        self.checks_dropped = 0

    async def open(self) -> None:
        """Create the parent directory, the file and the tables (if missing). Idempotent.

        Raises `SinkUnavailable` if the file is locked, `SinkRejected` if it (or the dead-letter
        file) cannot be used.
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: open() after aclose()")
        await self.dead_letters.check()
        await self._mapped(self._file.open())

    async def write(self, batch: Batch) -> None:
        """Upsert the batch's rows in one transaction; replaying a batch changes nothing.

        Rows repeating a key leave the last one's values. `None` is stored as NULL, `0.0` as 0.
        Rows SQLite refuses, or that cannot be stored (NaN, infinity, a naive timestamp), are
        dead-lettered and the others committed (see the module docstring). Raises
        `SinkUnavailable` (database locked or disk full: retry) or `SinkRejected`; after either,
        nothing of the batch is committed.
        """
        if not self._file.is_open or self._closed:
            raise RuntimeError(f"{self.name}: write() before open() or after aclose()")
        if not len(batch):
            return
        models, refused = split_storable(batch)
        records = [(table, [_record(table, row) for row in rows]) for table, rows in models.items()]
        failed = await self._mapped(self._file.call(_write_tables, records))
        refused += [
            Refused(table, code, error, row_values(models[table][i])) for table, i, code, error in failed
        ]
        await self.dead_letters.add(refused)

    async def recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]:
        """The `Sink.recorded_rows` contract, in one query (equity_data LEFT JOIN indicators); prices
        as stored (rounded to cents). Raises `ValueError` for naive bounds, `SinkUnavailable`
        (locked), `SinkRejected`, and `RuntimeError` before `open()` or after `aclose()`."""
        check_window(since, until)
        if not self._file.is_open or self._closed:
            raise RuntimeError(f"{self.name}: recorded_rows() before open() or after aclose()")
        params = (ticker, _bound(since), _bound(until))
        records = await self._mapped(self._file.call(_fetch_all, _RECORDED, params))
        return [recorded_row(ticker, datetime.fromisoformat(ts), *rest) for ts, *rest in records]

    async def latest_volume_checks(self) -> list[VolumeCheckRow]:
        """The `VolumeChecksReader` contract: each ticker's latest `volume_checks` row. Raises as
        `recorded_rows` does."""
        if not self._file.is_open or self._closed:
            raise RuntimeError(f"{self.name}: latest_volume_checks() before open() or after aclose()")
        records = await self._mapped(self._file.call(_fetch_all, LATEST_CHECKS_SQL, ()))
        return [volume_check_row(tuple(record)) for record in records]

    async def aclose(self) -> None:
        """Close the database file; idempotent."""
        self._closed = True
        await self._mapped(self._file.close())

    async def probe(self) -> bool:
        """`SELECT 1` on the file: True if it answers (or is not open yet: `open()` will say why
        not), False after `aclose()` or on an error. A lock held by another process shows only when
        a write waits for it. Never raises a `SinkError`."""
        if self._closed:
            return False
        if not self._file.is_open:
            return True
        try:
            await self._mapped(self._file.call(_fetch_all, "SELECT 1", ()))
        except SinkError:
            return False
        return True

    async def _mapped(self, call: Awaitable[_T]) -> _T:
        """Await `call` (work on the file), mapping SQLite's errors to sink errors."""
        try:
            return await call
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name.startswith(_TRANSIENT) or "locked" in str(exc) or "busy" in str(exc):
                raise SinkUnavailable(
                    f"{self.name}: the database is locked by another process or the disk is full or "
                    f"failing ({name or type(exc).__name__}: {exc}); retry later"
                ) from exc
            raise SinkRejected(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except OverflowError as exc:
            raise SinkRejected(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise SinkRejected(f"{self.name}: cannot create the database file: {exc}") from exc


def _fetch_all(conn: sqlite3.Connection, query: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(query, params).fetchall()


def _write_tables(
    conn: sqlite3.Connection, tables: list[tuple[str, list[tuple[Any, ...]]]]
) -> list[tuple[str, int, str, str]]:
    """Upsert every table's records in one transaction; returns (table, index, code, error) for
    each record SQLite refused (the rest are committed)."""
    refused: list[tuple[str, int, str, str]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, records in tables:
            conn.execute("SAVEPOINT batch_table")
            try:
                conn.executemany(_UPSERTS[table], records)
            except _ROW_ERRORS:
                # Undo this table's rows and write them one by one: a failed statement undoes
                # only itself, so the transaction goes on.
                conn.execute("ROLLBACK TO batch_table")
                for index, record in enumerate(records):
                    try:
                        conn.execute(_UPSERTS[table], record)
                    except _ROW_ERRORS as exc:
                        code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
                        refused.append((table, index, code, str(exc)))
            conn.execute("RELEASE batch_table")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return refused
