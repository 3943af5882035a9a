"""A deterministic simulated market: trades and quote updates in simulated session time.

No I/O and no wall clock: `events_until(offset_s)` returns every event up to `offset_s` seconds after
09:30 America/New_York on the session date. The same seed gives the same events however the calls
are sliced. `trades` is the ground truth of every trade generated so far.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

__all__ = ["Event", "SimulatedMarket"]

NEW_YORK = ZoneInfo("America/New_York")


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


@dataclass(slots=True)
class _Symbol:
    name: str
    rng: random.Random
    price_cents: int
    bid_cents: int
    ask_cents: int
    total_volume: int = 0
    last_ms: int = 0


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
        self._symbols: list[_Symbol] = []
        self._queue: list[tuple[float, int]] = []
        for index, name in enumerate(symbols):
            rng = random.Random(f"{seed}:{name}")
            default = 500.0 if name == "QQQ" else rng.uniform(20, 500)
            cents = round((start_prices or {}).get(name, default) * 100)
            self._symbols.append(_Symbol(name, rng, cents, cents - 1, cents + 1))
            heapq.heappush(self._queue, (rng.expovariate(self._event_rate), index))
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
        return event

    @staticmethod
    def _event(s: _Symbol, kind: Literal["trade", "quote"], size: int, ms: int) -> Event:
        return Event(
            s.name, ms, kind, s.price_cents / 100, size, s.total_volume, s.bid_cents / 100, s.ask_cents / 100
        )


def _trade_size(rng: random.Random) -> int:
    """Odd lots 15%, round lots of 100-500 82%, blocks of 1,000-10,000 3%."""
    draw = rng.random()
    if draw < 0.15:
        return rng.randint(1, 99)
    if draw < 0.97:
        return 100 * rng.randint(1, 5)
    return 100 * rng.randint(10, 100)
