"""The contract every sink fulfils, and what every sink shares: the tables' keys and columns, the
one classification of database errors (`classify_sqlstate`), which rows cannot be stored at all
(`unstorable`), and what a sink does without an optional table, `stream_gaps` or `volume_checks`
(`warn_missing_table`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from datetime import UTC, date, datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import structlog

from streaming_service.models import Batch, EquityRow, IndicatorRow, TableRow, VolumeCheckRow

__all__ = [
    "CHECKS_MIGRATION",
    "GAPS_MIGRATION",
    "LATEST_CHECKS_SQL",
    "OPTIONAL_TABLES",
    "PROBE_TIMEOUT_S",
    "RECORDED_ROWS_SQL",
    "REQUIRED_TABLES",
    "ROUNDED_COLUMNS",
    "TABLE_COLUMNS",
    "UNIQUE_KEYS",
    "ErrorKind",
    "RecordedRow",
    "Sink",
    "VolumeChecksReader",
    "check_window",
    "classify_sqlstate",
    "column_values",
    "encoded_values",
    "last_per_key",
    "recorded_row",
    "unstorable",
    "upsert_conflict",
    "volume_check_row",
    "warn_missing_table",
    "warn_no_gaps_table",
]

log = structlog.get_logger(__name__)

#: How long `Sink.probe()` waits for an answer, in seconds.
PROBE_TIMEOUT_S = 2.0
#: The UNIQUE key of each table: what every upsert conflicts on.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "equity_data": ("ticker", "timestamp"),
    "indicators": ("ticker", "timestamp"),
    "option_prices": ("ticker", "timestamp", "option_type", "strike_price", "expiration_date"),
    "stream_gaps": ("ticker", "started_at"),
    "volume_checks": ("ticker", "day"),
}
#: The columns the service writes (besides `id` and `created_at`), per table.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "equity_data": ("ticker", "timestamp", "price", "volume"),
    "indicators": ("ticker", "timestamp", "sma9", "vwap"),
    "option_prices": (
        *UNIQUE_KEYS["option_prices"],
        *("last_price", "bid", "ask", "volume", "open_interest", "implied_volatility"),
        *("delta", "gamma", "theta", "vega", "option_symbol"),
    ),
    "stream_gaps": (
        *UNIQUE_KEYS["stream_gaps"],
        *("ended_at", "cause", "equity_backfilled_rows", "volume_missing", "options_missed"),
    ),
    "volume_checks": (
        *UNIQUE_KEYS["volume_checks"],
        *("minutes_checked", "minutes_matching", "shares_recorded", "shares_candles"),
        *("worst_minute", "worst_minute_diff", "minutes_filled", "checked_at"),
    ),
}
#: The tables the service cannot run without. `stream_gaps` and `volume_checks` are optional: a
#: sink that finds one missing (and cannot create it) warns once and drops its rows
#: (`gaps_dropped`, `checks_dropped`).
REQUIRED_TABLES = ("equity_data", "indicators", "option_prices")
#: The migration that creates `stream_gaps`, for messages telling what to apply.
GAPS_MIGRATION = "supabase/migrations/20251120000000_create_stream_gaps_table.sql"
#: The migration that creates `volume_checks`.
CHECKS_MIGRATION = "supabase/migrations/20261207000000_create_volume_checks_table.sql"
#: Each optional table: (its migration, what its rows are called in messages).
OPTIONAL_TABLES: dict[str, tuple[str, str]] = {
    "stream_gaps": (GAPS_MIGRATION, "gap rows"),
    "volume_checks": (CHECKS_MIGRATION, "volume check rows"),
}
#: Columns the sinks round to the Postgres column's scale themselves (DECIMAL(10, 2)), where the
#: database would not (SQLite) or before JSON carries them (Supabase).
ROUNDED_COLUMNS: dict[str, dict[str, int]] = {
    "equity_data": {"price": 2},
    "indicators": {"sma9": 2, "vwap": 2},
}

#: What `Sink.recorded_rows` returns, per row: the equity row and its indicators row (None if absent).
RecordedRow = tuple[EquityRow, IndicatorRow | None]
#: `recorded_rows` in SQL (parameters: ticker, since, until): the values `recorded_row` takes.
RECORDED_ROWS_SQL = """
SELECT e.timestamp, e.price, e.volume, i.id IS NOT NULL, i.sma9, i.vwap
FROM equity_data e LEFT JOIN indicators i ON i.ticker = e.ticker AND i.timestamp = e.timestamp
WHERE e.ticker = %s AND e.timestamp >= %s AND e.timestamp < %s
ORDER BY e.timestamp
"""


ErrorKind = Literal["bad_rows", "unavailable", "rejected"]

#: SQLSTATE classes worth retrying: connection, transaction state (a read-only standby during a
#: failover), routines/triggers, rollback (serialization, deadlock), resources, program limits,
#: object state (locks), operator intervention (shutdown, statement timeout), system and internal
#: errors — those PostgREST answers with a 5xx.
_TRANSIENT_CLASSES = frozenset({"08", "09", "25", "2D", "38", "39", "3B", "40", "53", "54", "55", "57", "58",
                                "F0", "HV", "P0", "XX"})  # fmt: skip


def classify_sqlstate(code: str) -> ErrorKind:
    """What a Postgres error means for the rows that caused it, by SQLSTATE: `bad_rows` (data
    exceptions, class 22; integrity violations, class 23; 21000, a row updated twice), `unavailable`
    (the classes above, except P0001, an explicit RAISE), else `rejected` (28 credentials, 42 schema
    or privileges, 3D000 no such database, …)."""
    if code[:2] in ("22", "23") or code == "21000":
        return "bad_rows"
    if code[:2] in _TRANSIENT_CLASSES and code != "P0001":
        return "unavailable"
    return "rejected"


def unstorable(row: TableRow) -> tuple[str, str] | None:
    """(code, message) if no database should be sent `row`: a datetime field without a timezone
    (`naive-timestamp`), or a NaN or infinite number (`non-finite`); else None."""
    for name in row.__slots__:
        value = getattr(row, name)
        if isinstance(value, datetime) and _naive(value):
            return "naive-timestamp", f"{name} {value.isoformat()} has no timezone; rows must be aware UTC"
    for name in row.__slots__:
        value = getattr(row, name)
        if isinstance(value, float) and not math.isfinite(value):
            return "non-finite", f"{name} is {value!r}: NaN and infinity cannot be stored"
    return None


def check_window(since: datetime, until: datetime) -> None:
    """Raise `ValueError` unless both bounds of a `recorded_rows` window are timezone-aware."""
    for name, value in (("since", since), ("until", until)):
        if _naive(value):
            raise ValueError(f"{name} {value.isoformat()} has no timezone; pass aware UTC datetimes")


def recorded_row(
    ticker: str, timestamp: datetime, price: Any, volume: Any, indicators: bool, sma9: Any, vwap: Any
) -> RecordedRow:
    """One `recorded_rows` item from a database's values (numbers as Decimal, float or int; an
    aware `timestamp`, returned in UTC); `indicators` false: no indicators row (None)."""
    ts = timestamp.astimezone(UTC)
    equity = EquityRow(ticker, ts, float(price), int(volume))
    if not indicators:
        return equity, None
    return equity, IndicatorRow(ticker, ts, _float(sma9), _float(vwap))


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _naive(value: datetime) -> bool:
    return value.tzinfo is None or value.utcoffset() is None


def warn_missing_table(sink: str, table: str, reason: str) -> None:
    """Log, once per sink start, that the optional `table` is missing and its rows will be dropped."""
    migration, rows = OPTIONAL_TABLES[table]
    log.warning(
        f"{table} table missing: {rows} will be dropped; the other tables are written",
        sink=sink,
        reason=reason,
        fix=f"apply {migration} (Supabase: `supabase db push`, or paste the file into the SQL "
        "editor), then restart the service",
    )


def warn_no_gaps_table(sink: str, reason: str) -> None:
    """`warn_missing_table(sink, "stream_gaps", reason)`."""
    warn_missing_table(sink, "stream_gaps", reason)


class Sink(Protocol):
    """Somewhere rows are stored.

    - `open()` connects and makes sure the three required tables exist (creating them only where the
      sink owns the schema), and the optional `stream_gaps` and `volume_checks` if it can: without
      one the sink warns once (`warn_missing_table`), writes the other tables and drops its rows.
      Raises `SinkUnavailable` if the database cannot be reached, `SinkRejected` if it can be
      reached but not used (bad credentials, wrong schema, an unwritable dead-letter file).
    - `write(batch)` stores the batch's rows as upserts on each table's UNIQUE key: replaying a batch
      changes nothing. It never raises because of the data: a row the database refuses (SQLSTATE class
      22 or 23, or 21000; a CHECK or NOT NULL failure), or that cannot be stored at all (NaN, infinity,
      a naive timestamp), is isolated from the others, which are written, and goes to the dead-letter
      file once (`dead_letters`, see `sinks.dead_letters`). It raises `SinkUnavailable` when the same
      batch may be retried (network, timeouts, HTTP 408/429/5xx, database restarting or locked;
      `retry_after` set when the server said how long to wait), and `SinkRejected` when retrying
      cannot help (credentials, permissions, a missing table or column): the service stops.
      After either, the batch is to be written again whole; rows it already committed are upserts.
    - `recorded_rows(ticker, since, until)` reads back what was recorded: the `equity_data` rows of
      `ticker` with `since <= timestamp < until` (aware datetimes, else `ValueError`), ascending by
      timestamp, each paired with the `indicators` row of the same key or None. Values as stored:
      aware UTC timestamps, floats (rounded to the columns' scale), int volumes. Raises
      `SinkUnavailable` / `SinkRejected` as `write` does. Reads only; safe to cancel.
    - `probe()` says whether the database answers a trivial request now (True/False), within a few
      seconds (`PROBE_TIMEOUT_S`); it never raises a `SinkError`, needs no `open()`, and is safe to
      cancel. The writer calls it while a retry backoff sleeps, to retry as soon as the sink is back.
    - `aclose()` releases connections; idempotent.
    - `name` is a short label for logs and the status line; it never contains credentials.

    The sinks of this package also have `dead_letters` (a `DeadLetters`): `dead_letters.count` is how
    many refused rows they have written to the dead-letter file, `gaps_dropped` and `checks_dropped`:
    how many gap and check rows they dropped for want of `stream_gaps` and `volume_checks`, and
    `latest_volume_checks()` (`VolumeChecksReader`); none of these is part of the protocol.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None: ...

    async def recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]: ...

    async def probe(self) -> bool: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class VolumeChecksReader(Protocol):
    """A sink that can read `volume_checks` back (the sinks of this package; not part of `Sink`).

    `latest_volume_checks()` returns, per ticker, its row of the latest day checked, by ticker;
    an empty list when the table is missing or empty. Raises `SinkUnavailable` / `SinkRejected`
    as `Sink.recorded_rows` does. Reads only; safe to cancel."""

    async def latest_volume_checks(self) -> list[VolumeCheckRow]: ...


