"""Ticks → rows: aggregate trades at the row resolution and attach the indicators.

A row covers one interval of `resolution_s` seconds of exchange time (0 = one row per trade
timestamp): its price is the last trade's, its volume the sum of the interval's trades, its
timestamp the interval's start. Trades with equal keys are merged here, so the tables' UNIQUE keys
never silently drop volume.

A row is *emitted* (handed to the batcher) when a trade of a later interval arrives, and also by
`drain()` while it is still open; an open row keeps accumulating and is emitted again, whole, when
it changes, so the upsert of the latest emission always holds the row's full totals.

Days: the indicators restart at each exchange date (America/New_York); VWAP also at each session
segment (see `indicators`). Continuity: `state()`/`restore()` carry a builder across a restart, so
the open row continues (it is never overwritten by a smaller one) and the indicators go on exactly;
`replay()` rebuilds a builder from rows already recorded, without emitting them again, and
`rebuild_sma()` the SMA alone (after SMA_PERIOD or SMA_BAR_SECONDS changed). `Pipeline.settings`
names the settings a builder's state depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from typing import Any

from streaming_service.indicators import MovingAverage, SessionVwap, exchange_day
from streaming_service.models import EquityRow, IndicatorRow, Tick

__all__ = ["Pipeline", "RowBuilder", "RowPair"]

RowPair = tuple[EquityRow, IndicatorRow]


@dataclass(slots=True)
class _OpenRow:
    bucket_ms: int
    price: float
    volume: int
    sma: float | None
    vwap: float | None
    dirty: bool = True


class RowBuilder:
    """Rows for one ticker. Not thread-safe; O(1) per tick."""

    def __init__(
        self, ticker: str, *, resolution_s: int, sma_period: int = 9, sma_bar_seconds: int = 60
    ) -> None:
        self.ticker = ticker
        self._resolution_ms = resolution_s * 1000
        self._sma_args = (sma_period, sma_bar_seconds)
        self._sma = MovingAverage(sma_period, sma_bar_seconds)
        self._vwap = SessionVwap()
        self._row: _OpenRow | None = None
        self._day_end_ms = -1  # end of the exchange date of the last trade
        self.last_ms: int | None = None  # time of the last trade, epoch ms
        self.minute_ms = 0  # the minute (epoch ms) of the last trade added …
        self.minute_volume = 0  # … and the shares added in it
        self.last_indicators: tuple[float | None, float | None] = (None, None)

    def add(self, tick: Tick) -> list[RowPair]:
        """Account for one trade; return the row it closed, if any (at most one)."""
        ts_ms = _epoch_ms(tick.timestamp)
        if ts_ms >= self._day_end_ms:  # a new exchange date: yesterday's bars do not count
            if self._day_end_ms != -1:
                self._sma = MovingAverage(*self._sma_args)
            self._day_end_ms = exchange_day(ts_ms)[1]
        minute = ts_ms - ts_ms % 60_000
        if minute == self.minute_ms:
            self.minute_volume += tick.volume
        else:
            self.minute_ms, self.minute_volume = minute, tick.volume
        self.last_ms = ts_ms if self.last_ms is None else max(self.last_ms, ts_ms)
        sma = self._sma.update(ts_ms, tick.price)
        vwap = self._vwap.update(ts_ms, tick.price, tick.volume)
        self.last_indicators = (sma, vwap)
        bucket = ts_ms - ts_ms % self._resolution_ms if self._resolution_ms else ts_ms
        row = self._row
        if row is not None and bucket <= row.bucket_ms:  # same interval, or a late trade
            row.price, row.volume, row.sma, row.vwap = tick.price, row.volume + tick.volume, sma, vwap
            row.dirty = True
            return []
        closed = self.drain()
        self._row = _OpenRow(bucket, tick.price, tick.volume, sma, vwap)
        return closed

    def drain(self) -> list[RowPair]:
        """Return the open row if it changed since it was last emitted; it stays open."""
        row = self._row
        if row is None or not row.dirty:
            return []
        row.dirty = False
        ts = datetime.fromtimestamp(row.bucket_ms / 1000, UTC)
        return [
            (
                EquityRow(self.ticker, ts, round(row.price, 2), row.volume),
                IndicatorRow(self.ticker, ts, _round(row.sma), _round(row.vwap)),
            )
        ]

    def replay(self, recorded: Iterable[tuple[EquityRow, IndicatorRow | None]]) -> None:
        """Rebuild from rows already recorded (oldest first), emitting nothing: each row counts as
        one trade at its timestamp. The session VWAP then continues from the last recorded VWAP."""
        last_vwap = None
        for equity, indicators in recorded:
            self.add(Tick(self.ticker, equity.timestamp, equity.price, equity.volume))
            last_vwap = indicators.vwap if indicators is not None else last_vwap
        if self._row is not None:
            self._row.dirty = False
        vwap = self._vwap.state()
        if last_vwap is not None and vwap["volume"]:
            self._vwap.restore({**vwap, "notional": last_vwap * vwap["volume"]})

    def rebuild_sma(self, recorded: Iterable[EquityRow]) -> None:
        """Start the SMA afresh under this builder's settings from today's recorded rows (oldest
        first), each a trade at its timestamp and price: a bar's close is its last row's price."""
        sma = MovingAverage(*self._sma_args)
        for row in recorded:
            sma.update(_epoch_ms(row.timestamp), row.price)
        self._sma = sma

    def state(self) -> dict[str, Any]:
        """What `restore()` needs to continue exactly from here (JSON-compatible)."""
        return {
            "sma": self._sma.state(),
            "vwap": self._vwap.state(),
            "row": None if self._row is None else list(astuple(self._row))[:5],
            "day_end": self._day_end_ms,
            "last_ms": self.last_ms,
            "minute": [self.minute_ms, self.minute_volume],
            "last_indicators": list(self.last_indicators),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a `state()`: the open row is not emitted again until it changes."""
        self._sma.restore(state["sma"])
        self._vwap.restore(state["vwap"])
        row = state["row"]
        self._row = None if row is None else _OpenRow(int(row[0]), row[1], int(row[2]), row[3], row[4], False)
        self._day_end_ms = int(state["day_end"])
        self.last_ms = state["last_ms"]
        self.minute_ms, self.minute_volume = (int(v) for v in state["minute"])
        sma, vwap = state["last_indicators"]
        self.last_indicators = (sma, vwap)


