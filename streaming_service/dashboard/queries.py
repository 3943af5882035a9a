"""Read-only queries behind the dashboard's JSON API, on SQLite or Postgres.

`DashboardReader.for_url(url)` opens nothing until the first query; then one connection of its
own (SQLite read-only, Postgres in read-only transactions with a statement timeout), separate from
the sink's, used from one worker thread at a time so the recorder's event loop never waits on it.
Every query is parameterised. Days are exchange (America/New York) dates; a day's rows are those
from its midnight to the next, in New York time.

A day with more rows than the chart can use is downsampled by `downsample`: the day is cut into
equal time buckets and each keeps its first, lowest, highest and last row (M4), so the day's
first, last, minimum and maximum prices always survive; each point's `volume` is the shares of
all rows it stands for, so the points still add up to the day's volume.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from streaming_service.indicators import EXCHANGE_TZ
from streaming_service.models import VolumeCheckRow
from streaming_service.sinks import sink_from_url
from streaming_service.sinks.base import TABLE_COLUMNS, volume_check_row
from streaming_service.sinks.sqlite import iso_utc

__all__ = ["DashboardReader", "Point", "Series", "day_bounds", "downsample"]

_T = TypeVar("_T")

#: One equity row with its indicators: (timestamp, price, volume, sma9, vwap).
Row = tuple[datetime, float, int, float | None, float | None]

_SERIES_SQL = """
SELECT e.timestamp, e.price, e.volume, i.sma9, i.vwap
FROM equity_data e LEFT JOIN indicators i ON i.ticker = e.ticker AND i.timestamp = e.timestamp
WHERE e.ticker = %s AND e.timestamp >= %s AND e.timestamp < %s
ORDER BY e.timestamp
"""
_SPAN_SQL = (
    "SELECT count(*), min(timestamp), max(timestamp) FROM equity_data "
    "WHERE ticker = %s AND timestamp >= %s AND timestamp < %s"
)
_LATEST_SQL = "SELECT max(timestamp) FROM equity_data WHERE ticker = %s"
#: Distinct tickers by skipping through the (ticker, timestamp) index, not by reading every row.
_TICKERS_SQL = """
WITH RECURSIVE t(ticker) AS (
    SELECT min(ticker) FROM equity_data
    UNION ALL
    SELECT (SELECT min(ticker) FROM equity_data WHERE ticker > t.ticker) FROM t WHERE t.ticker IS NOT NULL
)
SELECT ticker FROM t WHERE ticker IS NOT NULL
"""
_OPTION_COLUMNS = tuple(c for c in TABLE_COLUMNS["option_prices"] if c not in ("ticker", "timestamp"))
_SNAPSHOT_SQL = (
    "SELECT max(timestamp) FROM option_prices WHERE ticker = %s AND timestamp >= %s AND timestamp < %s"
)
_CONTRACTS_SQL = (
    f"SELECT {', '.join(_OPTION_COLUMNS)} FROM option_prices WHERE ticker = %s AND timestamp = %s "
    "ORDER BY expiration_date, option_type, strike_price"
)
_GAP_COLUMNS = tuple(c for c in TABLE_COLUMNS["stream_gaps"] if c != "ticker")
_GAPS_SQL = (
    f"SELECT {', '.join(_GAP_COLUMNS)} FROM stream_gaps "
    "WHERE ticker = %s AND started_at < %s AND ended_at >= %s ORDER BY started_at"
)
_CHECK_SQL = (
    f"SELECT {', '.join(TABLE_COLUMNS['volume_checks'])} FROM volume_checks "
    "WHERE ticker = %s AND day <= %s ORDER BY day DESC LIMIT 1"
)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of exchange day `day` as aware UTC datetimes (23 or 25 hours around DST)."""
    start = datetime.combine(day, time(), EXCHANGE_TZ)
    end = datetime.combine(day + timedelta(days=1), time(), EXCHANGE_TZ)
    return start.astimezone(UTC), end.astimezone(UTC)


def exchange_day(ts: datetime) -> date:
    return ts.astimezone(EXCHANGE_TZ).date()


@dataclass(frozen=True, slots=True)
class Point:
    """A point of the chart: a row, or the row standing for several (`volume` is all of theirs)."""

    timestamp: datetime
    price: float
    volume: int
    sma9: float | None
    vwap: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "timestamp": iso_utc(self.timestamp),
            "price": self.price,
            "volume": self.volume,
            "sma9": self.sma9,
            "vwap": self.vwap,
        }


