"""Incremental indicators, O(1) per trade.

- `MovingAverage`: mean of the last `period` bar closes, where the forming bar's close is the latest
  price (what a live chart shows). Bars are `bar_seconds` long, aligned to the epoch; a bar exists
  only if it had a trade. `None` until `period` bars exist (the forming one included).
- `SessionVwap`: Σ(price·volume) / Σ(volume) since the start of the current session segment. The
  regular segment starts 09:30 America/New_York and runs through the evening; the pre-market
  segment starts 04:00, so each trading day's VWAP restarts at the open and after-hours trades of
  one day never leak into the next morning.

Trades are expected in time order; one older than the current bar or segment is counted in the
current one (it is never dropped). `state()` and `restore()` carry both across a restart (values
are JSON-compatible).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["MovingAverage", "SessionVwap", "exchange_day", "session_segment"]

EXCHANGE_TZ = ZoneInfo("America/New_York")
PRE_MARKET_OPEN = time(4, 0)
REGULAR_OPEN = time(9, 30)
REGULAR_CLOSE = time(16, 0)


class MovingAverage:
    """Simple moving average over bar closes; see the module docstring."""

    def __init__(self, period: int = 9, bar_seconds: int = 60) -> None:
        if period < 1 or bar_seconds < 1:
            raise ValueError("period and bar_seconds must be ≥ 1")
        self.period = period
        self._bar_ms = bar_seconds * 1000
        self._closed: deque[float] = deque(maxlen=period - 1)
        self._closed_sum = 0.0
        self._bar: int | None = None
        self._close = 0.0

    def update(self, timestamp_ms: int, price: float) -> float | None:
        """Add a trade; return the SMA including it, or `None` while fewer than `period` bars exist."""
        bar = timestamp_ms // self._bar_ms
        if self._bar is None:
            self._bar = bar
        elif bar > self._bar:
            if self._closed.maxlen:
                self._closed.append(self._close)
                self._closed_sum = sum(self._closed)  # once per bar: exact, no drift over months
            self._bar = bar
        self._close = price
        if len(self._closed) < self.period - 1:
            return None
        return (self._closed_sum + price) / self.period

    def state(self) -> dict[str, Any]:
        """What `restore()` needs to continue exactly from here."""
        return {"bar": self._bar, "close": self._close, "closed": list(self._closed)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a `state()` of an average with the same period and bar length."""
        self._closed.clear()
        self._closed.extend(float(c) for c in state["closed"])
        self._closed_sum = sum(self._closed)
        self._bar = None if state["bar"] is None else int(state["bar"])
        self._close = float(state["close"])


class SessionVwap:
    """Volume-weighted average price of the current session segment; see the module docstring."""

    def __init__(self) -> None:
        self._segment_end_ms = -1
        self._segment_start_ms = 0
        self._notional = 0.0
        self._volume = 0

    def update(self, timestamp_ms: int, price: float, volume: int) -> float | None:
        """Add a trade of `volume` shares; return the VWAP including it (`None` while volume is 0)."""
        if timestamp_ms >= self._segment_end_ms:
            start, end = session_segment(timestamp_ms)
            if start != self._segment_start_ms:
                self._notional, self._volume = 0.0, 0
            self._segment_start_ms, self._segment_end_ms = start, end
        self._notional += price * volume
        self._volume += volume
        return self._notional / self._volume if self._volume else None

    def state(self) -> dict[str, Any]:
        """What `restore()` needs to continue exactly from here."""
        return {
            "start": self._segment_start_ms,
            "end": self._segment_end_ms,
            "notional": self._notional,
            "volume": self._volume,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a `state()`."""
        self._segment_start_ms, self._segment_end_ms = int(state["start"]), int(state["end"])
        self._notional, self._volume = float(state["notional"]), int(state["volume"])


def session_segment(timestamp_ms: int) -> tuple[int, int]:
    """Return [start, end) in epoch ms of the VWAP segment containing `timestamp_ms`."""
    local = datetime.fromtimestamp(timestamp_ms / 1000, EXCHANGE_TZ)
    day = local.date()
    if local.time() >= REGULAR_OPEN:
        start = datetime.combine(day, REGULAR_OPEN, EXCHANGE_TZ)
        end = datetime.combine(day + timedelta(days=1), PRE_MARKET_OPEN, EXCHANGE_TZ)
    elif local.time() >= PRE_MARKET_OPEN:
        start = datetime.combine(day, PRE_MARKET_OPEN, EXCHANGE_TZ)
        end = datetime.combine(day, REGULAR_OPEN, EXCHANGE_TZ)
    else:
        start = datetime.combine(day - timedelta(days=1), REGULAR_OPEN, EXCHANGE_TZ)
        end = datetime.combine(day, PRE_MARKET_OPEN, EXCHANGE_TZ)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def exchange_day(timestamp_ms: int) -> tuple[int, int]:
    """Return [start, end) in epoch ms of the America/New_York date containing `timestamp_ms`."""
    day = datetime.fromtimestamp(timestamp_ms / 1000, EXCHANGE_TZ).date()
    start = datetime.combine(day, time(0), EXCHANGE_TZ)
    end = datetime.combine(day + timedelta(days=1), time(0), EXCHANGE_TZ)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