class Pipeline:
    """Routes ticks to a `RowBuilder` per ticker and hands emitted rows to `emit`."""

    def __init__(
        self,
        tickers: tuple[str, ...],
        emit: Callable[[RowPair], None],
        *,
        resolution_s: int,
        sma_period: int = 9,
        sma_bar_seconds: int = 60,
    ) -> None:
        self.builders = {
            t: RowBuilder(
                t, resolution_s=resolution_s, sma_period=sma_period, sma_bar_seconds=sma_bar_seconds
            )
            for t in tickers
        }
        self.emit = emit
        #: The settings the builders' state depends on, by variable name (stored with a checkpoint)
        self.settings = {
            "ROW_RESOLUTION": resolution_s, "SMA_PERIOD": sma_period, "SMA_BAR_SECONDS": sma_bar_seconds
        }  # fmt: skip
        self.ticks = 0
        self.volume = 0
        self.last_tick: Tick | None = None

    def on_tick(self, tick: Tick) -> None:
        """Process one trade of a configured ticker (others are ignored)."""
        builder = self.builders.get(tick.symbol)
        if builder is None:
            return
        self.ticks += 1
        self.volume += tick.volume
        self.last_tick = tick
        for pair in builder.add(tick):
            self.emit(pair)

    def backfill(self, tick: Tick) -> None:
        """Add a trade that was not streamed (price history) to its builder; not counted as a tick."""
        for pair in self.builders[tick.symbol].add(tick):
            self.emit(pair)

    def drain(self) -> list[RowPair]:
        """Open rows that changed since last emitted (see module docstring)."""
        return [pair for builder in self.builders.values() for pair in builder.drain()]


def _epoch_ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000 + 0.5)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
