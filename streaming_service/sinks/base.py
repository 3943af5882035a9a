"""The contract every sink fulfils."""

from __future__ import annotations

from typing import Protocol

from streaming_service.models import Batch

__all__ = ["TABLE_COLUMNS", "UNIQUE_KEYS", "Sink"]

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
