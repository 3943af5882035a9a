"""Plain computations of what the code under test must produce: equity_data and indicators rows
(pandas), Schwab-shaped candles (a group-by)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from streaming_service.simulator.market import Event

MINUTE_MS = 60_000


def candles_of(
    trades: Iterable[Event],
    open_ms: int,
    *,
    minutes: int = 1,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Schwab-shaped candles of `trades` (one symbol's), by a plain group-by on the period start
    (periods aligned to the open, also before it); only periods starting in `start_ms..end_ms`."""
    period = minutes * MINUTE_MS
    groups: dict[int, list[Event]] = {}
    for trade in trades:
        groups.setdefault(open_ms + (trade.timestamp_ms - open_ms) // period * period, []).append(trade)
    return [
        {
            "open": group[0].price,
            "high": max(t.price for t in group),
            "low": min(t.price for t in group),
            "close": group[-1].price,
            "volume": sum(t.size for t in group),
            "datetime": start,
        }
        for start, group in sorted(groups.items())
        if (start_ms is None or start >= start_ms) and (end_ms is None or start <= end_ms)
    ]


def reference_rows(trades: pd.DataFrame, resolution_s: int) -> pd.DataFrame:
    """What equity_data/indicators must hold, computed the plain way with pandas."""
    df = trades.copy()
    df["bucket"] = df.ms - df.ms % (resolution_s * 1000) if resolution_s else df.ms
    df["notional"] = df.price * df["size"]
    df["vwap"] = df.notional.cumsum() / df["size"].cumsum()  # one regular session: one segment
    df["bar"] = df.ms // 60_000
    closes = df.groupby("bar").price.last()
    prior_8 = closes.shift(1).rolling(8).sum()  # the 8 completed bars before each bar
    df["sma9"] = (df.bar.map(prior_8) + df.price) / 9
    rows = df.groupby("bucket").agg(
        price=("price", "last"), volume=("size", "sum"), vwap=("vwap", "last"), sma9=("sma9", "last")
    )
    return rows.reset_index()
