"""`recorded_rows`: what a sink already recorded for a ticker in a window, read back through the
three sinks (Supabase: paged GETs through the PostgREST double, max-rows cap included)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from postgrest_double import PostgrestDouble, make_key
from sink_kinds import Target, target

from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow
from streaming_service.sinks import PostgresSink, SQLiteSink
from streaming_service.sinks.base import RecordedRow
from streaming_service.sinks.supabase import SupabaseSink

__all__ = ["target"]  # the fixture, imported

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def session(count: int, *, ticker: str = "QQQ", start: datetime = T0, step: timedelta = MINUTE,
            indicators: bool = True) -> list[RecordedRow]:  # fmt: skip
    """`count` rows as `recorded_rows` returns them: prices at cents; every third row has no
    indicators row and every fifth an indicators row with no SMA yet."""
    rows: list[RecordedRow] = []
    for i in range(count):
        ts = start + i * step
        equity = EquityRow(ticker, ts, round(500 + i * 0.37, 2), 100 + i)
        indicator = IndicatorRow(ticker, ts, None if i % 5 == 0 else round(499 + i * 0.11, 2), 500.25)
        rows.append((equity, indicator if indicators and i % 3 else None))
    return rows


def as_batch(rows: list[RecordedRow]) -> Batch:
    return Batch(equity=tuple(e for e, _ in rows), indicators=tuple(i for _, i in rows if i is not None))


async def test_the_window_of_one_ticker_ascending_with_its_indicators(target: Target) -> None:
    wanted = session(6)
    before, at_until = session(1, start=T0 - MINUTE), session(1, start=T0 + 6 * MINUTE)
    other = session(6, ticker="SPY")
    shuffled = wanted + before + at_until + other
    random.Random(7).shuffle(shuffled)
    await target.sink.write(as_batch(shuffled))

    found = await target.sink.recorded_rows("QQQ", T0, T0 + 6 * MINUTE)
    assert found == wanted
    assert [i is None for _, i in found] == [True, False, False, True, False, False]
    assert found[5][1] is not None and found[5][1].sma9 is None
    for equity, indicator in found:
        assert equity.timestamp.utcoffset() == timedelta(0)
        assert type(equity.price) is float and type(equity.volume) is int
        assert indicator is None or type(indicator.vwap) is float
        assert indicator is None or indicator.timestamp == equity.timestamp


async def test_prices_come_back_at_the_columns_scale(target: Target) -> None:
    await target.sink.write(Batch(equity=(EquityRow("QQQ", T0, 500.126, 7),),
                                  indicators=(IndicatorRow("QQQ", T0, 499.994, 0.004),)))  # fmt: skip
    assert await target.sink.recorded_rows("QQQ", T0, T0 + MINUTE) == [
        (EquityRow("QQQ", T0, 500.13, 7), IndicatorRow("QQQ", T0, 499.99, 0.0))
    ]


async def test_an_empty_window(target: Target) -> None:
    assert await target.sink.recorded_rows("QQQ", T0, T0 + MINUTE) == []  # nothing recorded yet
    await target.sink.write(as_batch(session(3)))
    assert await target.sink.recorded_rows("QQQ", T0 + 3 * MINUTE, T0 + 9 * MINUTE) == []
    assert await target.sink.recorded_rows("QQQ", T0 + MINUTE, T0 + MINUTE) == []
    assert await target.sink.recorded_rows("SPY", T0, T0 + 9 * MINUTE) == []


async def test_bounds_between_two_stored_times(target: Target) -> None:
    """since is inclusive and until exclusive, to the microsecond (SQLite stores milliseconds)."""
    rows = session(3, step=timedelta(seconds=1))
    await target.sink.write(as_batch(rows))
    half_ms, second = timedelta(microseconds=500), timedelta(seconds=1)
    assert await target.sink.recorded_rows("QQQ", T0 + half_ms, T0 + second) == []
    assert await target.sink.recorded_rows("QQQ", T0 + half_ms, T0 + 2 * second + half_ms) == rows[1:]
    assert await target.sink.recorded_rows("QQQ", T0 - half_ms, T0 + half_ms) == rows[:1]


async def test_more_rows_than_a_page(target: Target) -> None:
    rows = session(2500, step=timedelta(seconds=1))
    await target.sink.write(as_batch(rows))
    if target.double is not None:
        target.double.requests.clear()
    found = await target.sink.recorded_rows("QQQ", T0, T0 + timedelta(hours=1))
    assert found == rows
    if target.double is not None:
        gets = [r for r in target.double.requests if r.method == "GET"]
        print(f"supabase: 2500 rows (+ {sum(i is not None for _, i in rows)} indicators) in {len(gets)} GETs")
        # 2500 equity rows: pages of 1000, 1000, 500 and an empty one; 1667 indicators rows: 3 pages
        assert [r.path.rsplit("/", 1)[1] for r in gets] == ["equity_data"] * 4 + ["indicators"] * 3
        first = gets[0].query
        assert first["ticker"] == ["eq.QQQ"] and first["order"] == ["timestamp.asc"]
        assert first["limit"] == ["1000"] and sorted(first["timestamp"])[0].startswith("gte.")


async def test_naive_bounds_are_refused(target: Target) -> None:
    with pytest.raises(ValueError, match="since"):
        await target.sink.recorded_rows("QQQ", datetime(2026, 11, 24, 14, 30), T0)
    with pytest.raises(ValueError, match="until"):
        await target.sink.recorded_rows("QQQ", T0, datetime(2026, 11, 24, 14, 30))


async def test_a_missing_table_is_rejected(target: Target) -> None:
    await target.sink.write(as_batch(session(2)))
    target.query("DROP TABLE indicators")
    with pytest.raises(SinkRejected, match="indicators") as refused:
        await target.sink.recorded_rows("QQQ", T0, T0 + MINUTE)
    print(f"{target.kind}: {refused.value}")


async def test_unopened_or_closed_sql_sinks_refuse_to_read(tmp_path: Path, postgres_dsn: str) -> None:
    for sink in (SQLiteSink(tmp_path / "x.db"), PostgresSink(postgres_dsn)):
        with pytest.raises(RuntimeError, match="open"):
            await sink.recorded_rows("QQQ", T0, T0 + MINUTE)
        await sink.open()
        await sink.aclose()
        with pytest.raises(RuntimeError, match="aclose"):
            await sink.recorded_rows("QQQ", T0, T0 + MINUTE)


async def test_postgres_locked_table_is_unavailable_then_read(postgres_dsn: str, tmp_path: Path) -> None:
    sink = PostgresSink(postgres_dsn, timeout=0.5, dead_letter_path=tmp_path / "dead.jsonl")
    await sink.open()
    await sink.write(as_batch(session(3)))
    with psycopg.connect(postgres_dsn) as other:
        other.execute("LOCK TABLE indicators IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(SinkUnavailable, match="reading recorded rows"):
            await sink.recorded_rows("QQQ", T0, T0 + 9 * MINUTE)
        other.rollback()
    assert await sink.recorded_rows("QQQ", T0, T0 + 9 * MINUTE) == session(3)  # reconnected
    await sink.aclose()


# --- Supabase ------------------------------------------------------------------------------------


@pytest.fixture
def capped(supabase_dsn: str) -> Iterator[PostgrestDouble]:
    """A project whose max-rows (300) is below the sink's page size (1000)."""
    with PostgrestDouble(supabase_dsn, max_rows=300) as server:
        yield server


