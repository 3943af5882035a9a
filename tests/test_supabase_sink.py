"""The Supabase sink: real supabase-py client → PostgREST double → real Postgres with Supabase's
roles, grants, RLS and migrations."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from pg_cluster import PgCluster, fresh_database
from polling import wait_until
from postgrest_double import PostgrestDouble, Recorded, make_key

from streaming_service.batcher import Batcher
from streaming_service.check import CheckResult, check_database
from streaming_service.config import load_settings
from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow, Tick
from streaming_service.pipeline import Pipeline, RowPair
from streaming_service.simulator import SimulatedMarket
from streaming_service.sinks import sink_for
from streaming_service.sinks.supabase import SupabaseSink

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


@pytest.fixture
def double(supabase_dsn: str) -> Iterator[PostgrestDouble]:
    with PostgrestDouble(supabase_dsn) as server:
        yield server


@pytest.fixture
async def sink(double: PostgrestDouble, tmp_path: Path) -> AsyncIterator[SupabaseSink]:
    sink = SupabaseSink(
        double.url, make_key("service_role"), dead_letter_path=tmp_path / "dead.jsonl", timeout=1.0
    )
    await sink.open()
    yield sink
    await sink.aclose()


def rows(count: int, *, start: datetime = T0, price: float = 500.0) -> Batch:
    stamps = [start + timedelta(seconds=i) for i in range(count)]
    return Batch(
        equity=tuple(EquityRow("QQQ", ts, price + i / 100, 100 + i) for i, ts in enumerate(stamps)),
        indicators=tuple(
            IndicatorRow("QQQ", ts, None if i < 3 else price, price) for i, ts in enumerate(stamps)
        ),
    )


def table_totals(dsn: str) -> dict[str, tuple[int, int]]:
    """(row count, distinct keys) per table, and Σ volume under key 'volume'."""
    with psycopg.connect(dsn) as conn:
        out = {}
        for table in ("equity_data", "indicators"):
            found = conn.execute(
                f"SELECT count(*), count(DISTINCT (ticker, timestamp)) FROM {table}".encode()
            ).fetchone()
            assert found is not None
            out[table] = (int(found[0]), int(found[1]))
        volume = conn.execute("SELECT coalesce(sum(volume), 0) FROM equity_data").fetchone()
        assert volume is not None
        out["volume"] = (int(volume[0]), 0)
        return out


def columns(request: Recorded) -> set[str]:
    """The `columns=` query parameter as a set (supabase-py sends it in random order)."""
    return {c.strip('"') for c in request.query["columns"][0].split(",")}


async def test_request_contract_is_pinned(sink: SupabaseSink, double: PostgrestDouble) -> None:
    double.requests.clear()
    await sink.write(rows(2))
    posts = [r for r in double.requests if r.method == "POST"]
    assert [r.path for r in posts] == ["/rest/v1/equity_data", "/rest/v1/indicators"]
    equity, indicators = posts
    assert equity.query["on_conflict"] == ["ticker,timestamp"]
    assert {c.strip('"') for c in equity.query["columns"][0].split(",")} == {
        "ticker",
        "timestamp",
        "price",
        "volume",
    }
    assert {c.strip('"') for c in indicators.query["columns"][0].split(",")} == {
        "ticker",
        "timestamp",
        "sma9",
        "vwap",
    }
    for request in posts:
        assert request.headers["prefer"] == "return=minimal,resolution=merge-duplicates"
        assert request.headers["apikey"] == make_key("service_role")
        assert request.headers["authorization"] == f"Bearer {make_key('service_role')}"
        assert request.headers["content-profile"] == "public"
    assert equity.body == [
        {"ticker": "QQQ", "timestamp": "2026-11-24T14:30:00+00:00", "price": 500.0, "volume": 100},
        {"ticker": "QQQ", "timestamp": "2026-11-24T14:30:01+00:00", "price": 500.01, "volume": 101},
    ]
    assert indicators.body[0] == {
        "ticker": "QQQ",
        "timestamp": "2026-11-24T14:30:00+00:00",
        "sma9": None,
        "vwap": 500.0,
    }


async def test_a_simulated_session_lands_exactly(sink: SupabaseSink, supabase_dsn: str) -> None:
    market = SimulatedMarket(["QQQ"], seed=9, trades_per_second=1.0)
    market.events_until(3_600.0)
    emitted: list[RowPair] = []
    pipeline = Pipeline(("QQQ",), emitted.append, resolution_s=1)
    for trade in market.trades:
        stamp = datetime.fromtimestamp(trade.timestamp_ms / 1000, UTC)
        pipeline.on_tick(Tick(trade.symbol, stamp, trade.price, trade.size))
    emitted.extend(pipeline.drain())
    for start in range(0, len(emitted), 100):
        chunk = emitted[start : start + 100]
        await sink.write(Batch(tuple(e for e, _ in chunk), tuple(i for _, i in chunk)))
    await sink.write(Batch(tuple(e for e, _ in emitted[:50]), tuple(i for _, i in emitted[:50])))  # a replay
    totals = table_totals(supabase_dsn)
    assert totals["equity_data"] == (len(emitted), len(emitted))
    assert totals["indicators"] == (len(emitted), len(emitted))
    assert totals["volume"][0] == market.total_volume("QQQ") > 0


async def test_anon_key_is_refused_with_a_clear_fatal_error(
    double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    anon = SupabaseSink(double.url, make_key("anon"), dead_letter_path=tmp_path / "dead.jsonl")
    await anon.open()  # anon may read: the tables are visible
    with pytest.raises(SinkRejected, match="SUPABASE_SERVICE_ROLE_KEY") as refused:
        await anon.write(rows(3))
    await anon.aclose()
    assert "42501" in str(refused.value)
    assert make_key("anon") not in str(refused.value) + repr(anon)
    assert table_totals(supabase_dsn)["equity_data"] == (0, 0)


async def test_key_signed_with_another_secret_is_refused(double: PostgrestDouble, tmp_path: Path) -> None:
    forged = SupabaseSink(double.url, make_key("service_role", "x" * 40), dead_letter_path=tmp_path / "d")
    with pytest.raises(SinkRejected, match=r"PGRST301.*SUPABASE_SERVICE_ROLE_KEY"):
        await forged.open()
    await forged.aclose()


async def test_missing_tables_say_to_apply_the_migrations(
    supabase_cluster: PgCluster, tmp_path: Path
) -> None:
    with fresh_database(supabase_cluster) as empty, PostgrestDouble(empty) as bare:
        sink = SupabaseSink(bare.url, make_key("service_role"), dead_letter_path=tmp_path / "d")
        with pytest.raises(SinkRejected, match=r"PGRST205.*apply supabase/migrations"):
            await sink.open()
        await sink.aclose()


async def test_one_bad_row_is_dead_lettered_and_the_rest_written(
    sink: SupabaseSink, supabase_dsn: str, tmp_path: Path
) -> None:
    batch = rows(9)
    bad = EquityRow("QQQ", T0 + timedelta(seconds=4), 123_456_789.0, 5)  # overflows DECIMAL(10, 2)
    equity = list(batch.equity)
    equity[4] = bad
    await sink.write(Batch(tuple(equity), batch.indicators))

    totals = table_totals(supabase_dsn)
    assert totals["equity_data"] == (8, 8)
    assert totals["indicators"] == (9, 9)
    letters = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert len(letters) == 1 and sink.dead_letters.count == 1
    assert letters[0]["table"] == "equity_data"
    assert letters[0]["code"] == "22003"
    assert letters[0]["row"]["price"] == 123_456_789.0
    assert letters[0]["row"]["timestamp"] == bad.timestamp.isoformat()


async def test_non_finite_values_are_dead_lettered_without_a_request(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    nan_row = IndicatorRow("QQQ", T0, float("nan"), 500.0)
    batch = rows(3)
    await sink.write(Batch(batch.equity, (nan_row, *batch.indicators[1:])))
    assert table_totals(supabase_dsn)["indicators"] == (2, 2)
    letter = json.loads((tmp_path / "dead.jsonl").read_text())
    assert letter["code"] == "non-finite"


@pytest.mark.parametrize("fault", ["503", "timeout", "close"])
async def test_unavailable_is_retried_until_written_without_loss_or_duplicates(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str, fault: str
) -> None:
    with pytest.raises(SinkUnavailable):
        double.fail_next(1, fault)  # type: ignore[arg-type]
        await sink.write(rows(5))

    double.fail_next(3, fault)  # type: ignore[arg-type]
    batcher = Batcher(sink, size=5, interval=3600, max_retry_wait=0.05)
    task = asyncio.create_task(batcher.run())
    for equity, indicator in zip(rows(20).equity, rows(20).indicators, strict=True):
        batcher.add((equity, indicator))
    await wait_until(lambda: batcher.stats.rows_written == 40)  # 20 equity + 20 indicator rows
    await batcher.close(grace=30)
    await task
    assert batcher.stats.write_errors >= 3
    totals = table_totals(supabase_dsn)
    assert totals["equity_data"] == (20, 20)
    assert totals["indicators"] == (20, 20)
    assert totals["volume"][0] == sum(100 + i for i in range(20))


async def test_a_retry_does_not_resend_tables_already_written(
    sink: SupabaseSink, double: PostgrestDouble
) -> None:
    batch = rows(4)
    double.fail_next(1, "503", table="indicators")
    with pytest.raises(SinkUnavailable, match="indicators"):
        await sink.write(batch)
    double.requests.clear()
    await sink.write(batch)
    assert [r.path for r in double.requests] == ["/rest/v1/indicators"]


# --- `check` against the REST API ------------------------------------------------------------------


async def rest_check(url: str, key: str) -> list[CheckResult]:
    settings = load_settings(supabase_url=url, supabase_service_role_key=key, database_url=None)
    return await check_database(settings)


async def test_check_passes_with_the_service_key_and_writes_nothing(
    double: PostgrestDouble, supabase_dsn: str
) -> None:
    results = await rest_check(double.url, make_key("service_role"))
    assert [(r.ok, r.warn) for r in results] == [(True, False)] * 6, [r.line() for r in results]
    assert results[-1].name == "table volume_checks"
    with psycopg.connect(supabase_dsn) as conn:
        for table in ("equity_data", "indicators", "option_prices", "stream_gaps", "volume_checks"):
            assert conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone() == (0,)


async def test_check_names_the_key_when_it_cannot_write(double: PostgrestDouble) -> None:
    results = await rest_check(double.url, make_key("anon"))
    tables = [r for r in results if r.name.startswith("table")]
    assert len(tables) == 5 and not any(r.ok for r in tables)
    assert all("42501" in r.detail and "SUPABASE_SERVICE_ROLE_KEY" in r.fix for r in tables)


async def test_check_names_the_key_for_a_gateway_401_without_a_code(double: PostgrestDouble) -> None:
    double.answer_next(1, 401, {"message": "Invalid API key"})
    results = {r.name: r for r in await rest_check(double.url, make_key("service_role"))}
    refused = results["table equity_data"]
    assert not refused.ok and "Invalid API key" in refused.detail
    assert "SUPABASE_SERVICE_ROLE_KEY" in refused.fix and "migrations" not in refused.fix
    assert results["table indicators"].ok


async def test_check_reports_a_missing_unique_key(double: PostgrestDouble, supabase_dsn: str) -> None:
    with psycopg.connect(supabase_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE indicators DROP CONSTRAINT indicators_ticker_timestamp_key")
    results = {r.name: r for r in await rest_check(double.url, make_key("service_role"))}
    assert results["table indicators"].ok is False
    assert "42P10" in results["table indicators"].detail
    assert "migrations" in results["table indicators"].fix
    assert results["table equity_data"].ok and results["table option_prices"].ok


async def test_check_reports_missing_tables_and_an_unreachable_project(
    supabase_cluster: PgCluster,
) -> None:
    with fresh_database(supabase_cluster) as empty, PostgrestDouble(empty) as bare:
        results = await rest_check(bare.url, make_key("service_role"))
        url = bare.url
    assert [r.ok for r in results] == [True, False, False, False, True, True]
    assert all("PGRST205" in r.detail for r in results[1:4])
    assert results[4].warn and "supabase db push" in results[4].fix
    assert results[5].warn and "create_volume_checks_table.sql" in results[5].fix
    gone = await rest_check(url, make_key("service_role"))  # the double has stopped
    assert len(gone) == 1 and not gone[0].ok and "unreachable" in gone[0].detail


# --- answers without a PostgREST `code`: classified by HTTP status first ---------------------------


async def test_gateway_401_without_code_names_the_key_not_the_migrations(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str
) -> None:
    double.answer_next(1, 401, {"message": "Invalid API key"})
    with pytest.raises(SinkRejected) as refused:
        await sink.write(rows(3))
    message = str(refused.value)
    print(f"401 without code -> {type(refused.value).__name__}: {message}")
    assert "SUPABASE_SERVICE_ROLE_KEY" in message and "Invalid API key" in message
    assert "migrations" not in message
    assert table_totals(supabase_dsn)["equity_data"] == (0, 0)


async def test_rate_limit_429_is_unavailable_with_its_retry_after(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str
) -> None:
    double.answer_next(1, 429, {"message": "Too many requests"}, headers={"Retry-After": "2"})
    with pytest.raises(SinkUnavailable) as waited:
        await sink.write(rows(3))
    print(f"429 Retry-After: 2 -> {type(waited.value).__name__} retry_after={waited.value.retry_after}")
    assert waited.value.retry_after == 2.0
    assert "429" in str(waited.value)
    await sink.write(rows(3))  # the replay goes through
    assert table_totals(supabase_dsn)["equity_data"] == (3, 3)


async def test_proxy_503_html_is_unavailable(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str
) -> None:
    page = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"
    double.answer_next(1, 503, page, headers={"Content-Type": "text/html"})
    with pytest.raises(SinkUnavailable) as waited:
        await sink.write(rows(3))
    print(f"503 text/html -> {type(waited.value).__name__}: {waited.value}")
    assert waited.value.retry_after is None and "503" in str(waited.value)
    await sink.write(rows(3))
    assert table_totals(supabase_dsn)["equity_data"] == (3, 3)


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (401, {"message": "Invalid API key"}, {}),
        (429, {"message": "Too many requests"}, {"Retry-After": "0"}),
        (503, "<html><body>503 Service Unavailable</body></html>", {"Content-Type": "text/html"}),
        (502, b"", {}),
        (503, {"message": "upstream connect error"}, {}),
    ],
)
async def test_the_batcher_keeps_going_through_answers_without_a_code(
    sink: SupabaseSink,
    double: PostgrestDouble,
    supabase_dsn: str,
    status: int,
    body: object,
    headers: dict[str, str],
) -> None:
    """Only a refused key stops the writer (SinkRejected); rate limits and proxies are waited out."""
    double.answer_next(3, status, body, headers=headers)  # type: ignore[arg-type]
    batcher = Batcher(sink, size=5, interval=3600, max_retry_wait=0.05)
    task = asyncio.create_task(batcher.run())
    for equity, indicator in zip(rows(10).equity, rows(10).indicators, strict=True):
        batcher.add((equity, indicator))
    if status == 401:
        with pytest.raises(SinkRejected, match="SUPABASE_SERVICE_ROLE_KEY"):
            await task
        print(f"{status}: writer stopped (fatal) after {len(double.requests)} requests")
        return
    await wait_until(lambda: batcher.stats.rows_written == 20)
    await batcher.close(grace=30)
    await task
    print(f"{status}: {batcher.stats.write_errors} failed writes retried, then all 20 rows written")
    assert batcher.stats.write_errors == 3
    assert table_totals(supabase_dsn)["equity_data"] == (10, 10)


async def test_dead_letters_are_written_once_when_a_batch_is_replayed(
    sink: SupabaseSink, double: PostgrestDouble, supabase_dsn: str, tmp_path: Path
) -> None:
    batch = rows(8)
    equity = list(batch.equity)
    equity[2] = EquityRow("QQQ", equity[2].timestamp, 987_654_321.0, 1)  # 22003 in DECIMAL(10, 2)
    bad = Batch(tuple(equity), batch.indicators)
    double.fail_next(1, "503", table="indicators")
    with pytest.raises(SinkUnavailable):
        await sink.write(bad)  # equity written (bad row dead-lettered), indicators refused
    await sink.write(bad)  # the batcher's retry: same batch object
    await sink.write(Batch(tuple(equity), batch.indicators))  # rebuilt equal batch (e.g. from the spool)
    lines = (tmp_path / "dead.jsonl").read_text().splitlines()
    print(f"3 writes of a batch with 1 bad row -> {len(lines)} dead-letter line(s)")
    assert len(lines) == 1 and sink.dead_letters.count == 1
    assert table_totals(supabase_dsn)["equity_data"] == (7, 7)


async def test_sink_for_passes_the_dead_letter_path_and_the_timeout(
    double: PostgrestDouble, tmp_path: Path
) -> None:
    dead = tmp_path / "configured" / "dead.jsonl"
    settings = load_settings(
        supabase_url=double.url,
        supabase_service_role_key=make_key("service_role"),
        database_url=None,
        dead_letter_path=dead,
        sink_timeout=1,
    )
    sink = sink_for(settings)
    await sink.open()
    await sink.write(Batch(equity=(EquityRow("QQQ", T0, 1e9, 1),)))
    assert json.loads(dead.read_text())["code"] == "22003"
    double.fail_next(1, "timeout")
    started = time.perf_counter()
    with pytest.raises(SinkUnavailable, match="Timeout"):
        await sink.write(rows(2))
    waited = time.perf_counter() - started
    print(f"supabase: SINK_TIMEOUT=1 -> gave up after {waited:.2f} s (the sink's default: 10 s)")
    assert waited < 4
    await sink.aclose()
