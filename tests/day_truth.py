"""Issue 21's "Done when", as one check: what `equity_data` holds of a simulated day against the
simulator's own trade list, per ticker and minute by minute.

- **Σ**: the regular session's recorded volume (rows stamped `open_ms <= ts < close_ms`) equals the
  volume of the session's trades (the opening cross at 09:30:00.000 is in, the closing cross at
  `close_ms` is after-hours, as on Schwab's minute bars), to the share with exact candles
  (`candle_noise=0`); with noise within Σ over the session's minutes of `int(noise * v)`, the most
  the candles can be off (see `SimulatedMarket`).
- **Minute by minute**: at every row boundary B of the session (every minute; every
  ROW_RESOLUTION when rows are longer), the recorded volume of the rows before B is within one
  minute's volume of the trades before B: the larger of the minutes just before and just after B
  (plus the noise bound of the minutes before B).
- No row has a negative volume; `rows_before_open` counts the rows stamped on the session's date
  before the open (a gated service must write none).

`settle` polls the database until the check passes (or a deadline): a service credits a minute from
its candle only once the simulator serves it, and retries pending minutes. Time is the simulator's
clock throughout; nothing here reads the wall clock's date.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as clock_time
from typing import Any

import psycopg

from streaming_service.simulator import SimulatedMarket
from streaming_service.simulator.market import NEW_YORK

__all__ = [
    "MINUTE_MS",
    "TICKERS",
    "DayVerdict",
    "at",
    "compare",
    "read_equity",
    "settle",
    "whole_day",
]

MINUTE_MS = 60_000
TICKERS = ("QQQ", "SPY")

Rows = dict[str, list[tuple[int, int]]]  # ticker → (timestamp ms, volume) of each equity_data row


def whole_day(
    day: date,
    *,
    seed: int,
    session_seconds: float,
    trades_per_second: float = 1.0,
    candle_noise: float = 0.0,
    tickers: Iterable[str] = TICKERS,
) -> SimulatedMarket:
    """A whole simulated trading day on `day`: pre-market from 04:00 (TOTAL_VOLUME counting from
    the morning reset), opening cross at 09:30:00.000, a regular session of `session_seconds`
    (a full day is 23,400: 16:00), closing cross, 4 hours of after-hours."""
    return SimulatedMarket(
        list(tickers),
        seed=seed,
        session_date=day,
        session_seconds=session_seconds,
        trades_per_second=trades_per_second,
        extended_hours=True,
        candle_noise=candle_noise,
    )


def at(day: date, hour: int, minute: int = 0, second: float = 0.0) -> float:
    """Epoch seconds of that New York time of `day`."""
    whole = int(second)
    moment = datetime.combine(day, clock_time(hour, minute, whole), NEW_YORK)
    return moment.timestamp() + (second - whole)


def hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, NEW_YORK).strftime("%H:%M:%S")


def read_equity(url: str) -> Rows | None:
    """Every equity_data row by ticker, oldest first; None while the database cannot be read
    (server down, table not created yet)."""
    query = "SELECT ticker, timestamp, volume FROM equity_data ORDER BY ticker, timestamp"
    try:
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///"), timeout=5) as conn:
                records: list[tuple[Any, ...]] = conn.execute(query).fetchall()
        else:
            with psycopg.connect(url, connect_timeout=2) as pg:
                records = pg.execute(query).fetchall()
    except (sqlite3.OperationalError, psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return None
    rows: Rows = defaultdict(list)
    for ticker, stamp, volume in records:
        moment = datetime.fromisoformat(stamp) if isinstance(stamp, str) else stamp
        rows[ticker].append((int(moment.timestamp() * 1000 + 0.5), int(volume)))
    return dict(rows)


@dataclass(frozen=True)
class TickerVerdict:
    """One ticker's record of the session against the truth (shares)."""

    ticker: str
    recorded: int
    true: int
    allowed_total_error: int  # 0 with exact candles
    worst_at_ms: int  # the boundary where the cumulative error is largest (relative to what is allowed)
    worst_error: int  # recorded - true cumulative volume there
    worst_allowed: int
    off_boundaries: int  # boundaries beyond what is allowed
    negative_rows: int
    rows_before_open: int
    largest_row: tuple[int, int]  # (timestamp ms, volume) of the session's largest row

    @property
    def ok(self) -> bool:
        return (
            abs(self.recorded - self.true) <= self.allowed_total_error
            and self.off_boundaries == 0
            and self.negative_rows == 0
        )

    def line(self) -> str:
        at_ms, volume = self.largest_row
        return (
            f"{self.ticker}: recorded {self.recorded:,} vs true {self.true:,} shares "
            f"({self.recorded - self.true:+,}, allowed ±{self.allowed_total_error:,}); worst minute "
            f"{hhmm(self.worst_at_ms)} cumulative {self.worst_error:+,} (allowed ±{self.worst_allowed:,}), "
            f"{self.off_boundaries} boundaries off; largest row {volume:,} at {hhmm(at_ms)}; "
            f"{self.negative_rows} negative rows, {self.rows_before_open} rows before the open"
        )


