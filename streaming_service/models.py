"""Typed records passed between stages. All timestamps are timezone-aware UTC datetimes.

Flow: source → `Tick` → pipeline → (`EquityRow`, `IndicatorRow`) → batcher → `Batch` → sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Batch", "EquityRow", "IndicatorRow", "Tick"]


@dataclass(frozen=True, slots=True)
class Tick:
    """One trade: `volume` shares (> 0) of `symbol` at `price` (> 0), at exchange time `timestamp`."""

    symbol: str
    timestamp: datetime
    price: float
    volume: int


@dataclass(frozen=True, slots=True)
class EquityRow:
    """A row of `equity_data`: last price and shares traded in the row's interval."""

    ticker: str
    timestamp: datetime
    price: float
    volume: int


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    """A row of `indicators`, same key as its `EquityRow`; `None` means not enough data yet (SQL NULL)."""

    ticker: str
    timestamp: datetime
    sma9: float | None
    vwap: float | None


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows written together: a sink writes a batch atomically and idempotently (upsert on unique keys)."""

    equity: tuple[EquityRow, ...] = ()
    indicators: tuple[IndicatorRow, ...] = ()

    def __len__(self) -> int:
        return len(self.equity) + len(self.indicators)
