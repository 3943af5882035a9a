"""SMA9 and VWAP rows equal a pandas reference computed over a whole simulated session."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from reference import reference_rows

from streaming_service.indicators import MovingAverage, SessionVwap, session_segment
from streaming_service.models import Tick
from streaming_service.pipeline import Pipeline, RowPair
from streaming_service.simulator import SimulatedMarket


def session_trades(seed: int, rate: float) -> pd.DataFrame:
    market = SimulatedMarket(["QQQ"], seed=seed, trades_per_second=rate)
    market.events_until(23_400.0)
    return pd.DataFrame(
        [(t.timestamp_ms, t.price, t.size) for t in market.trades], columns=["ms", "price", "size"]
    )


def pipeline_rows(trades: pd.DataFrame, resolution_s: int) -> pd.DataFrame:
    emitted: list[RowPair] = []
    pipeline = Pipeline(("QQQ",), emitted.append, resolution_s=resolution_s)
    for ms, price, size in trades.itertuples(index=False):
        pipeline.on_tick(Tick("QQQ", datetime.fromtimestamp(ms / 1000, UTC), float(price), int(size)))
    emitted.extend(pipeline.drain())
    return pd.DataFrame(
        [(int(e.timestamp.timestamp() * 1000), e.price, e.volume, i.vwap, i.sma9) for e, i in emitted],
        columns=["bucket", "price", "volume", "vwap", "sma9"],
    )


@pytest.mark.parametrize("resolution_s", [0, 1, 60])
def test_rows_match_pandas_reference_over_a_whole_session(resolution_s: int) -> None:
    trades = session_trades(seed=7, rate=0.5)
    assert len(trades) > 5_000  # a real session's worth, 09:30-16:00
    expected = reference_rows(trades, resolution_s)
    actual = pipeline_rows(trades, resolution_s)

    assert list(actual.bucket) == list(expected.bucket)
    assert list(actual.volume) == list(expected.volume)
    assert actual.volume.sum() == trades["size"].sum()
    assert (actual.price - expected.price).abs().max() <= 0.005 + 1e-9
    assert (actual.vwap - expected.vwap).abs().max() <= 0.005 + 1e-9
    assert list(actual.sma9.isna()) == list(expected.sma9.isna())
    both = expected.sma9.notna()
    assert both.sum() > 0.9 * len(expected)
    assert (actual.sma9[both] - expected.sma9[both]).abs().max() <= 0.005 + 1e-9


def test_sma_is_none_until_period_bars_then_uses_forming_close() -> None:
    sma = MovingAverage(period=3, bar_seconds=60)
    assert sma.update(0, 10.0) is None
    assert sma.update(60_000, 20.0) is None
    assert sma.update(120_000, 30.0) == pytest.approx(20.0)  # (10 + 20 + 30) / 3
    assert sma.update(150_000, 60.0) == pytest.approx(30.0)  # forming bar's close is now 60
    assert sma.update(180_000, 0.5) == pytest.approx((20 + 60 + 0.5) / 3)


def test_vwap_restarts_at_each_regular_open() -> None:
    day1_open, _ = session_segment(int(datetime(2026, 11, 23, 15, 0, tzinfo=UTC).timestamp() * 1000))
    day2_open, _ = session_segment(int(datetime(2026, 11, 24, 15, 0, tzinfo=UTC).timestamp() * 1000))
    assert datetime.fromtimestamp(day2_open / 1000, UTC) == datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
    vwap = SessionVwap()
    vwap.update(day1_open + 1, 100.0, 10)
    assert vwap.update(day1_open + 2, 200.0, 10) == pytest.approx(150.0)
    assert vwap.update(day2_open + 1, 300.0, 5) == pytest.approx(300.0)


def test_premarket_is_its_own_segment() -> None:
    nine_am_et = int(datetime(2026, 11, 24, 14, 0, tzinfo=UTC).timestamp() * 1000)
    start, end = session_segment(nine_am_et)
    assert datetime.fromtimestamp(start / 1000, UTC) == datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(end / 1000, UTC) == datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
