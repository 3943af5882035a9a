"""`streaming-service verify` end to end: the command in a subprocess, against the simulator's
price history and a SQLite or Postgres database holding a day with a known hole and a known wrong
minute."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
import pytest
from harness import command_env

from streaming_service.indicators import EXCHANGE_TZ
from streaming_service.models import Batch, EquityRow
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file
from streaming_service.simulator.market import latest_weekday
from streaming_service.sinks import sink_from_url

RUNNER = Path(__file__).with_name("verify_process.py")
#: A weekday a week or more ago: its session has closed whatever today is (the calendar is ours).
DAY = latest_weekday(datetime.now(EXCHANGE_TZ).date() - timedelta(days=7))
HOLE = time(10, 0)  # no row at all: filled from its candle
WRONG = time(11, 0)  # 7 shares too many: reported, not changed


def at(moment: time, day: date = DAY) -> datetime:
    return datetime.combine(day, moment, EXCHANGE_TZ).astimezone(UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def trade_rows(market: SimulatedMarket) -> list[EquityRow]:
    """A row per trade timestamp (ROW_RESOLUTION 0), but none in the HOLE minute and 7 shares
    more in the first row of the WRONG minute."""
    volume: dict[int, tuple[float, int]] = {}
    for trade in market.trades:
        if trade.kind == "trade":
            _, shares = volume.get(trade.timestamp_ms, (0.0, 0))
            volume[trade.timestamp_ms] = (trade.price, shares + trade.size)
    hole, wrong = ms(at(HOLE)), ms(at(WRONG))
    rows, wronged = [], False
    for stamp, (price, shares) in sorted(volume.items()):
        if hole <= stamp < hole + 60_000:
            continue
        if wrong <= stamp < wrong + 60_000 and not wronged:
            shares, wronged = shares + 7, True
        rows.append(EquityRow("QQQ", datetime.fromtimestamp(stamp / 1000, UTC), price, shares))
    return rows


@asynccontextmanager
async def simulated_day() -> AsyncIterator[SchwabSimulator]:
    """The simulator with DAY's whole session already traded (its price history serves it)."""
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=0.2, session_date=DAY)
    market.events_until(market.session_seconds)
    async with SchwabSimulator(market) as sim:
        yield sim


