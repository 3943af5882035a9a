"""A deterministic simulated market: trades and quote updates in simulated session time.

No I/O and no wall clock: `events_until(offset_s)` returns every event up to `offset_s` seconds after
09:30 America/New_York on the session date. The same seed gives the same events however the calls
are sliced. `trades` is the ground truth of every trade generated so far; `candles` and
`daily_candles` aggregate it into Schwab's price-history candles.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["Candle", "Event", "SimulatedMarket"]

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")  # Schwab stamps daily candles at midnight Central time


@dataclass(frozen=True, slots=True)
class Event:
    """A trade (`size` > 0) or a quote-only update (`size` == 0); values are after the event."""

    symbol: str
    timestamp_ms: int
    kind: Literal["trade", "quote"]
    price: float
    size: int
    total_volume: int
    bid: float
    ask: float


@dataclass(frozen=True, slots=True)
class Candle:
    """Open, high, low, close (dollars) and volume (shares) of the trades in the candle's period,
    which starts at `start_ms` (epoch ms; Schwab's `datetime`)."""

    start_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: int


@dataclass(slots=True)
class _Symbol:
    name: str
    rng: random.Random
    price_cents: int
    bid_cents: int
    ask_cents: int
    previous_close: float = 0.0
    total_volume: int = 0
    last_ms: int = 0
    trades: list[Event] = field(default_factory=list)  # the same objects as `market.trades`, in time order


class SimulatedMarket:
    """Poisson arrivals per symbol at `trades_per_second` trades (plus quotes at `quote_ratio` of
    events); prices a random walk in cents with ~1 bp steps; sizes mostly round lots."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        seed: int = 0,
        trades_per_second: float = 2.0,
        quote_ratio: float = 0.3,
        session_date: date | None = None,
        start_prices: Mapping[str, float] | None = None,
        session_seconds: float = 23_400.0,
    ) -> None:
        if trades_per_second <= 0 or not 0 <= quote_ratio < 1 or session_seconds <= 0:
            raise ValueError("trades_per_second and session_seconds must be > 0, quote_ratio in [0, 1)")
        session_date = session_date or datetime.now(NEW_YORK).date()
        self.open_ms = int(datetime.combine(session_date, time(9, 30), NEW_YORK).timestamp() * 1000)
        self.session_seconds = session_seconds
        self._event_rate = trades_per_second / (1 - quote_ratio)
        self._quote_ratio = quote_ratio
        self.session_date = session_date
        self._symbols: list[_Symbol] = []
        self._queue: list[tuple[float, int]] = []
        for index, name in enumerate(symbols):
            rng = random.Random(f"{seed}:{name}")
            default = 500.0 if name == "QQQ" else rng.uniform(20, 500)
            cents = round((start_prices or {}).get(name, default) * 100)
            self._symbols.append(_Symbol(name, rng, cents, cents - 1, cents + 1, cents / 100))
            heapq.heappush(self._queue, (rng.expovariate(self._event_rate), index))
        self._by_name = {s.name: s for s in self._symbols}
        self.trades: list[Event] = []

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._symbols)

    @property
    def finished(self) -> bool:
        """True once every event of the session has been returned."""
        return not self._queue or self._queue[0][0] > self.session_seconds

    def total_volume(self, symbol: str) -> int:
        """Shares traded so far (cumulative, like Schwab's TOTAL_VOLUME)."""
        return next(s.total_volume for s in self._symbols if s.name == symbol)

    def previous_close(self, symbol: str) -> tuple[float, int] | None:
        """The previous session's close of `symbol` (the price it opened this session at) and that
        session's day as Schwab stamps it (00:00 Central time of the weekday before), or None for a
        symbol not in this market."""
        s = self._by_name.get(symbol)
        if s is None:
            return None
        day = self.session_date - timedelta(days=1)
        while day.weekday() >= 5:  # holidays are not simulated
            day -= timedelta(days=1)
        return s.previous_close, _midnight_central_ms(day)

    def candles(
        self, symbol: str, start_ms: int | None = None, end_ms: int | None = None, *, minutes: int = 1
    ) -> list[Candle]:
        """`minutes`-minute candles of the trades of `symbol` generated so far, in time order.

        Periods are aligned to the session open (09:30 New York), so they start on whole multiples
        of `minutes` minutes of the clock. A period without trades has no candle; the last candle
        may be a period still under way (the trades of it so far). A candle belongs to the window
        when its start is in it: `start_ms <= candle.start_ms <= end_ms` (None: unbounded), so a
        candle starting before `start_ms` is left out even if some of its trades are after it.
        Volume is the exact sum of the trades' sizes. Unknown symbol: []. Raises ValueError if
        `minutes` < 1. Reads only: safe beside the thread generating events, which only appends.
        O(log n + k) for n trades of the symbol and k in the window.
        """
        if minutes < 1:
            raise ValueError(f"minutes must be >= 1, not {minutes}")
        s = self._by_name.get(symbol)
        if s is None:
            return []
        period = minutes * 60_000
        # the window's trades run from the first period starting at or after start_ms to the end
        # of the last period starting at or before end_ms
        open_ms = self.open_ms
        first = None if start_ms is None else open_ms - (open_ms - start_ms) // period * period
        stop = None if end_ms is None else open_ms + ((end_ms - open_ms) // period + 1) * period
        return _aggregate(s.trades, first, stop, lambda ms: (ms - (ms - open_ms) % period, period))

    def daily_candles(
        self, symbol: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Candle]:
        """The session's daily candle of `symbol` (all its trades so far), stamped 00:00 Central
        time of the session date like Schwab's daily candles, if that stamp is within
        `start_ms`..`end_ms` (inclusive; None: unbounded) and the symbol has traded; else []."""
        s = self._by_name.get(symbol)
        day_ms = _midnight_central_ms(self.session_date)
        after_start = start_ms is None or day_ms >= start_ms
        before_end = end_ms is None or day_ms <= end_ms
        if s is None or not (after_start and before_end):
            return []
        return _aggregate(s.trades, None, None, lambda ms: (day_ms, 86_400_000))

    def snapshot(self, symbol: str) -> Event:
        """The symbol's current state, as a quote event stamped with its last event time."""
        s = next(s for s in self._symbols if s.name == symbol)
        return self._event(s, "quote", 0, s.last_ms or self.open_ms)

    def move(self, symbol: str, price: float) -> None:
        """Jump `symbol`'s price to `price` (the walk continues from there); for tests and demos."""
        s = next(s for s in self._symbols if s.name == symbol)
        s.price_cents = max(1, round(price * 100))
        s.bid_cents, s.ask_cents = s.price_cents - 1, s.price_cents + 1

    def events_until(self, offset_s: float) -> list[Event]:
        """Every not-yet-returned event at or before `offset_s` (capped at the session end)."""
        limit = min(offset_s, self.session_seconds)
        events = []
        while self._queue and self._queue[0][0] <= limit:
            at, index = heapq.heappop(self._queue)
            symbol = self._symbols[index]
            events.append(self._next_event(symbol, at))
            heapq.heappush(self._queue, (at + symbol.rng.expovariate(self._event_rate), index))
        return events

    def _next_event(self, s: _Symbol, at: float) -> Event:
        ms = max(self.open_ms + int(at * 1000), s.last_ms + 1)  # strictly increasing per symbol
        s.last_ms = ms
        rng = s.rng
        if rng.random() < self._quote_ratio:
            s.bid_cents = s.price_cents - rng.randint(1, 3)
            s.ask_cents = s.price_cents + rng.randint(1, 3)
            return self._event(s, "quote", 0, ms)
        step = round(rng.gauss(0, max(1.0, s.price_cents * 1e-4)))
        s.price_cents = max(1, s.price_cents + step)
        s.bid_cents, s.ask_cents = s.price_cents - 1, s.price_cents + 1
        size = _trade_size(rng)
        s.total_volume += size
        event = self._event(s, "trade", size, ms)
        self.trades.append(event)
        s.trades.append(event)
        return event

    @staticmethod
    def _event(s: _Symbol, kind: Literal["trade", "quote"], size: int, ms: int) -> Event:
        return Event(
            s.name, ms, kind, s.price_cents / 100, size, s.total_volume, s.bid_cents / 100, s.ask_cents / 100
        )


def _aggregate(
    trades: list[Event],
    start_ms: int | None,
    stop_ms: int | None,
    period_of: Callable[[int], tuple[int, int]],
) -> list[Candle]:
    """Candles of `trades` (time-ordered) with `start_ms <= timestamp < stop_ms`, one per period;
    `period_of(timestamp)` is (start, length in ms) of the period holding `timestamp`. The trades
    are found by bisection and read in place (no copy)."""
    lo = 0 if start_ms is None else bisect_left(trades, start_ms, key=_timestamp)
    hi = len(trades) if stop_ms is None else bisect_left(trades, stop_ms, key=_timestamp)
    candles: list[Candle] = []
    index = lo
    while index < hi:
        first = trades[index]
        start, length = period_of(first.timestamp_ms)
        high = low = first.price
        volume = 0
        end = index
        while end < hi and trades[end].timestamp_ms < start + length:
            price = trades[end].price
            if price > high:
                high = price
            elif price < low:
                low = price
            volume += trades[end].size
            end += 1
        candles.append(Candle(start, first.price, high, low, trades[end - 1].price, volume))
        index = end
    return candles


def _timestamp(event: Event) -> int:
    return event.timestamp_ms


def _midnight_central_ms(day: date) -> int:
    return int(datetime.combine(day, time(0, 0), CHICAGO).timestamp() * 1000)


def _trade_size(rng: random.Random) -> int:
    """Odd lots 15%, round lots of 100-500 82%, blocks of 1,000-10,000 3%."""
    draw = rng.random()
    if draw < 0.15:
        return rng.randint(1, 99)
    if draw < 0.97:
        return 100 * rng.randint(1, 5)
    return 100 * rng.randint(10, 100)
