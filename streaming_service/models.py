"""Typed records passed between stages. All timestamps are timezone-aware UTC datetimes.

Flow: source → `Tick` → pipeline → (`EquityRow`, `IndicatorRow`) → batcher → `Batch` → sink.
Options: chain → `OptionContract`s (the window) → stream quotes → snapshot `OptionRow`s → batcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

__all__ = [
    "Batch",
    "EquityRow",
    "GapRow",
    "IndicatorRow",
    "OptionContract",
    "OptionRow",
    "TableRow",
    "Tick",
    "VolumeCheckRow",
]


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

    @property
    def key(self) -> tuple[str, datetime]:
        """The table's UNIQUE key."""
        return (self.ticker, self.timestamp)


@dataclass(frozen=True, slots=True)
class IndicatorRow:
    """A row of `indicators`, same key as its `EquityRow`; `None` means not enough data yet (SQL NULL)."""

    ticker: str
    timestamp: datetime
    sma9: float | None
    vwap: float | None

    @property
    def key(self) -> tuple[str, datetime]:
        """The table's UNIQUE key."""
        return (self.ticker, self.timestamp)


@dataclass(frozen=True, slots=True)
class OptionContract:
    """One listed option, as the chain describes it; `symbol` is the OCC-style streaming key."""

    symbol: str
    underlying: str
    option_type: Literal["CALL", "PUT"]
    strike: float
    expiration: date


@dataclass(frozen=True, slots=True)
class OptionRow:
    """A row of `option_prices`: a contract's latest quote at `timestamp`; `None` = not quoted."""

    ticker: str
    timestamp: datetime
    option_type: Literal["CALL", "PUT"]
    strike_price: float
    expiration_date: date
    last_price: float | None
    bid: float | None
    ask: float | None
    volume: int | None
    open_interest: int | None
    implied_volatility: float | None
    delta: float | None
    gamma: float | None
    theta: float | None
    vega: float | None
    option_symbol: str

    @property
    def key(self) -> tuple[str, datetime, str, float, date]:
        """The table's UNIQUE key."""
        return (self.ticker, self.timestamp, self.option_type, self.strike_price, self.expiration_date)


GapCause = Literal["restart", "disconnect", "stale", "sink"]


@dataclass(frozen=True, slots=True)
class GapRow:
    """A row of `stream_gaps`: a stretch of market hours in which `ticker` was not streamed.

    The gap ran from `started_at` (the key is `(ticker, started_at)`) to `ended_at`, when
    streaming resumed. `equity_backfilled_rows`: minute rows written from Schwab's price history
    for it; `volume_missing`: shares TOTAL_VOLUME says were traded in the gap beyond what the
    backfilled rows hold — they are counted in the first live row after it (negative: the candles
    held more; None: unknown, no TOTAL_VOLUME from before the gap); `options_missed`: option
    quotes of the gap are lost (there is no option history)."""

    ticker: str
    started_at: datetime
    ended_at: datetime
    cause: GapCause
    equity_backfilled_rows: int
    volume_missing: int | None
    options_missed: bool

    @property
    def key(self) -> tuple[str, datetime]:
        """The table's UNIQUE key."""
        return (self.ticker, self.started_at)


@dataclass(frozen=True, slots=True)
class VolumeCheckRow:
    """A row of `volume_checks`: the daily proof of `ticker`'s session on exchange date `day`.

    `minutes_checked` session minutes were compared with the 1-minute price history and
    `minutes_matching` of them hold exactly the candle's volume; `shares_recorded` and
    `shares_candles` are the session's totals; `worst_minute` is the start of the minute (or group
    of minutes, see `verify`) furthest from its candle and `worst_minute_diff` recorded minus
    candle shares there (both None when every minute matches); `minutes_filled`: minutes without
    any row that this check filled from their candle (counted in the totals above); `checked_at`:
    when the check ran."""

    ticker: str
    day: date
    minutes_checked: int
    minutes_matching: int
    shares_recorded: int
    shares_candles: int
    worst_minute: datetime | None
    worst_minute_diff: int | None
    minutes_filled: int
    checked_at: datetime

    @property
    def key(self) -> tuple[str, date]:
        """The table's UNIQUE key."""
        return (self.ticker, self.day)


#: A row of any of the five tables.
TableRow = EquityRow | IndicatorRow | OptionRow | GapRow | VolumeCheckRow


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows written together: a sink writes a batch atomically and idempotently (upsert on unique keys)."""

    equity: tuple[EquityRow, ...] = ()
    indicators: tuple[IndicatorRow, ...] = ()
    options: tuple[OptionRow, ...] = ()
    gaps: tuple[GapRow, ...] = ()
    checks: tuple[VolumeCheckRow, ...] = ()

    def __len__(self) -> int:
        return len(self.equity) + len(self.indicators) + len(self.options) + len(self.gaps) + len(self.checks)
