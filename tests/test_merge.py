"""Partial LEVELONE_EQUITIES updates merge per symbol; trades are rises of cumulative volume."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from streaming_service.sources.schwab import BadFrame, QuoteMerger

T0 = 1_764_000_000_000  # epoch ms


def snap(**fields: Any) -> dict[str, Any]:
    return {"key": "QQQ", "delayed": False, **fields}


def test_first_snapshot_sets_the_baseline_only() -> None:
    merger = QuoteMerger()
    first = snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000, LAST_SIZE=100, TRADE_TIME_MILLIS=T0)
    assert merger.apply(first) is None


def test_volume_delta_is_the_trade_and_partial_fields_are_merged() -> None:
    merger = QuoteMerger()
    merger.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000, TRADE_TIME_MILLIS=T0))
    tick = merger.apply(snap(TOTAL_VOLUME=1_300, TRADE_TIME_MILLIS=T0 + 5))  # price unchanged, not resent
    assert tick is not None
    assert (tick.symbol, tick.price, tick.volume) == ("QQQ", 500.0, 300)
    assert tick.timestamp == datetime.fromtimestamp((T0 + 5) / 1000, UTC)
    tick = merger.apply(snap(LAST_PRICE=500.5, TOTAL_VOLUME=1_350))  # time unchanged, not resent
    assert tick is not None
    assert (tick.price, tick.volume) == (500.5, 50)
    assert tick.timestamp == datetime.fromtimestamp((T0 + 5) / 1000, UTC)


def test_quote_only_update_is_not_a_trade() -> None:
    merger = QuoteMerger()
    merger.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=1_000, TRADE_TIME_MILLIS=T0))
    assert merger.apply(snap(BID_PRICE=499.9, ASK_PRICE=500.1, QUOTE_TIME_MILLIS=T0 + 9)) is None
    assert merger.apply(snap(TOTAL_VOLUME=1_000)) is None  # unchanged volume: no trade


def test_dropped_frame_folds_its_volume_into_the_next_trade() -> None:
    sent = [
        snap(LAST_PRICE=500.0, TOTAL_VOLUME=0, TRADE_TIME_MILLIS=T0),
        snap(LAST_PRICE=500.1, TOTAL_VOLUME=100, TRADE_TIME_MILLIS=T0 + 1),
        snap(LAST_PRICE=500.2, TOTAL_VOLUME=350, TRADE_TIME_MILLIS=T0 + 2),  # dropped
        snap(LAST_PRICE=500.3, TOTAL_VOLUME=400, TRADE_TIME_MILLIS=T0 + 3),
    ]
    merger = QuoteMerger()
    ticks = [merger.apply(frame) for i, frame in enumerate(sent) if i != 2]
    volumes = [t.volume for t in ticks if t is not None]
    assert volumes == [100, 300]
    assert sum(volumes) == 400  # nothing lost


def test_symbols_are_merged_independently() -> None:
    merger = QuoteMerger()
    merger.apply({"key": "QQQ", "LAST_PRICE": 500.0, "TOTAL_VOLUME": 10, "TRADE_TIME_MILLIS": T0})
    merger.apply({"key": "SPY", "LAST_PRICE": 600.0, "TOTAL_VOLUME": 20, "TRADE_TIME_MILLIS": T0})
    tick = merger.apply({"key": "SPY", "TOTAL_VOLUME": 25})
    assert tick is not None and (tick.symbol, tick.price, tick.volume) == ("SPY", 600.0, 5)


def test_volume_falling_means_a_new_day_and_resets_the_baseline() -> None:
    merger = QuoteMerger()
    merger.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=9_000_000, TRADE_TIME_MILLIS=T0))
    assert merger.apply(snap(TOTAL_VOLUME=200, TRADE_TIME_MILLIS=T0 + 86_400_000)) is None
    tick = merger.apply(snap(TOTAL_VOLUME=260))
    assert tick is not None and tick.volume == 60


@pytest.mark.parametrize(
    "item",
    [
        {"LAST_PRICE": 500.0},  # no key
        snap(LAST_PRICE=math.nan),
        snap(LAST_PRICE=-1.0),
        snap(LAST_PRICE="500"),
        snap(TOTAL_VOLUME=-5),
        snap(TOTAL_VOLUME=10.5),
        snap(TOTAL_VOLUME=math.inf),
        snap(TRADE_TIME_MILLIS=True),
    ],
)
def test_bad_items_raise_and_merge_nothing(item: dict[str, Any]) -> None:
    merger = QuoteMerger()
    merger.apply(snap(LAST_PRICE=500.0, TOTAL_VOLUME=100, TRADE_TIME_MILLIS=T0))
    with pytest.raises(BadFrame):
        merger.apply(item)
    tick = merger.apply(snap(TOTAL_VOLUME=150))
    assert tick is not None and (tick.price, tick.volume) == (500.0, 50)
