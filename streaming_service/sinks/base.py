"""The contract every sink fulfils."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Any, Protocol, TypeVar

from streaming_service.models import Batch, OptionRow

__all__ = ["TABLE_COLUMNS", "UNIQUE_KEYS", "Sink", "last_per_key", "option_values"]

#: The UNIQUE key of each table: what every upsert conflicts on.
UNIQUE_KEYS: dict[str, tuple[str, ...]] = {
    "equity_data": ("ticker", "timestamp"),
    "indicators": ("ticker", "timestamp"),
    "option_prices": ("ticker", "timestamp", "option_type", "strike_price", "expiration_date"),
}
#: The columns the service writes (besides `id` and `created_at`), per table.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "equity_data": ("ticker", "timestamp", "price", "volume"),
    "indicators": ("ticker", "timestamp", "sma9", "vwap"),
    "option_prices": (
        *UNIQUE_KEYS["option_prices"],
        *("last_price", "bid", "ask", "volume", "open_interest", "implied_volatility"),
        *("delta", "gamma", "theta", "vega", "option_symbol"),
    ),
}


class Sink(Protocol):
    """Somewhere rows are stored.

    - `open()` connects and makes sure the three tables exist (creating them only where the sink owns
      the schema); raises `SinkUnavailable` if the database cannot be reached, `SinkRejected` if it can
      be reached but not used (bad credentials, wrong schema).
    - `write(batch)` stores every row of the batch in one transaction, as an upsert on each table's
      UNIQUE key: replaying a batch changes nothing. Raises `SinkUnavailable` when the same batch may be
      retried, `SinkRejected` otherwise; after either, nothing of the batch is committed.
    - `aclose()` releases connections; idempotent.
    - `name` is a short label for logs and the status line; it never contains credentials.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None: ...

    async def aclose(self) -> None: ...


def option_values(row: OptionRow, *, check_finite: bool = True) -> tuple[Any, ...]:
    """The row's values in `TABLE_COLUMNS["option_prices"]` order (`timestamp` a datetime,
    `expiration_date` a date). Raises `ValueError` for a NaN or infinite number if `check_finite`."""
    values = (
        row.ticker, row.timestamp, row.option_type, row.strike_price, row.expiration_date,
        row.last_price, row.bid, row.ask, row.volume, row.open_interest, row.implied_volatility,
        row.delta, row.gamma, row.theta, row.vega, row.option_symbol,
    )  # fmt: skip
    for value in values if check_finite else ():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"option {row.option_symbol}: cannot store {value!r}")
    return values


class _Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


_R = TypeVar("_R", bound=_Keyed)


def last_per_key(rows: Iterable[_R]) -> list[_R]:
    """One row per UNIQUE key, the last one winning, order kept (one statement cannot update a row
    twice)."""
    return list({row.key: row for row in rows}.values())
