"""The contract every sink fulfils, and what every sink shares: the tables' keys and columns, the
one classification of database errors (`classify_sqlstate`), and which rows cannot be stored at all
(`unstorable`)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from streaming_service.models import Batch, OptionRow, TableRow

__all__ = [
    "TABLE_COLUMNS",
    "UNIQUE_KEYS",
    "ErrorKind",
    "Sink",
    "classify_sqlstate",
    "last_per_key",
    "option_values",
    "unstorable",
]

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


ErrorKind = Literal["bad_rows", "unavailable", "rejected"]

#: SQLSTATE classes worth retrying: connection, transaction state (a read-only standby during a
#: failover), routines/triggers, rollback (serialization, deadlock), resources, program limits,
#: object state (locks), operator intervention (shutdown, statement timeout), system and internal
#: errors — those PostgREST answers with a 5xx.
_TRANSIENT_CLASSES = frozenset({"08", "09", "25", "2D", "38", "39", "3B", "40", "53", "54", "55", "57", "58",
                                "F0", "HV", "P0", "XX"})  # fmt: skip


def classify_sqlstate(code: str) -> ErrorKind:
    """What a Postgres error means for the rows that caused it, by SQLSTATE: `bad_rows` (data
    exceptions, class 22; integrity violations, class 23; 21000, a row updated twice), `unavailable`
    (the classes above, except P0001, an explicit RAISE), else `rejected` (28 credentials, 42 schema
    or privileges, 3D000 no such database, …)."""
    if code[:2] in ("22", "23") or code == "21000":
        return "bad_rows"
    if code[:2] in _TRANSIENT_CLASSES and code != "P0001":
        return "unavailable"
    return "rejected"


def unstorable(row: TableRow) -> tuple[str, str] | None:
    """(code, message) if no database should be sent `row`: a NaN or infinite number
    (`non-finite`), or a timestamp without a timezone (`naive-timestamp`); else None."""
    ts: datetime = row.timestamp
    if ts.tzinfo is None or ts.utcoffset() is None:
        return "naive-timestamp", f"timestamp {ts.isoformat()} has no timezone; rows must be aware UTC"
    for name in row.__slots__:
        value = getattr(row, name)
        if isinstance(value, float) and not math.isfinite(value):
            return "non-finite", f"{name} is {value!r}: NaN and infinity cannot be stored"
    return None


class Sink(Protocol):
    """Somewhere rows are stored.

    - `open()` connects and makes sure the three tables exist (creating them only where the sink owns
      the schema); raises `SinkUnavailable` if the database cannot be reached, `SinkRejected` if it can
      be reached but not used (bad credentials, wrong schema, an unwritable dead-letter file).
    - `write(batch)` stores the batch's rows as upserts on each table's UNIQUE key: replaying a batch
      changes nothing. It never raises because of the data: a row the database refuses (SQLSTATE class
      22 or 23, or 21000; a CHECK or NOT NULL failure), or that cannot be stored at all (NaN, infinity,
      a naive timestamp), is isolated from the others, which are written, and goes to the dead-letter
      file once (`dead_letters`, see `sinks.dead_letters`). It raises `SinkUnavailable` when the same
      batch may be retried (network, timeouts, HTTP 408/429/5xx, database restarting or locked;
      `retry_after` set when the server said how long to wait), and `SinkRejected` when retrying
      cannot help (credentials, permissions, a missing table or column): the service stops.
      After either, the batch is to be written again whole; rows it already committed are upserts.
    - `aclose()` releases connections; idempotent.
    - `name` is a short label for logs and the status line; it never contains credentials.

    The sinks of this package also have `dead_letters` (a `DeadLetters`): `dead_letters.count` is how
    many refused rows they have written to the dead-letter file (not part of the protocol).
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None: ...

    async def aclose(self) -> None: ...


def option_values(row: OptionRow) -> tuple[Any, ...]:
    """The row's values in `TABLE_COLUMNS["option_prices"]` order (`timestamp` a datetime,
    `expiration_date` a date), unchecked: `unstorable(row)` is what refuses NaN and infinity."""
    return (
        row.ticker, row.timestamp, row.option_type, row.strike_price, row.expiration_date,
        row.last_price, row.bid, row.ask, row.volume, row.open_interest, row.implied_volatility,
        row.delta, row.gamma, row.theta, row.vega, row.option_symbol,
    )  # fmt: skip


class _Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


_R = TypeVar("_R", bound=_Keyed)


def last_per_key(rows: Iterable[_R]) -> list[_R]:
    """One row per UNIQUE key, the last one winning, order kept (one statement cannot update a row
    twice)."""
    return list({row.key: row for row in rows}.values())