@dataclass(frozen=True)
class DayVerdict:
    tickers: dict[str, TickerVerdict] = field(default_factory=dict)
    readable: bool = True

    @property
    def ok(self) -> bool:
        return self.readable and all(v.ok for v in self.tickers.values())

    @property
    def rows_before_open(self) -> int:
        return sum(v.rows_before_open for v in self.tickers.values())

    def report(self) -> str:
        if not self.readable:
            return "equity_data could not be read"
        return "\n".join(v.line() for v in self.tickers.values())


def compare(market: SimulatedMarket, rows: Rows | None, *, resolution: int) -> DayVerdict:
    """The verdict on `rows` (see the module docstring) for every symbol of `market`, whose rows
    have ROW_RESOLUTION `resolution` (0: one per trade time)."""
    if rows is None:
        return DayVerdict(readable=False)
    return DayVerdict({s: _ticker_verdict(market, s, rows.get(s, []), resolution) for s in market.symbols})


def _ticker_verdict(
    market: SimulatedMarket, symbol: str, rows: list[tuple[int, int]], resolution: int
) -> TickerVerdict:
    open_ms, close_ms = market.open_ms, market.close_ms
    midnight = int(at(market.session_date, 0) * 1000)
    minutes: dict[int, int] = defaultdict(int)  # minute start → true volume of its session trades
    for trade in market.trades:
        if trade.symbol == symbol and open_ms <= trade.timestamp_ms < close_ms:
            minutes[trade.timestamp_ms - (trade.timestamp_ms - open_ms) % MINUTE_MS] += trade.size
    noise = market.candle_noise
    minute_noise = {m: int(noise * v) for m, v in minutes.items()}
    session = [(ms, v) for ms, v in rows if open_ms <= ms < close_ms]
    step = max(MINUTE_MS, resolution * 1000)
    worst = (0.0, close_ms, 0, 0)  # (error / allowed, boundary, error, allowed)
    off = 0
    boundary = open_ms
    while boundary < close_ms:
        boundary = min(boundary + step, close_ms)
        recorded = sum(v for ms, v in session if ms < boundary)
        true = sum(v for m, v in minutes.items() if m < boundary)
        allowed = max(minutes.get(boundary - MINUTE_MS, 0), minutes.get(boundary, 0))
        allowed += sum(n for m, n in minute_noise.items() if m < boundary)
        error = recorded - true
        off += abs(error) > allowed
        ratio = abs(error) / max(allowed, 1)
        if ratio > worst[0]:
            worst = (ratio, boundary - MINUTE_MS, error, allowed)
    _, worst_at, worst_error, worst_allowed = worst
    return TickerVerdict(
        ticker=symbol,
        recorded=sum(v for _, v in session),
        true=sum(minutes.values()),
        allowed_total_error=sum(minute_noise.values()),
        worst_at_ms=worst_at,
        worst_error=worst_error,
        worst_allowed=worst_allowed,
        off_boundaries=off,
        negative_rows=sum(v < 0 for _, v in rows),
        rows_before_open=sum(midnight <= ms < open_ms for ms, _ in rows),
        largest_row=max(session, key=lambda r: r[1], default=(open_ms, 0)),
    )


async def settle(
    market: SimulatedMarket,
    read: Callable[[], Rows | None],
    *,
    resolution: int,
    within: float = 30.0,
    quiet_s: float = 2.0,
) -> DayVerdict:
    """Poll `read()` until the verdict is ok and the session's rows have not changed for `quiet_s` seconds
    (a service may still be crediting minutes), or `within` seconds have passed; return the last
    verdict (the caller asserts it). Call it once every minute's candle is served."""
    deadline = time.monotonic() + within
    last: Rows | None = None
    stable_since = time.monotonic()
    while True:
        rows = await asyncio.to_thread(read)
        session = None if rows is None else _session_rows(market, rows)
        if session != last:  # (rows after the close, streamed around the clock, do not count)
            last, stable_since = session, time.monotonic()
        verdict = compare(market, rows, resolution=resolution)
        now = time.monotonic()
        if (verdict.ok and now - stable_since >= quiet_s) or now > deadline:
            return verdict
        await asyncio.sleep(0.25)


def _session_rows(market: SimulatedMarket, rows: Rows) -> Rows:
    return {t: [(ms, v) for ms, v in r if market.open_ms <= ms < market.close_ms] for t, r in rows.items()}
