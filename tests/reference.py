"""The plain pandas computation of what equity_data and indicators must hold for a list of trades."""

from __future__ import annotations

import pandas as pd


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
