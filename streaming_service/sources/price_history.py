"""Schwab's 1-minute price history (`GET /marketdata/v1/pricehistory`), for filling gaps.

Equities only (Schwab keeps no option history), about the last 48 days. A candle covers one minute
from its `datetime` (epoch ms); minutes without trades have none. Extended hours are included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from streaming_service.sources.schwab_client import raise_for_auth_status, schwab_errors

__all__ = ["Candle", "PriceHistoryUnavailable", "minute_candles"]


@dataclass(frozen=True, slots=True)
class Candle:
    """One minute: it starts at `minute_ms` (epoch ms); `close` is its last price, `volume` its shares."""

    minute_ms: int
    close: float
    volume: int


class PriceHistoryUnavailable(Exception):
    """The price history could not be read or used this time (network, HTTP status, malformed body)."""


async def minute_candles(client: Any, symbol: str, start_ms: int, end_ms: int) -> list[Candle]:
    """`symbol`'s 1-minute candles starting in [start_ms, end_ms], oldest first.

    Raises `AuthError` (token refused) or `PriceHistoryUnavailable` (anything else)."""
    try:
        with schwab_errors("the price history request"):
            response = await client.get_price_history_every_minute(
                symbol,
                start_datetime=datetime.fromtimestamp(start_ms / 1000, UTC),
                end_datetime=datetime.fromtimestamp(end_ms / 1000, UTC),
                need_extended_hours_data=True,
            )
    except (httpx.HTTPError, OSError) as exc:
        raise PriceHistoryUnavailable(f"{symbol}: {type(exc).__name__}: {exc}") from exc
    raise_for_auth_status(response, f"the price history request for {symbol}")
    if response.status_code != 200:
        raise PriceHistoryUnavailable(f"{symbol}: HTTP {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
        candles = [_candle(c) for c in body.get("candles") or []]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise PriceHistoryUnavailable(f"{symbol}: unusable price history: {exc}") from None
    return sorted((c for c in candles if start_ms <= c.minute_ms <= end_ms), key=lambda c: c.minute_ms)


def _candle(raw: dict[str, Any]) -> Candle:
    minute, close, volume = raw["datetime"], raw["close"], raw["volume"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (minute, close, volume)):
        raise ValueError(f"candle fields are not numbers: {raw!r:.200}")
    if not (math.isfinite(close) and close > 0 and volume >= 0 and float(volume).is_integer()):
        raise ValueError(f"candle out of range: {raw!r:.200}")
    return Candle(int(minute), float(close), int(volume))