class Setup:
    """The files `verify` reads in `tmp_path`: token, the calendar cache (DAY and a week later full
    sessions, none between), and its environment."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        write_token_file(tmp_path / "token.json")
        later = DAY + timedelta(days=7)
        sessions = [[at(time(9, 30), d).timestamp(), at(time(16, 0), d).timestamp()] for d in (DAY, later)]
        (tmp_path / "market_hours.json").write_text(json.dumps(sessions))
        self.env = command_env(
            DATABASE_URL=database_url, STREAM_TICKER="QQQ", SCHWAB_APP_KEY="key", SCHWAB_APP_SECRET="secret",
            SCHWAB_TOKEN_PATH=str(tmp_path / "token.json"), SPOOL_PATH=str(tmp_path / "spool.db"),
            DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"), HEALTH_PORT="0", ROW_RESOLUTION="0",
        )  # fmt: skip

    async def verify(self, sim: SchwabSimulator, *args: str) -> subprocess.CompletedProcess[str]:
        """The command, while this event loop serves the simulator."""
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, str(RUNNER), sim.api_base_url, *args],
            cwd=self.tmp_path, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        print(done.stdout, done.stderr[-2000:])
        return done


async def record(url: str, rows: list[EquityRow], tmp_path: Path) -> None:
    sink = sink_from_url(url, dead_letter_path=tmp_path / "dead.jsonl")
    await sink.open()
    await sink.write(Batch(equity=tuple(rows)))
    await sink.aclose()


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
    with psycopg.connect(url) as conn:
        return conn.execute(psycopg.sql.SQL(sql), params).fetchall()  # type: ignore[arg-type, unused-ignore]


def execute(url: str, sql: str, *params: Any) -> None:
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as lite, lite:
            lite.execute(sql.replace("%s", "?"), params)
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL(sql), params)  # type: ignore[arg-type, unused-ignore]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_verify_fills_the_hole_reports_the_wrong_minute_and_stores_the_summary(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'rows.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_dsn")
    setup = Setup(tmp_path, url)
    async with simulated_day() as sim:
        candles = sim.market.candles("QQQ")
        truth = sum(c.volume for c in candles)
        hole = next(c for c in candles if c.start_ms == ms(at(HOLE)))
        rows = trade_rows(sim.market)
        await record(url, rows, tmp_path)
        assert sum(r.volume for r in rows) == truth - hole.volume + 7

        first = await setup.verify(sim, "--day", DAY.isoformat())
        assert first.returncode == 1, first.stderr
        header, *listed = first.stdout.splitlines()
        assert header == (
            f"✗ QQQ {DAY}: 389/390 minutes match, {truth + 7:,} of {truth:,} shares recorded; "
            "worst 11:00 New York (+7 shares); 1 minute filled"
        )
        wrong_candle = next(c for c in candles if c.start_ms == ms(at(WRONG)))
        assert listed == [
            f"    11:00: recorded {wrong_candle.volume + 7:,}, candles {wrong_candle.volume:,} (+7)"
        ]
        assert first.stderr.splitlines()[-1] == (
            "error: minutes differ from price history for QQQ (listed above)"
        )
        minute = _bounds(url, at(HOLE), at(HOLE) + timedelta(minutes=1))
        filled = query(url, "SELECT price, volume FROM equity_data WHERE ticker = 'QQQ' AND timestamp >= %s "
                       "AND timestamp < %s", *minute)  # fmt: skip
        assert [(float(p), v) for p, v in filled] == [(hole.close, hole.volume)]
        stored = query(url, "SELECT day, minutes_checked, minutes_matching, shares_recorded, shares_candles, "
                       "worst_minute_diff, minutes_filled FROM volume_checks")  # fmt: skip
        assert [(str(r[0]), *r[1:]) for r in stored] == [(DAY.isoformat(), 390, 389, truth + 7, truth, 7, 1)]

        again = await setup.verify(sim, "--day", DAY.isoformat())  # nothing left to fill
        assert again.returncode == 1
        assert again.stdout.splitlines()[0].endswith("worst 11:00 New York (+7 shares)")

        wronged = rows[_first_at(rows, WRONG)].timestamp
        execute(url, "UPDATE equity_data SET volume = volume - 7 WHERE timestamp = %s", _param(url, wronged))
        fixed = await setup.verify(sim, "--day", DAY.isoformat())
        assert fixed.returncode == 0, fixed.stderr
        assert fixed.stdout == f"✓ QQQ {DAY}: 390/390 minutes match, {truth:,} of {truth:,} shares recorded\n"
        assert query(url, "SELECT count(*) FROM volume_checks") == [(1,)]


def _first_at(rows: list[EquityRow], moment: time) -> int:
    return next(i for i, r in enumerate(rows) if r.timestamp >= at(moment))


def _param(url: str, moment: datetime) -> Any:
    """A time as the database compares it (SQLite: the sink's stored text)."""
    from streaming_service.sinks.sqlite import iso_utc

    return iso_utc(moment) if url.startswith("sqlite") else moment


def _bounds(url: str, start: datetime, end: datetime) -> tuple[Any, Any]:
    return _param(url, start), _param(url, end)


async def test_candles_that_disagree_by_a_few_shares_are_reported_not_filled(tmp_path: Path) -> None:
    """A bar vendor's candles off by up to 1 % (the simulator's candle_noise) against rows that hold
    every traded share: the proof reports the differences and changes nothing."""
    url = f"sqlite:///{tmp_path / 'rows.db'}"
    setup = Setup(tmp_path, url)
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=0.2, session_date=DAY, candle_noise=0.01)
    market.events_until(market.session_seconds)
    traded = [t for t in market.trades if t.kind == "trade"]
    rows = [
        EquityRow("QQQ", datetime.fromtimestamp(t.timestamp_ms / 1000, UTC), t.price, t.size) for t in traded
    ]
    await record(url, rows, tmp_path)
    async with SchwabSimulator(market) as sim:
        candles = sum(c.volume for c in sim.market.candles("QQQ"))
        done = await setup.verify(sim, "--day", DAY.isoformat())
    assert done.returncode == 1
    truth = sum(t.size for t in traded)
    assert candles != truth  # the noise moved the total
    header = done.stdout.splitlines()[0]
    matching = int(header.split(": ")[1].split("/")[0])
    assert 0 < matching < 390 and f"{truth:,} of {candles:,} shares recorded" in header
    assert "filled" not in header
    assert query(url, "SELECT count(*), sum(volume) FROM equity_data") == [(len(rows), truth)]