@dataclass(frozen=True, slots=True)
class Series:
    """A ticker's day: `rows` recorded, `points` to draw (`downsampled` if fewer than rows)."""

    ticker: str
    day: date
    rows: int
    points: list[Point] = field(default_factory=list)

    @property
    def downsampled(self) -> bool:
        return len(self.points) < self.rows

    def as_json(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "day": self.day.isoformat(),
            "rows": self.rows,
            "downsampled": self.downsampled,
            "points": [p.as_json() for p in self.points],
        }


def downsample(rows: Iterable[Row], start: datetime, end: datetime, buckets: int) -> list[Point]:
    """M4 over `buckets` equal time buckets of [start, end]: per bucket its first, lowest, highest
    and last row (each once, in time order). `rows` must be in time order, within [start, end];
    read once, kept in memory one bucket's candidates at a time."""
    width = max((end - start).total_seconds(), 1e-9) / max(buckets, 1)
    points: list[Point] = []
    bucket: _Bucket | None = None
    shares = 0  # running total: a point's volume is the running total minus the previous point's
    emitted = 0
    for index, row in enumerate(rows):
        shares += row[2]
        number = min(max(int((row[0] - start).total_seconds() / width), 0), buckets - 1)
        if bucket is None or number != bucket.number:
            if bucket is not None:
                emitted = bucket.emit(points, emitted)
            bucket = _Bucket(number, (index, row, shares))
        else:
            bucket.add((index, row, shares))
    if bucket is not None:
        bucket.emit(points, emitted)
    return points


_Seen = tuple[int, Row, int]  # (position in the day, row, shares up to and including it)


class _Bucket:
    __slots__ = ("first", "high", "last", "low", "number")

    def __init__(self, number: int, seen: _Seen) -> None:
        self.number = number
        self.first = self.low = self.high = self.last = seen

    def add(self, seen: _Seen) -> None:
        price = seen[1][1]
        if price < self.low[1][1]:
            self.low = seen
        if price > self.high[1][1]:
            self.high = seen
        self.last = seen

    def emit(self, points: list[Point], emitted: int) -> int:
        """Append this bucket's points; return the running share total at the last of them."""
        chosen = {seen[0]: seen for seen in (self.first, self.low, self.high, self.last)}
        for _, row, shares in sorted(chosen.values()):
            points.append(Point(row[0], row[1], shares - emitted, row[3], row[4]))
            emitted = shares
        return emitted


