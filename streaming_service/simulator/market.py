"""A deterministic simulated market: trades and quote updates in simulated session time.

No I/O and no wall clock. Time is an *offset*: seconds after 09:30 America/New_York on the
session date, negative before it (04:00 is -19,800). `events_until(offset_s)` returns every event
up to `offset_s`; the same seed gives the same events however the calls are sliced. `trades` is
the ground truth of every trade generated so far, with its timestamp; `candles` and
`daily_candles` aggregate it into Schwab's price-history candles.

By default the market is the regular session alone: events from 09:30 for `session_seconds`, and
`total_volume` counts from 0 at 09:30. With `extended_hours=True` it is the whole day as Schwab
streams it:
- pre-market from 04:00 to the open (offsets -19,800 to 0) and after-hours for the 4 hours after
  the close (16:00 to 20:00 on a full day), at `extended_rate` times the regular rate of events
  (trades and quotes alike; trade sizes as in the session);
- the opening cross at exactly the open (09:30:00.000, `open_ms`) and the closing cross at exactly
  the close (`close_ms`: the open + `session_seconds`, 16:00:00.000 on a full day): one trade each,
  of 0.5-2 % of the regular session's expected volume (`trades_per_second` x `session_seconds` x
  the mean trade size), at the price walk's next step;
- `total_volume` (and each Event's) is cumulative from 0 at the morning reset, before the first
  pre-market trade: at 09:30 it already holds the pre-market's shares, and after-hours trades keep
  adding to it;
- the regular session is `open_ms <= timestamp < close_ms`, and each span is half-open the same
  way: the closing cross, stamped `close_ms`, is the first trade of the after-hours minute 16:00
  (as on SIP-fed minute bars), in no regular-session candle.
`day_start_ms` and `day_end_ms` bound the day (the open and the close without extended hours).

`candle_noise` (0 by default: every candle's volume is its trades' exact sum) makes candles
disagree with the stream as a bar vendor's can with a consolidated feed: each candle's volume is
its trades' sum `v` plus a whole number of shares drawn uniformly from `-int(candle_noise * v)` to
`+int(candle_noise * v)`, fixed per (seed, symbol, candle length, candle start) so that asking
again gives the same candle. Open, high, low, close and the start are never changed. So a candle
is off by at most `int(candle_noise * v)` shares, a candle of fewer than `1 / candle_noise` shares
is exact, and a sum of candles is within `candle_noise` times their trades' volume.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["Candle", "Event", "SimulatedMarket"]

NEW_YORK = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")  # Schwab stamps daily candles at midnight Central time
PRE_MARKET_S = 19_800.0  # 04:00 to 09:30
AFTER_HOURS_S = 14_400.0  # the close to 4 hours after it (16:00 to 20:00 on a full day)
_MEAN_TRADE_SIZE = 0.15 * 50 + 0.82 * 300 + 0.03 * 5_500  # of _trade_size


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
    events); prices a random walk in cents with ~1 bp steps; sizes mostly round lots. See the
    module docstring for `extended_hours`, `extended_rate` and `candle_noise`."""

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
        extended_hours: bool = False,
        extended_rate: float = 0.05,
        candle_noise: float = 0.0,
    ) -> None:
        if trades_per_second <= 0 or not 0 <= quote_ratio < 1 or session_seconds <= 0:
            raise ValueError("trades_per_second and session_seconds must be > 0, quote_ratio in [0, 1)")
        if extended_rate <= 0:
            raise ValueError(f"extended_rate must be > 0 (a fraction of the session's), not {extended_rate}")
        if not 0 <= candle_noise < 1:
            raise ValueError(f"candle_noise must be in [0, 1) (0: exact candles), not {candle_noise}")
        session_date = session_date or latest_weekday(datetime.now(NEW_YORK).date())
        self.open_ms = int(datetime.combine(session_date, time(9, 30), NEW_YORK).timestamp() * 1000)
        self.close_ms = self.open_ms + math.floor(session_seconds * 1000)
        self.session_seconds = session_seconds
        self.extended_hours = extended_hours
        self.candle_noise = candle_noise
        self._seed = seed
        self._event_rate = trades_per_second / (1 - quote_ratio)
        self._quote_ratio = quote_ratio
        self._end_s = session_seconds + (AFTER_HOURS_S if extended_hours else 0.0)
        self._until_s = -PRE_MARKET_S if extended_hours else 0.0  # every event up to here is generated
        self.day_start_ms = self.open_ms + math.floor(self._until_s * 1000)
        self.day_end_ms = self.open_ms + math.floor(self._end_s * 1000)
        thin, rate = self._event_rate * extended_rate, self._event_rate
        # (start, end, event rate) of each span, in offsets; a cross at the end of the first two
        self._spans = (
            ((-PRE_MARKET_S, 0.0, thin), (0.0, session_seconds, rate), (session_seconds, self._end_s, thin))
            if extended_hours
            else ()
        )
        self._cross_volume = trades_per_second * session_seconds * _MEAN_TRADE_SIZE
        self.session_date = session_date
        self._symbols: list[_Symbol] = []
        self._queue: list[tuple[float, int, bool]] = []  # (offset, symbol index, is a cross)
        for index, name in enumerate(symbols):
            rng = random.Random(f"{seed}:{name}")
            default = 500.0 if name == "QQQ" else rng.uniform(20, 500)
            cents = round((start_prices or {}).get(name, default) * 100)
            self._symbols.append(_Symbol(name, rng, cents, cents - 1, cents + 1, cents / 100))
            at, cross = self._next_arrival(rng, self._until_s)
            heapq.heappush(self._queue, (at, index, cross))
        self._by_name = {s.name: s for s in self._symbols}
        self.trades: list[Event] = []

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._symbols)

    @property
    def finished(self) -> bool:
        """True once every event of the session (with extended hours: of the day) has been returned."""
        return not self._queue or self._queue[0][0] > self._end_s

    @property
    def generated_until_ms(self) -> int:
        """Every event at or before this time (epoch ms) has been generated (by `events_until`)."""
        return self.open_ms + math.floor(self._until_s * 1000)

    def total_volume(self, symbol: str) -> int:
        """Shares traded so far since the morning reset (cumulative, like Schwab's TOTAL_VOLUME)."""
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
        self,
        symbol: str,
        start_ms: int | None = None,
        end_ms: int | None = None,
        *,
        minutes: int = 1,
        extended: bool = False,
        complete_by_ms: int | None = None,
    ) -> list[Candle]:
        """`minutes`-minute candles of the trades of `symbol` generated so far, in time order.

        Periods are aligned to the session open (09:30 New York), so they start on whole multiples
        of `minutes` minutes of the clock. A period without trades has no candle. A candle belongs
        to the window when its start is in it: `start_ms <= candle.start_ms <= end_ms` (None:
        unbounded), so a candle starting before `start_ms` is left out even if some of its trades
        are after it. Volume is the exact sum of the trades' sizes, unless `candle_noise` (see the
        module docstring). Unknown symbol: []. Raises ValueError if `minutes` < 1.
        - `extended` False: with extended hours, only the regular session's trades
          (`open_ms <= timestamp < close_ms`); True: the whole day's. A market without extended
          hours has only the session: every trade either way.
        - `complete_by_ms` None: the last candle may be a period still under way (the trades of it
          so far); else only periods that ended at or before `complete_by_ms`.
        Reads only: safe beside the thread generating events, which only appends.
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
        if self.extended_hours and not extended:
            first = open_ms if first is None else max(first, open_ms)
            stop = self.close_ms if stop is None else min(stop, self.close_ms)
        if complete_by_ms is not None:  # trades before the start of the period under way then
            complete = open_ms + (complete_by_ms - open_ms) // period * period
            stop = complete if stop is None else min(stop, complete)
        candles = _aggregate(s.trades, first, stop, lambda ms: (ms - (ms - open_ms) % period, period))
        return self._noisy(candles, symbol, period)

    def daily_candles(
        self, symbol: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[Candle]:
        """The session's daily candle of `symbol` (all its trades so far, extended hours included),
        stamped 00:00 Central time of the session date like Schwab's daily candles, if that stamp is
        within `start_ms`..`end_ms` (inclusive; None: unbounded) and the symbol has traded; else [].
        `candle_noise` applies to it as to any candle."""
        s = self._by_name.get(symbol)
        day_ms = _midnight_central_ms(self.session_date)
        after_start = start_ms is None or day_ms >= start_ms
        before_end = end_ms is None or day_ms <= end_ms
        if s is None or not (after_start and before_end):
            return []
        candles = _aggregate(s.trades, None, None, lambda ms: (day_ms, 86_400_000))
        return self._noisy(candles, symbol, 86_400_000)

    def _noisy(self, candles: list[Candle], symbol: str, period_ms: int) -> list[Candle]:
        """`candles` with `candle_noise` applied to their volumes (see the module docstring)."""
        if not self.candle_noise:
            return candles
        noisy = []
        for c in candles:
            bound = int(self.candle_noise * c.volume)
            rng = random.Random(f"candle:{self._seed}:{symbol}:{period_ms}:{c.start_ms}")
            noisy.append(replace(c, volume=c.volume + rng.randint(-bound, bound)))
        return noisy

    def snapshot(self, symbol: str) -> Event:
        """The symbol's current state, as a quote event stamped with its last event time."""
        s = next(s for s in self._symbols if s.name == symbol)
        return self._event(s, "quote", 0, s.last_ms or self.day_start_ms)

    def move(self, symbol: str, price: float) -> None:
        """Jump `symbol`'s price to `price` (the walk continues from there); for tests and demos."""
        s = next(s for s in self._symbols if s.name == symbol)
        s.price_cents = max(1, round(price * 100))
        s.bid_cents, s.ask_cents = s.price_cents - 1, s.price_cents + 1

    def events_until(self, offset_s: float) -> list[Event]:
        """Every not-yet-returned event at or before `offset_s` seconds after the open (negative:
        before it), capped at the end of the session (with extended hours: of the day)."""
        limit = min(offset_s, self._end_s)
        self._until_s = max(self._until_s, limit)
        events = []
        while self._queue and self._queue[0][0] <= limit:
            at, index, cross = heapq.heappop(self._queue)
            symbol = self._symbols[index]
            event = self._next_event(symbol, at, cross)
            if event is not None:
                events.append(event)
            after, next_cross = self._next_arrival(symbol.rng, at)
            heapq.heappush(self._queue, (after, index, next_cross))
        return events

    def _next_arrival(self, rng: random.Random, after: float) -> tuple[float, bool]:
        """The offset of the event after the one at `after`, and whether it is a cross. With
        extended hours the rate is piecewise constant (exact for a Poisson process: it is
        memoryless), and a draw past a span's end becomes the cross there if there is one."""
        if not self._spans:
            return after + rng.expovariate(self._event_rate), False
        for start, end, rate in self._spans:
            if after < end:
                at = max(after, start) + rng.expovariate(rate)
                if at < end:
                    return at, False
                if end < self._end_s:  # the open or the close
                    return end, True
                after = end
        return math.inf, False

    def _next_event(self, s: _Symbol, at: float, cross: bool) -> Event | None:
        """The event at offset `at`; None (nothing happens) for one whose millisecond, kept strictly
        increasing per symbol, would reach the cross or the end of the day after it."""
        ms = max(self.open_ms + math.floor(at * 1000), s.last_ms + 1)  # strictly increasing per symbol
        if self._spans and not cross and ms >= self._span_end_ms(at):
            return None
        s.last_ms = ms
        rng = s.rng
        if not cross and rng.random() < self._quote_ratio:
            s.bid_cents = s.price_cents - rng.randint(1, 3)
            s.ask_cents = s.price_cents + rng.randint(1, 3)
            return self._event(s, "quote", 0, ms)
        step = round(rng.gauss(0, max(1.0, s.price_cents * 1e-4)))
        s.price_cents = max(1, s.price_cents + step)
        s.bid_cents, s.ask_cents = s.price_cents - 1, s.price_cents + 1
        size = max(1, round(rng.uniform(0.005, 0.02) * self._cross_volume)) if cross else _trade_size(rng)
        s.total_volume += size
        event = self._event(s, "trade", size, ms)
        self.trades.append(event)
        s.trades.append(event)
        return event

    def _span_end_ms(self, at: float) -> int:
        """The end of the extended-hours span holding offset `at` (a cross, or the day's end)."""
        return self.open_ms if at < 0 else self.close_ms if at < self.session_seconds else self.day_end_ms

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


def latest_weekday(day: date) -> date:
    """`day`, or the Friday before it on a weekend: the default session date (there is no session
    on a weekend, and a service streaming 24/7 rightly expects no trade then). Holidays are not
    simulated."""
    return day - timedelta(days=max(0, day.weekday() - 4))


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