@pytest.mark.parametrize(
    ("day", "message"),
    [
        (DAY + timedelta(days=1), f"verify --day {DAY + timedelta(days=1)}: {DAY + timedelta(days=1)} has no "
         "NYSE session (a holiday or a weekend): pick a trading day"),
        (date(2000, 1, 1), "verify --day 2000-01-01: 2000-01-01 is a Saturday: there is no session to check; "
         "pick a trading day"),
        (date(2999, 1, 1), "verify --day 2999-01-01: the session of 2999-01-01 has not closed yet (or closed "
         "less than 60 s ago): check it after the close"),
    ],
)  # fmt: skip
def test_a_day_without_a_session_exits_2_naming_the_fix(tmp_path: Path, day: date, message: str) -> None:
    """The real command; the calendar holds DAY and a week later, so the day after DAY is not a session."""
    setup = Setup(tmp_path, f"sqlite:///{tmp_path / 'rows.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "streaming_service", "verify", "--day", day.isoformat()],
        cwd=tmp_path, env=setup.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{message}\n")
    assert not (tmp_path / "rows.db").exists()  # nothing opened


def test_a_date_that_is_not_one_exits_2_with_the_form_to_use(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streaming_service", "verify", "--day", "24/11/2026"],
        cwd=tmp_path, env=command_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "streaming-service verify: error: argument --day: '24/11/2026' is not a date; write it as "
        "YYYY-MM-DD, e.g. 2026-11-24"
    )


async def test_rows_waiting_in_the_spool_count_as_recorded_and_are_not_filled_again(tmp_path: Path) -> None:
    """verify_day in process (as the service calls it after the close): the HOLE minute's rows wait
    in the spool, not in the database; filling it from its candle would count its shares twice."""
    from harness import simulator_client

    from streaming_service.sinks import SQLiteSink
    from streaming_service.spool import Spool
    from streaming_service.verify import session_of, verify_day

    sink = SQLiteSink(tmp_path / "rows.db", dead_letter_path=tmp_path / "dead.jsonl")
    spool = Spool(tmp_path / "spool.db", max_bytes=2**30)
    await sink.open()
    await spool.open()
    async with simulated_day() as sim:
        rows = trade_rows(sim.market)
        hole = ms(at(HOLE))
        waiting = [
            t for t in sim.market.trades if t.kind == "trade" and hole <= t.timestamp_ms < hole + 60_000
        ]
        spool.put(EquityRow("QQQ", datetime.fromtimestamp(t.timestamp_ms / 1000, UTC), t.price, t.size)
                  for t in waiting)  # fmt: skip
        await sink.write(Batch(equity=tuple(rows)))
        client = simulator_client(sim, tmp_path)
        session = session_of(DAY, None)
        try:
            without = await verify_day(sink, client, "QQQ", session, row_resolution_s=0, write=False)
            proof = await verify_day(sink, client, "QQQ", session, row_resolution_s=0, spool=spool)
        finally:
            await client.close_async_session()
    await spool.aclose()
    await sink.aclose()
    assert without.check.minutes_filled == 1  # the database alone misses the minute
    assert proof.fills == () and proof.check.minutes_filled == 0
    assert (proof.check.minutes_matching, proof.check.worst_minute_diff) == (389, 7)
    assert "assumed a full session 09:30-16:00" in session.note