#: `latest_volume_checks` in SQL: the newest day's row of each ticker, by ticker.
LATEST_CHECKS_SQL = f"""
SELECT {", ".join(TABLE_COLUMNS["volume_checks"])} FROM volume_checks v
WHERE v.day = (SELECT max(day) FROM volume_checks w WHERE w.ticker = v.ticker)
ORDER BY v.ticker
"""


def volume_check_row(values: tuple[Any, ...]) -> VolumeCheckRow:
    """A `VolumeCheckRow` from a database's values in `TABLE_COLUMNS` order (dates and times as
    ISO text or as the driver's objects; times returned aware UTC)."""
    ticker, day, checked, matching, recorded, candles, worst, diff, filled, at = values
    return VolumeCheckRow(
        str(ticker),
        day if isinstance(day, date) else date.fromisoformat(str(day)),
        int(checked), int(matching), int(recorded), int(candles),
        None if worst is None else _utc(worst),
        None if diff is None else int(diff),
        int(filled),
        _utc(at),
    )  # fmt: skip


def _utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.astimezone(UTC)


def column_values(table: str, row: TableRow) -> tuple[Any, ...]:
    """The row's values in `TABLE_COLUMNS[table]` order (the models' fields are named after the
    columns), as the model holds them: datetimes, dates, None; unchecked: `unstorable(row)` is what
    refuses NaN, infinity and naive timestamps."""
    return tuple(getattr(row, column) for column in TABLE_COLUMNS[table])


