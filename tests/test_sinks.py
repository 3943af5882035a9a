"""Both sinks against real databases: a throwaway PostgreSQL server and SQLite files."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from pg_cluster import PgCluster

from streaming_service.config import load_settings
from streaming_service.errors import ConfigError, SinkRejected, SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow, OptionRow
from streaming_service.sinks import PostgresSink, Sink, SQLiteSink, sink_for, sink_from_url
from streaming_service.sinks.postgres import migrations_dir

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
Row = tuple[Any, ...]


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def make_batch(n: int = 3, price: float = 500.0, sma9: float | None = 499.5, ticker: str = "QQQ") -> Batch:
    return Batch(
        equity=tuple(EquityRow(ticker, at(i), price + i, 100 + i) for i in range(n)),
        indicators=tuple(IndicatorRow(ticker, at(i), sma9, price) for i in range(n)),
    )


class Db:
    """One empty database of either kind: makes sinks for it and reads its tables back directly.

    `rows(table)` gives (ticker, timestamp, value, value) sorted by key, with numbers as Decimal
    and timestamps as aware datetimes whatever the backend. Sinks write refused rows to `dead`;
    `letters()` reads them back.
    """

    def __init__(self, kind: str, url: str, make: Callable[..., Sink], dead: Path) -> None:
        self.kind, self.url, self._make, self.dead = kind, url, make, dead

    def sink(self, **kwargs: Any) -> Sink:
        return self._make(**{"dead_letter_path": self.dead, **kwargs})

    def letters(self) -> list[dict[str, Any]]:
        if not self.dead.exists():
            return []
        return [json.loads(line) for line in self.dead.read_text().splitlines()]

    def query(self, sql: str, *params: Any) -> list[Row]:
        if self.kind == "postgres":
            with psycopg.connect(self.url) as conn:
                cursor = conn.execute(sql.replace("?", "%s").encode(), params)
                return cursor.fetchall() if cursor.description else []
        with sqlite3.connect(self.url) as lite:
            rows = lite.execute(sql, params).fetchall()
        lite.close()
        return rows

    def rows(self, table: str) -> list[Row]:
        value_columns = "price, volume" if table == "equity_data" else "sma9, vwap"
        raw = self.query(f"SELECT ticker, timestamp, {value_columns} FROM {table} ORDER BY 1, 2")
        return [(r[0], _as_datetime(r[1]), _as_decimal(r[2]), _as_decimal(r[3])) for r in raw]

    def quick_sink(self) -> Sink:
        """A sink that gives up after a short wait for a lock (see `unavailable`)."""
        return self.sink(timeout=1.0) if self.kind == "postgres" else self.sink(busy_timeout=0.05)

    @contextlib.contextmanager
    def unavailable(self) -> Iterator[None]:
        """While inside, another session holds a lock, so a `quick_sink`'s write raises
        `SinkUnavailable` (Postgres: statement timeout on the locked table; SQLite: busy)."""
        if self.kind == "postgres":
            with psycopg.connect(self.url) as other:
                other.execute("LOCK TABLE indicators IN ACCESS EXCLUSIVE MODE")
                yield
                other.rollback()
            return
        other = sqlite3.connect(self.url, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            yield
            other.execute("ROLLBACK")
        finally:
            other.close()


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _as_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    dead = tmp_path / "dead" / "letters.jsonl"
    if request.param == "sqlite":
        path = tmp_path / "nested" / "dir" / "test.db"
        return Db("sqlite", str(path), lambda **kw: SQLiteSink(path, **kw), dead)
    dsn: str = request.getfixturevalue("postgres_dsn")
    return Db("postgres", dsn, lambda **kw: PostgresSink(dsn, **kw), dead)


@pytest.fixture
async def sink(db: Db) -> AsyncIterator[Sink]:
    opened = db.sink()
    await opened.open()
    yield opened
    await opened.aclose()


# --- both sinks ---------------------------------------------------------------------------------


async def test_open_creates_tables_and_is_idempotent(db: Db) -> None:
    for _ in range(2):
        first = db.sink()
        await first.open()
        await first.open()
        await first.aclose()
        await first.aclose()
    for table in ("equity_data", "indicators", "option_prices"):
        assert db.query(f"SELECT count(*) FROM {table}") == [(0,)]


async def test_replaying_a_batch_changes_nothing(db: Db, sink: Sink) -> None:
    batch = make_batch()
    await sink.write(batch)
    first = (db.rows("equity_data"), db.rows("indicators"), db.query("SELECT id FROM equity_data"))
    await sink.write(batch)
    assert (db.rows("equity_data"), db.rows("indicators"), db.query("SELECT id FROM equity_data")) == first
    assert first[0] == [("QQQ", at(i), Decimal(500 + i), 100 + i) for i in range(3)]
    assert first[1] == [("QQQ", at(i), Decimal("499.5"), Decimal(500)) for i in range(3)]


async def test_conflicting_rows_are_updated(db: Db, sink: Sink) -> None:
    await sink.write(make_batch(price=500.0, sma9=None))
    await sink.write(make_batch(n=2, price=600.0, sma9=601.25))
    assert [r[2:] for r in db.rows("equity_data")] == [(600, 100), (601, 101), (502, 102)]
    assert [r[2:] for r in db.rows("indicators")] == [
        (Decimal("601.25"), 600),
        (Decimal("601.25"), 600),
        (None, 500),
    ]


async def test_zero_is_zero_and_none_is_null(db: Db, sink: Sink) -> None:
    await sink.write(
        Batch(
            equity=(EquityRow("QQQ", at(0), 0.0, 0),),
            indicators=(IndicatorRow("QQQ", at(0), 0.0, None), IndicatorRow("QQQ", at(1), None, 0.0)),
        )
    )
    assert db.rows("equity_data") == [("QQQ", at(0), 0, 0)]
    assert db.rows("indicators") == [("QQQ", at(0), 0, None), ("QQQ", at(1), None, 0)]


async def test_numbers_are_stored_at_the_schema_scale(db: Db, sink: Sink) -> None:
    await sink.write(
        Batch(
            equity=(EquityRow("QQQ", at(0), 500.123, 7), EquityRow("QQQ", at(1), 99.996, 8)),
            indicators=(IndicatorRow("QQQ", at(0), 500.126, 0.004),),
        )
    )
    assert [r[2] for r in db.rows("equity_data")] == [Decimal("500.12"), Decimal("100.00")]
    assert db.rows("indicators")[0][2:] == (Decimal("500.13"), Decimal("0"))


async def test_timestamps_round_trip_as_aware_utc(db: Db, sink: Sink) -> None:
    new_york = datetime(2026, 11, 24, 9, 30, 0, 123000, tzinfo=ZoneInfo("America/New_York"))
    await sink.write(Batch(equity=(EquityRow("SPY", new_york, 1.0, 1),)))
    [(_, stored, _, _)] = db.rows("equity_data")
    assert stored == new_york


async def test_duplicate_keys_within_a_batch_keep_the_last_row(db: Db, sink: Sink) -> None:
    await sink.write(
        Batch(
            equity=(EquityRow("QQQ", at(0), 1.0, 1), EquityRow("QQQ", at(0), 2.0, 2)),
            indicators=(IndicatorRow("QQQ", at(0), 1.0, 1.0), IndicatorRow("QQQ", at(0), None, 3.0)),
        )
    )
    assert db.rows("equity_data") == [("QQQ", at(0), 2, 2)]
    assert db.rows("indicators") == [("QQQ", at(0), None, 3)]


async def test_a_refused_row_is_dead_lettered_and_the_rest_committed(db: Db, sink: Sink) -> None:
    batch = Batch(
        equity=(EquityRow("QQQ", at(0), 1.0, 1),),
        indicators=(IndicatorRow("QQQ", at(0), 1.0, 1.0), IndicatorRow("TOOLONGTICKER", at(0), 1.0, 1.0)),
    )
    await sink.write(batch)
    assert db.rows("equity_data") == [("QQQ", at(0), 1, 1)]
    assert db.rows("indicators") == [("QQQ", at(0), 1, 1)]
    [letter] = db.letters()
    print(f"{db.kind}: refused row -> {letter['code']}: {letter['error']}")
    assert letter["table"] == "indicators"
    assert letter["code"] == ("22001" if db.kind == "postgres" else "SQLITE_CONSTRAINT_CHECK")
    assert letter["row"] == {
        "ticker": "TOOLONGTICKER", "timestamp": at(0).isoformat(), "sma9": 1.0, "vwap": 1.0
    }  # fmt: skip
    assert set(letter) == {"at", "table", "code", "error", "row"}
    assert datetime.fromisoformat(letter["at"]).tzinfo is not None
    await sink.write(batch)  # a replay: the row is refused again but not written twice
    assert len(db.letters()) == 1


@pytest.mark.parametrize(
    ("row", "codes"),
    [
        (EquityRow("QQQ", datetime(2026, 1, 2), 1.0, 1), ("naive-timestamp", "naive-timestamp")),
        (EquityRow("QQQ", T0, float("nan"), 1), ("non-finite", "non-finite")),
        (IndicatorRow("QQQ", T0, None, float("inf")), ("non-finite", "non-finite")),
        (EquityRow("QQQ", T0, 1.0, 2**63), ("22003", "OverflowError")),
        (EquityRow("QQQ", T0, 1e9, 1), ("22003", "SQLITE_CONSTRAINT_CHECK")),
    ],
)
async def test_invalid_rows_are_dead_lettered_and_the_rest_written(
    db: Db, sink: Sink, row: EquityRow | IndicatorRow, codes: tuple[str, str]
) -> None:
    good = make_batch(n=2, ticker="SPY")
    if isinstance(row, EquityRow):
        bad = Batch(equity=(good.equity[0], row, good.equity[1]), indicators=good.indicators)
    else:
        bad = Batch(equity=good.equity, indicators=(good.indicators[0], row, good.indicators[1]))
    await sink.write(bad)
    assert [r[0] for r in db.rows("equity_data")] == ["SPY", "SPY"]
    assert [r[0] for r in db.rows("indicators")] == ["SPY", "SPY"]
    [letter] = db.letters()
    print(f"{db.kind}: {row} -> {letter['code']}: {letter['error']}")
    assert letter["code"] == codes[0 if db.kind == "postgres" else 1]
    assert letter["table"] == ("equity_data" if isinstance(row, EquityRow) else "indicators")
    assert letter["row"]["ticker"] == "QQQ"


async def test_a_thousand_rows_with_three_bad_ones(db: Db) -> None:
    """997 written, 3 dead letters; a replay after a forced SinkUnavailable adds no letter."""
    batch = make_batch(n=1000)
    equity = list(batch.equity)
    for i in (10, 500, 999):
        equity[i] = EquityRow("QQQ", at(i), 1e9 + i, 1)  # beyond DECIMAL(10, 2)
    bad = Batch(tuple(equity), batch.indicators)
    sink = db.quick_sink()
    await sink.open()
    started = time.perf_counter()
    await sink.write(bad)
    elapsed = time.perf_counter() - started
    trips = getattr(sink, "round_trips", None)
    print(
        f"{db.kind}: 1000 rows, 3 bad -> {len(db.rows('equity_data'))} written, {len(db.letters())} "
        f"dead letters, {trips if trips is not None else 'n/a'} round trips, {elapsed * 1000:.0f} ms"
    )
    assert len(db.rows("equity_data")) == 997 and len(db.rows("indicators")) == 1000
    assert sorted(letter["row"]["price"] for letter in db.letters()) == [1e9 + 10, 1e9 + 500, 1e9 + 999]
    with db.unavailable(), pytest.raises(SinkUnavailable):
        await sink.write(bad)
    await sink.write(bad)  # the batcher's retry
    await sink.write(Batch(tuple(equity), batch.indicators))  # the same rows, a new batch object
    print(f"{db.kind}: after a forced SinkUnavailable and 2 replays -> {len(db.letters())} dead letters")
    assert len(db.letters()) == 3 and sink.dead_letters.count == 3  # type: ignore[attr-defined]
    assert len(db.rows("equity_data")) == 997
    await sink.aclose()


async def test_dead_letters_of_a_new_process_are_not_repeated(db: Db, sink: Sink) -> None:
    bad = Batch(equity=(EquityRow("QQQ", at(0), 1e9, 1), EquityRow("QQQ", at(1), 2.0, 2)))
    await sink.write(bad)
    restarted = db.sink()  # a new sink, as after a restart, replays the batch from the spool
    await restarted.open()
    await restarted.write(bad)
    await restarted.aclose()
    assert len(db.letters()) == 1 and len(db.rows("equity_data")) == 1


async def test_a_large_batch_is_written_in_one_call(db: Db, sink: Sink) -> None:
    batch = make_batch(n=5000)
    await sink.write(batch)
    await sink.write(batch)
    assert db.query("SELECT count(*), sum(volume) FROM equity_data") == [(5000, sum(range(100, 5100)))]
    assert db.query("SELECT count(*) FROM indicators") == [(5000,)]


async def test_empty_batch_and_lifecycle_errors(db: Db) -> None:
    unopened = db.sink()
    with pytest.raises(RuntimeError, match="open"):
        await unopened.write(make_batch())
    await unopened.open()
    await unopened.write(Batch())
    await unopened.aclose()
    with pytest.raises(RuntimeError, match="aclose"):
        await unopened.write(make_batch())


async def test_sink_for_passes_the_dead_letter_path_and_the_timeout(db: Db, tmp_path: Path) -> None:
    url = db.url if db.kind == "postgres" else f"sqlite:///{db.url}"
    dead = tmp_path / "configured" / "dead.jsonl"
    settings = load_settings(database_url=url, dead_letter_path=dead, sink_timeout=1)
    sink = sink_for(settings)
    await sink.open()
    await sink.write(Batch(equity=(EquityRow("QQQ", at(0), 1e9, 1), EquityRow("QQQ", at(1), 2.0, 2))))
    assert [json.loads(line)["code"] for line in dead.read_text().splitlines()] == [
        "22003" if db.kind == "postgres" else "SQLITE_CONSTRAINT_CHECK"
    ]
    started = time.perf_counter()
    with db.unavailable(), pytest.raises(SinkUnavailable):
        await sink.write(make_batch())
    waited = time.perf_counter() - started
    print(f"{db.kind}: SINK_TIMEOUT=1 -> gave up after {waited:.2f} s (defaults: Postgres 30 s, SQLite 5 s)")
    assert waited < 4
    await sink.aclose()


# --- PostgreSQL ---------------------------------------------------------------------------------


def test_migration_files_are_found() -> None:
    files = sorted(p.name for p in migrations_dir().glob("*.sql"))
    assert files == [
        "20251015151016_create_equity_and_indicators_tables.sql",
        "20251019000000_create_option_prices_table.sql",
        "20251120000000_create_stream_gaps_table.sql",
        "20261207000000_create_volume_checks_table.sql",
    ]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_postgres_tables_columns_constraints_and_indexes(db: Db, sink: Sink) -> None:
    columns = db.query(
        "SELECT table_name, column_name, format_type(atttypid, atttypmod), attnotnull"
        " FROM information_schema.columns JOIN pg_attribute"
        " ON attrelid = ('public.' || table_name)::regclass AND attname = column_name"
        " WHERE table_schema = 'public' AND table_name IN ('equity_data', 'indicators')"
        " ORDER BY table_name, ordinal_position"
    )
    tz, num = "timestamp with time zone", "numeric(10,2)"
    common = [("id", "bigint", True), ("ticker", "character varying(10)", True), ("timestamp", tz, True)]
    assert [c[1:] for c in columns if c[0] == "equity_data"] == [
        *common, ("price", num, True), ("volume", "bigint", True), ("created_at", tz, False)
    ]  # fmt: skip
    assert [c[1:] for c in columns if c[0] == "indicators"] == [
        *common, ("sma9", num, False), ("vwap", num, False), ("created_at", tz, False)
    ]  # fmt: skip
    defaults = db.query(
        "SELECT table_name, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name IN ('created_at') ORDER BY 1"
    )
    assert {d[1] for d in defaults} == {"now()"} and len(defaults) == 5
    constraints = db.query(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE contype IN ('u', 'c') AND connamespace = 'public'::regnamespace ORDER BY 1, 2"
    )
    assert constraints == [
        ("equity_data", 'UNIQUE (ticker, "timestamp")'),
        ("indicators", 'UNIQUE (ticker, "timestamp")'),
        ("option_prices", "CHECK (((option_type)::text = ANY ((ARRAY['CALL'::character varying, "
         "'PUT'::character varying])::text[])))"),
        ("option_prices", 'UNIQUE (ticker, "timestamp", option_type, strike_price, expiration_date)'),
        ("stream_gaps", "CHECK (((cause)::text = ANY ((ARRAY['restart'::character varying, "
         "'disconnect'::character varying, 'stale'::character varying, "
         "'sink'::character varying])::text[])))"),
        ("stream_gaps", "CHECK ((ended_at >= started_at))"),
        ("stream_gaps", "UNIQUE (ticker, started_at)"),
        *[(t, c) for t, c in constraints if t == "volume_checks"],  # tests/test_migrations.py
    ]  # fmt: skip
    indexes = db.query("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    for table in ("equity_data", "indicators", "option_prices"):
        assert any(t == table and 'btree (ticker, "timestamp" DESC)' in d for t, d in indexes), table
    assert any(t == "stream_gaps" and "btree (ticker, started_at DESC)" in d for t, d in indexes)


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_migrations_are_safe_to_apply_twice(db: Db) -> None:
    with psycopg.connect(db.url) as conn:
        for _ in range(2):
            for path in sorted(migrations_dir().glob("*.sql")):
                conn.execute(path.read_bytes())
            conn.commit()
    first = db.sink()
    await first.open()
    await first.write(make_batch())
    await first.aclose()
    db.query("DROP TABLE option_prices")  # a missing table makes open() apply every file again
    again = db.sink()
    await again.open()
    await again.aclose()
    assert len(db.rows("equity_data")) == 3
    assert db.query("SELECT count(*) FROM option_prices") == [(0,)]


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_a_missing_table_after_open_is_rejected_with_its_sqlstate(db: Db, sink: Sink) -> None:
    db.query("DROP TABLE indicators")
    with pytest.raises(SinkRejected, match=r"\[42P01\]"):
        await sink.write(make_batch())
    assert db.rows("equity_data") == []


@pytest.mark.parametrize(("rows", "bad"), [(1000, 0), (1000, 1), (1000, 3), (1000, 30), (200, 200)])
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_postgres_isolation_costs_round_trips_per_bad_row_not_per_row(
    db: Db, rows: int, bad: int
) -> None:
    batch = make_batch(n=rows)
    step = rows // bad if bad else 0
    wrong = {i * step for i in range(bad)}
    equity = tuple(EquityRow("QQQ", at(i), 1e9, 1) if i in wrong else r for i, r in enumerate(batch.equity))
    sink = db.sink()
    await sink.open()
    assert isinstance(sink, PostgresSink)
    started = time.perf_counter()
    await sink.write(Batch(equity, batch.indicators))
    elapsed = time.perf_counter() - started
    await sink.aclose()
    levels = math.ceil(math.log2(rows))
    print(
        f"postgres: {rows} rows, {bad} bad -> {len(db.rows('equity_data'))} written, "
        f"{len(db.letters())} dead letters, {sink.round_trips} round trips, {elapsed * 1000:.0f} ms"
    )
    assert len(db.rows("equity_data")) == rows - bad and len(db.letters()) == bad
    assert sink.round_trips == 1 if not bad else sink.round_trips <= 3 + 2 * bad * levels


async def test_unreachable_postgres_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = PostgresSink(f"postgresql://streamer:s3cret@127.0.0.1:{port}/market", timeout=5)
    assert sink.name == f"postgres:127.0.0.1:{port}/market"
    with pytest.raises(SinkUnavailable, match=f"127.0.0.1:{port}") as caught:
        await sink.open()
    assert "s3cret" not in str(caught.value)
    await sink.aclose()


async def test_unknown_database_is_rejected(pg_cluster: PgCluster) -> None:
    sink = PostgresSink(pg_cluster.dsn("no_such_database"))
    with pytest.raises(SinkRejected, match="does not exist"):
        await sink.open()


@pytest.mark.parametrize("how", ["terminate_backend", "restart_server"])
@pytest.mark.parametrize("db", ["postgres"], indirect=True)
async def test_postgres_reconnects_after_losing_the_connection(
    db: Db, sink: Sink, pg_cluster: PgCluster, how: str
) -> None:
    await sink.write(make_batch(n=1))
    if how == "restart_server":
        pg_cluster.restart()
    else:
        killed = db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'streaming-service'"
        )
        assert killed == [(True,)]
    with contextlib.suppress(SinkUnavailable):  # the loss may be noticed here; a caller retries
        await sink.write(make_batch(n=2))
    await sink.write(make_batch(n=3))
    assert len(db.rows("equity_data")) == 3


# --- SQLite -------------------------------------------------------------------------------------


async def test_sqlite_schema_and_storage_format(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.db"
    sink = SQLiteSink(path)
    await sink.open()
    await sink.write(make_batch(n=1))
    await sink.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT timestamp, price, volume FROM equity_data").fetchall() == [
            ("2026-11-24T14:30:00.000+00:00", 500.0, 100)
        ]
        for table in ("equity_data", "indicators", "option_prices"):
            indexes = conn.execute(f"PRAGMA index_list({table})").fetchall()
            keys = {
                index[1]: [(c[2], c[3]) for c in conn.execute(f"PRAGMA index_xinfo({index[1]})") if c[5]]
                for index in indexes
            }
            assert [("ticker", 0), ("timestamp", 1)] in keys.values(), table  # (ticker, timestamp DESC)
            unique = [keys[i[1]] for i in indexes if i[2]]
            assert [[c for c, _ in u][:2] for u in unique] == [["ticker", "timestamp"]], table
    conn.close()


async def test_sqlite_locked_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    sink = SQLiteSink(path, busy_timeout=0.05)
    await sink.open()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(SinkUnavailable, match="locked"):
        await sink.write(make_batch())
    other.execute("ROLLBACK")
    other.close()
    await sink.write(make_batch())
    await sink.aclose()


# --- sink_from_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "name"),
    [
        ("sqlite:///data/demo.db", SQLiteSink, "sqlite:data/demo.db"),
        ("sqlite:////var/lib/streamer/demo.db", SQLiteSink, "sqlite:/var/lib/streamer/demo.db"),
        ("postgresql://u:pw@db.example.com:6543/pg", PostgresSink, "postgres:db.example.com:6543/pg"),
        ("postgres://u@127.0.0.1/market", PostgresSink, "postgres:127.0.0.1:5432/market"),
    ],
)
def test_sink_from_url_accepts(url: str, kind: type, name: str) -> None:
    sink = sink_from_url(url)
    assert isinstance(sink, kind)
    assert sink.name == name
    if isinstance(sink, SQLiteSink):
        assert sink.path == Path(name.removeprefix("sqlite:"))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://u:hunter2@db/x", "mysql://u:***@db/x"),
        ("sqlite://demo.db", "sqlite://demo.db"),
        ("sqlite:///", "sqlite:///"),
        ("data/demo.db", "data/demo.db"),
        ("", "''"),
        ("postgresql://u:hunter2@db/x?nonsense=1", "postgresql://u:***@db/x?nonsense=1"),
    ],
)
def test_sink_from_url_refuses(url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sink_from_url(url)
    message = str(caught.value)
    assert shown in message and "sqlite:///" in message and "postgresql://" in message
    assert "hunter2" not in message


# --- option_prices ----------------------------------------------------------------------------------


def option_row(
    strike: float = 500.0, *, bid: float | None = 1.25, at_ms: int = 0, kind: str = "CALL"
) -> OptionRow:
    return OptionRow(
        "QQQ", at(at_ms), kind, strike, date(2026, 11, 27),  # type: ignore[arg-type]
        last_price=1.3, bid=bid, ask=1.35, volume=120, open_interest=4500, implied_volatility=0.2345,
        delta=0.5123, gamma=0.0456, theta=-0.1234, vega=0.2011,
        option_symbol=f"QQQ   261127{kind[0]}{int(strike * 1000):08d}",
    )  # fmt: skip


def option_rows(db: Db) -> list[Row]:
    raw = db.query(
        "SELECT option_type, strike_price, expiration_date, bid, ask, volume, open_interest, "
        "implied_volatility, delta, theta, option_symbol FROM option_prices ORDER BY 1, 2"
    )
    return [
        (r[0], _as_decimal(r[1]), str(r[2]), _as_decimal(r[3]), _as_decimal(r[4]), r[5], r[6],
         _as_decimal(r[7]), _as_decimal(r[8]), _as_decimal(r[9]), r[10])
        for r in raw
    ]  # fmt: skip


async def test_option_rows_upsert_on_their_five_column_key(db: Db, sink: Sink) -> None:
    rows = (option_row(500.0), option_row(501.0), option_row(500.0, kind="PUT"))
    await sink.write(Batch(options=rows))
    await sink.write(Batch(options=rows))  # replay
    await sink.write(Batch(options=(option_row(501.0, bid=None),)))  # a later snapshot value wins
    stored = option_rows(db)
    assert len(stored) == 3
    call_500, call_501, put_500 = stored
    assert call_500 == (
        "CALL", Decimal("500"), "2026-11-27", Decimal("1.25"), Decimal("1.35"), 120, 4500,
        Decimal("0.2345"), Decimal("0.5123"), Decimal("-0.1234"), "QQQ   261127C00500000",
    )  # fmt: skip
    assert call_501[3] is None
    assert put_500[0] == "PUT"


async def test_option_rows_with_nan_or_a_bad_type_are_dead_lettered(db: Db, sink: Sink) -> None:
    nan = replace(option_row(), delta=float("nan"))
    bad_type = replace(option_row(502.0), option_type="BOTH")  # type: ignore[arg-type]
    await sink.write(Batch(options=(nan, option_row(501.0), bad_type)))
    assert [r[1] for r in option_rows(db)] == [Decimal("501")]
    letters = db.letters()
    print(f"{db.kind}: option letters {[(x['code'], x['error']) for x in letters]}")
    assert [x["code"] for x in letters] == [
        "non-finite", "23514" if db.kind == "postgres" else "SQLITE_CONSTRAINT_CHECK"
    ]  # fmt: skip
    assert letters[0]["row"]["delta"] == "nan" and letters[0]["row"]["expiration_date"] == "2026-11-27"