async def test_supabase_reads_every_row_when_max_rows_is_below_the_page_size(
    capped: PostgrestDouble, tmp_path: Path
) -> None:
    sink = SupabaseSink(capped.url, make_key("service_role"), dead_letter_path=tmp_path / "dead.jsonl")
    rows = session(1000, step=timedelta(seconds=1))
    await sink.write(as_batch(rows))
    capped.requests.clear()
    assert await sink.recorded_rows("QQQ", T0, T0 + timedelta(hours=1)) == rows
    gets = [r for r in capped.requests if r.method == "GET"]
    print(f"supabase, max-rows 300: 1000 rows in {len(gets)} GETs")
    # 1000 equity rows: 300, 300, 300, 100, empty; 667 indicators rows: 300, 300, 67, empty
    assert len(gets) == 5 + 4
    await sink.aclose()


@pytest.mark.parametrize("target", ["supabase"], indirect=True)
@pytest.mark.parametrize(
    ("status", "headers", "fault"),
    [(503, {}, SinkUnavailable), (429, {"Retry-After": "3"}, SinkUnavailable), (401, {}, SinkRejected)],
)
async def test_supabase_failed_reads_are_classified_as_writes_are(
    target: Target, status: int, headers: dict[str, str], fault: type[Exception]
) -> None:
    assert target.double is not None
    await target.sink.write(as_batch(session(3)))
    target.double.answer_next(1, status, {"message": "no"}, headers=headers, table="indicators")
    with pytest.raises(fault) as caught:
        await target.sink.recorded_rows("QQQ", T0, T0 + 9 * MINUTE)
    if status == 429:
        assert isinstance(caught.value, SinkUnavailable) and caught.value.retry_after == 3.0
    assert await target.sink.recorded_rows("QQQ", T0, T0 + 9 * MINUTE) == session(3)