class DashboardReader:
    """The dashboard's queries on one database (see the module docstring). Methods raise
    `sqlite3.Error`/`psycopg.Error` as the driver does; `aclose()` is idempotent."""

    def __init__(self, connect: Callable[[], Any], *, name: str, placeholder: str = "%s") -> None:
        self.name = name
        self._connect = connect
        self._placeholder = placeholder
        self._conn: Any = None
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str, *, timeout: float = 10.0) -> DashboardReader:
        """A reader for a `sqlite:///…` or `postgresql://…` URL (checked as the sinks check it:
        `ConfigError` names a bad one)."""
        sink = sink_from_url(url)
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))

            def connect_sqlite() -> sqlite3.Connection:
                if not path.exists():  # mode=ro would not create it; say what is missing
                    raise sqlite3.OperationalError(f"{path} does not exist yet: nothing recorded")
                uri = f"{path.resolve().as_uri()}?mode=ro"
                return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

            return cls(connect_sqlite, name=sink.name, placeholder="?")

        import psycopg

        def connect_postgres() -> psycopg.Connection[tuple[Any, ...]]:
            return psycopg.connect(
                url,
                autocommit=True,
                connect_timeout=max(1, int(timeout)),
                application_name="streaming-service-dashboard",
                options=f"-c default_transaction_read_only=on -c statement_timeout={int(timeout * 1000)}",
            )

        return cls(connect_postgres, name=sink.name)

    async def tickers(self) -> list[str]:
        return [ticker for (ticker,) in await self._rows(_TICKERS_SQL, ())]

    async def latest_day(self, ticker: str) -> date | None:
        """The exchange day of the ticker's newest row, None without rows."""
        ((latest,),) = await self._rows(_LATEST_SQL, (ticker,))
        return None if latest is None else exchange_day(_datetime(latest))

    async def series(self, ticker: str, day: date, *, since: datetime | None, points: int) -> Series:
        """The day's rows from `since` (all when None), downsampled to about `points` if more."""
        start, end = day_bounds(day)
        low = max(start, since) if since is not None else start
        return await self._run(self._series, ticker, day, low, end, points)

    async def option_snapshot(self, ticker: str, day: date) -> tuple[datetime | None, list[dict[str, Any]]]:
        """The day's latest option snapshot: its time and its contracts, as stored."""
        start, end = day_bounds(day)
        ((latest,),) = await self._rows(_SNAPSHOT_SQL, (ticker, self._param(start), self._param(end)))
        if latest is None:
            return None, []
        rows = await self._rows(_CONTRACTS_SQL, (ticker, latest))
        return _datetime(latest), [dict(zip(_OPTION_COLUMNS, map(_plain, row), strict=True)) for row in rows]

    async def gaps(self, ticker: str, day: date) -> list[dict[str, Any]] | None:
        """`stream_gaps` rows overlapping the day; None if the table does not exist."""
        start, end = day_bounds(day)
        try:
            rows = await self._rows(_GAPS_SQL, (ticker, self._param(end), self._param(start)))
        except Exception as exc:
            if _missing_table(exc):
                return None
            raise
        gaps = [dict(zip(_GAP_COLUMNS, map(_plain, row), strict=True)) for row in rows]
        for gap in gaps:
            gap["options_missed"] = bool(gap["options_missed"])
        return gaps

    async def volume_check(self, ticker: str, day: date) -> VolumeCheckRow | bool | None:
        """The daily proof of `day`, or of the latest day checked before it; None if there is none,
        False if the `volume_checks` table does not exist."""
        param = day.isoformat() if self._placeholder == "?" else day
        try:
            rows = await self._rows(_CHECK_SQL, (ticker, param))
        except Exception as exc:
            if _missing_table(exc):
                return False
            raise
        return volume_check_row(tuple(rows[0])) if rows else None

    async def aclose(self) -> None:
        await asyncio.to_thread(self._locked, self._close)

    # -- in the worker thread -------------------------------------------------------------------

    def _series(self, ticker: str, day: date, start: datetime, end: datetime, points: int) -> Series:
        bounds = (ticker, self._param(start), self._param(end))
        ((count, first, last),) = self._fetch(_SPAN_SQL, bounds)
        equity = (_row(record) for record in self._stream(_SERIES_SQL, bounds))
        if count <= points:
            return Series(ticker, day, count, [Point(*row) for row in equity])
        sampled = downsample(equity, _datetime(first), _datetime(last), max(1, points // 4))
        return Series(ticker, day, count, sampled)

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return await self._run(self._fetch, sql, params)

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(self._locked, func, *args)

    def _locked(self, func: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return func(*args)

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return list(self._stream(sql, params))

    def _stream(self, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        """The query's rows as the driver streams them (SQLite steps; psycopg's `stream`). A
        driver error, other than a missing table, drops the connection: the next query reconnects."""
        try:
            if self._conn is None:
                self._conn = self._connect()
            sql = sql.replace("%s", self._placeholder)
            if self._placeholder == "?":
                cursor = self._conn.execute(sql, params)
                try:
                    yield from cursor
                finally:
                    cursor.close()
            else:
                with self._conn.cursor() as cursor:
                    yield from cursor.stream(sql, params, size=1000)
        except Exception as exc:
            if not _missing_table(exc):
                self._close()
            raise

    def _param(self, ts: datetime) -> Any:
        """A time as the database compares it: SQLite's stored text, or the datetime itself."""
        return iso_utc(ts) if self._placeholder == "?" else ts

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _row(record: tuple[Any, ...]) -> Row:
    ts, price, volume, sma9, vwap = record
    return _datetime(ts), float(price), int(volume), _float(sma9), _float(vwap)


def _datetime(value: Any) -> datetime:
    """A stored time (SQLite's ISO text or a driver's datetime) as an aware UTC datetime."""
    ts = datetime.fromisoformat(value) if isinstance(value, str) else value
    return ts.astimezone(UTC)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _plain(value: Any) -> Any:
    """A stored value as JSON takes it: times ISO, dates YYYY-MM-DD, decimals floats."""
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _missing_table(exc: BaseException) -> bool:
    return "no such table" in str(exc) or getattr(exc, "sqlstate", None) == "42P01"
