"""Ticks → rows: aggregate trades at the row resolution and attach the indicators.

A row covers one interval of `resolution_s` seconds of exchange time (0 = one row per trade
timestamp): its price is the last trade's, its volume the sum of the interval's trades, its
timestamp the interval's start. Trades with equal keys are merged here, so the tables' UNIQUE keys
never silently drop volume.

A row is *emitted* (handed to the batcher) when a trade of a later interval arrives, and also by
`drain()` while it is still open; an open row keeps accumulating and is emitted again, whole, when
it changes, so the upsert of the latest emission always holds the row's full totals.

Days: the indicators restart at each exchange date (America/New_York); VWAP also at each session
segment (see `indicators`). Recovery: `state()` is what the recovery planner continues from (and
what a checkpoint holds) and `continue_from()` takes its plan's state, so the open row continues (it
is never overwritten by a smaller one) and the indicators go on exactly. `Pipeline.settings` names
the settings a builder's state depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from streaming_service.indicators import MovingAverage, SessionVwap, exchange_day
from streaming_service.models import EquityRow, IndicatorRow, Tick
from streaming_service.recovery import BuilderState, Row, SmaState, VwapState

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
        self._resolution_s = resolution_s
        self._sma_args = (sma_period, sma_bar_seconds)
        self._sma = MovingAverage(sma_period, sma_bar_seconds)
        self._vwap = SessionVwap()
        self._row: _OpenRow | None = None
        self._day_end_ms = -1  # end of the exchange date of the last trade
        self.last_ms: int | None = None  # time of the last trade, epoch ms
        #: False while the session's earlier rows are unknown (a cold start that cannot read them
        #: yet): rows are emitted with NULL indicators, until `continue_from()`
        self.indicators_known = True
        self.last_indicators: tuple[float | None, float | None] = (None, None)

    def add(self, tick: Tick) -> list[RowPair]:
        """Account for one trade; return the row it closed, if any (at most one)."""
        ts_ms = _epoch_ms(tick.timestamp)
        if ts_ms >= self._day_end_ms:  # a new exchange date: yesterday's bars do not count
            if self._day_end_ms != -1:
                self._sma = MovingAverage(*self._sma_args)
            self._day_end_ms = exchange_day(ts_ms)[1]
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
                IndicatorRow(
                    self.ticker,
                    ts,
                    *((_round(row.sma), _round(row.vwap)) if self.indicators_known else (None, None)),
                ),
            )
        ]

    def state(self, session_open_ms: int) -> BuilderState:
        """What this builder continues from, as the recovery planner reads it, for the session
        opening at `session_open_ms` (the open row is taken as recorded: drain it first)."""
        sma, vwap, row = self._sma.state(), self._vwap.state(), self._row
        return BuilderState(
            session_open_ms, self._resolution_s, *self._sma_args,
            open_row=None if row is None else Row(row.bucket_ms, row.price, row.volume, row.sma, row.vwap),
            sma=SmaState(sma["bar"], sma["close"], tuple(sma["closed"])),
            vwap=VwapState(vwap["start"], vwap["end"], vwap["notional"], vwap["volume"]),
            last_trade_ms=self.last_ms,
        )  # fmt: skip

    def continue_from(self, state: BuilderState) -> None:
        """Continue from a plan's (or a checkpoint's) `state`, of this builder's settings: its open
        row is recorded already, so it is emitted again only when it changes."""
        sma, vwap, row = state.sma, state.vwap, state.open_row
        self._sma = MovingAverage(*self._sma_args)
        self._sma.restore({"bar": sma.bar, "close": sma.close, "closed": list(sma.closed)})
        self._vwap.restore({"start": vwap.start_ms, "end": vwap.end_ms, "notional": vwap.notional,
                            "volume": vwap.volume})  # fmt: skip
        self._row = None if row is None else _OpenRow(row.timestamp_ms, row.price, row.volume, row.sma,
                                                      row.vwap, dirty=False)  # fmt: skip
        self._day_end_ms = exchange_day(state.session_open_ms)[1]
        self.last_ms = state.last_trade_ms
        self.last_indicators = (row.sma, row.vwap) if row is not None else (None, None)
        self.indicators_known = True


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