def encoded_values(table: str, row: TableRow, timestamp: Callable[[datetime], str]) -> tuple[Any, ...]:
    """`column_values` for a database that takes text for times (SQLite, JSON): datetimes as
    `timestamp(value)`, dates ISO, the `ROUNDED_COLUMNS` rounded."""
    scales = ROUNDED_COLUMNS.get(table, {})
    values = []
    for column, value in zip(TABLE_COLUMNS[table], column_values(table, row), strict=True):
        if isinstance(value, datetime):
            value = timestamp(value)
        elif isinstance(value, date):
            value = value.isoformat()
        elif value is not None and column in scales:
            value = round(value, scales[column])
        values.append(value)
    return tuple(values)


def upsert_conflict(table: str) -> str:
    """`ON CONFLICT (<UNIQUE key>) DO UPDATE SET` every other column from EXCLUDED (Postgres and
    SQLite spell it alike)."""
    key = UNIQUE_KEYS[table]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in TABLE_COLUMNS[table] if c not in key)
    return f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


class _Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


_R = TypeVar("_R", bound=_Keyed)


def last_per_key(rows: Iterable[_R]) -> list[_R]:
    """One row per UNIQUE key, the last one winning, order kept (one statement cannot update a row
    twice)."""
    return list({row.key: row for row in rows}.values())
