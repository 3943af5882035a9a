"""Supabase sink: upserts through Supabase's REST API (PostgREST) with the supabase-py async client.

One `upsert(rows, on_conflict=<unique key>, returning="minimal")` request per table per batch;
PostgREST runs each request as one statement in one transaction. Errors are mapped here:

- network errors, timeouts, HTTP 5xx, PGRST000-003 → `SinkUnavailable`: the batcher retries the
  batch (exponential backoff with jitter, capped) until it is written. Tables of that batch already
  written are not sent again.
- bad data (SQLSTATE class 22 or 23, or 21000): the request is split in halves until the offending
  rows are isolated; the others are written, each rejected row goes with its error to the dead-letter
  file (JSON lines) and is logged once. Non-finite numbers, which the client refuses to encode, are
  dead-lettered without a request.
- refused credentials or permissions (401/403, 42501, PGRST301/302) → `SinkRejected` naming
  SUPABASE_SERVICE_ROLE_KEY; a missing table or column → `SinkRejected` saying to apply the migrations.

The key never appears in names, logs or reprs.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow, OptionRow
from streaming_service.sinks.base import TABLE_COLUMNS, UNIQUE_KEYS, last_per_key, option_values

if TYPE_CHECKING:
    from postgrest import APIError
    from supabase import AsyncClient

__all__ = ["SupabaseSink"]

log = structlog.get_logger(__name__)

_KEY_HELP = (
    "check SUPABASE_SERVICE_ROLE_KEY: it must be the project's service_role key "
    "(Dashboard → Project Settings → API keys), not the anon/publishable key"
)
_SCHEMA_HELP = (
    "the project's tables do not match what the service writes: apply supabase/migrations "
    "(README, 'Supabase')"
)
#: Codes meaning the key may not do this: permission denied, bad JWT, HTTP 401/403.
AUTH_CODES = frozenset({"42501", "PGRST301", "PGRST302", "401", "403"})

Row = dict[str, Any]
_Kind = Literal["bad_rows", "rejected", "unavailable"]


class _BadRows(Exception):
    """The database refused the data of this request (not the connection or the credentials)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class SupabaseSink:
    """Writes batches to a Supabase project's tables over REST. See the module docstring."""

    def __init__(self, url: str, key: str, *, dead_letter_path: Path, timeout: float = 10.0) -> None:
        self.name = f"supabase:{urlsplit(url).hostname or url}"
        self.dead_letters = 0
        self._url = url
        self._key = key
        self._timeout = timeout
        self._dead_letter_path = dead_letter_path
        self._client: AsyncClient | None = None
        self._session: httpx.AsyncClient | None = None
        self._retrying: tuple[Batch, set[str]] | None = None  # a batch being retried, tables done

    def __repr__(self) -> str:
        return f"SupabaseSink({self.name!r})"

    async def open(self) -> None:
        """Create the client and check that the tables and columns exist. Raises `SinkError`s."""
        client = await self.connect()
        for table, columns in TABLE_COLUMNS.items():
            await self._request(table, client.table(table).select(",".join(columns)).limit(1))

    async def write(self, batch: Batch) -> None:
        """Upsert the batch, one request per table; see the module docstring for errors."""
        await self.connect()
        done = self._retrying[1] if self._retrying and self._retrying[0] is batch else set()
        self._retrying = (batch, done)
        tables: dict[str, list[Row]] = {
            "equity_data": [_equity(row) for row in last_per_key(batch.equity)],
            "indicators": [_indicator(row) for row in last_per_key(batch.indicators)],
            "option_prices": [_option(row) for row in last_per_key(batch.options)],
        }
        for table, rows in tables.items():
            if rows and table not in done:
                await self._upsert(table, rows)
                done.add(table)
        self._retrying = None

    async def aclose(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.aclose()

    async def connect(self) -> AsyncClient:
        """The supabase-py client, created on first call (no request is sent).

        Raises `SinkRejected` if supabase-py refuses the URL or key."""
        if self._client is not None:
            return self._client
        from supabase import AsyncClientOptions, acreate_client

        # Our own retry policy (the batcher's) governs; the HTTP client only bounds each request.
        session = httpx.AsyncClient(timeout=self._timeout, follow_redirects=True)
        options = AsyncClientOptions(httpx_client=session, postgrest_client_retry=False)
        try:
            self._client = await acreate_client(self._url, self._key, options=options)
        except Exception as exc:  # SupabaseException: invalid URL or key
            await session.aclose()
            raise SinkRejected(f"{self.name}: cannot create the Supabase client: {exc}") from None
        self._session = session
        return self._client

    # --- internals ---------------------------------------------------------------------------------

    async def _upsert(self, table: str, rows: list[Row]) -> None:
        """Write `rows`; isolate and dead-letter the rows the database refuses."""
        sendable = []
        for row in rows:
            if all(not isinstance(v, float) or math.isfinite(v) for v in row.values()):
                sendable.append(row)
            else:
                self._dead_letter(table, row, "non-finite", "NaN or infinite value: JSON cannot carry it")
        await self._bisect(table, sendable)

    async def _bisect(self, table: str, rows: list[Row]) -> None:
        if not rows:
            return
        request = (await self.connect()).table(table).upsert(
            rows,
            on_conflict=",".join(UNIQUE_KEYS[table]),
            returning="minimal",  # type: ignore[arg-type]
        )
        try:
            await self._request(table, request)
        except _BadRows as exc:
            if len(rows) == 1:
                self._dead_letter(table, rows[0], exc.code, exc.message)
                return
            middle = len(rows) // 2
            await self._bisect(table, rows[:middle])
            await self._bisect(table, rows[middle:])

    async def _request(self, table: str, request: Any) -> None:
        from postgrest import APIError

        try:
            await request.execute()
        except APIError as exc:
            kind = _classify(exc)
            code, message = str(exc.code), str(exc.message)
            if kind == "bad_rows":
                raise _BadRows(code, message) from None
            if kind == "unavailable":
                raise SinkUnavailable(f"{self.name}: {table}: {code} {message}") from None
            fix = _KEY_HELP if code in AUTH_CODES or code.startswith("28") else _SCHEMA_HELP
            raise SinkRejected(f"{self.name}: {table}: {code} {message}; {fix}") from None
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise SinkUnavailable(f"{self.name}: {table}: {reason}") from None

    def _dead_letter(self, table: str, row: Row, code: str, message: str) -> None:
        now = datetime.now(UTC).isoformat()
        record = {"at": now, "table": table, "code": code, "error": message, "row": row}
        self._dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
        with self._dead_letter_path.open("a") as file:
            file.write(json.dumps(record, default=str) + "\n")
        self.dead_letters += 1
        log.error(
            "row rejected, written to the dead-letter file",
            table=table,
            code=code,
            error=message,
            row=json.dumps(row, default=str),
            file=str(self._dead_letter_path),
            dead_letters=self.dead_letters,
        )


def _classify(exc: APIError) -> _Kind:
    """What a PostgREST error means for the batch, from its SQLSTATE or PGRST code (or, for a
    non-JSON proxy answer, the HTTP status as a string)."""
    code = str(exc.code or "")
    if code[:2] in ("22", "23") or code == "21000":
        return "bad_rows"
    if code.startswith("PGRST00") or (code.isdigit() and code.startswith("5")):
        return "unavailable"  # PostgREST cannot reach the database; gateway or proxy trouble
    if code[:2] in _TRANSIENT_CLASSES and code != "P0001":
        return "unavailable"
    return "rejected"


#: SQLSTATE classes PostgREST answers with 5xx: connection, resources, operator intervention,
#: transaction rollback (serialization, deadlock), internal errors. Worth retrying.
_TRANSIENT_CLASSES = frozenset({"08", "09", "25", "2D", "38", "39", "3B", "40", "53", "54", "55", "57", "58",
                                "F0", "HV", "P0", "XX"})  # fmt: skip


def _equity(row: EquityRow) -> Row:
    return {
        "ticker": row.ticker,
        "timestamp": row.timestamp.isoformat(),
        "price": round(row.price, 2),
        "volume": row.volume,
    }


def _indicator(row: IndicatorRow) -> Row:
    return {
        "ticker": row.ticker,
        "timestamp": row.timestamp.isoformat(),
        "sma9": None if row.sma9 is None else round(row.sma9, 2),
        "vwap": None if row.vwap is None else round(row.vwap, 2),
    }


def _option(row: OptionRow) -> Row:
    values = option_values(row, check_finite=False)  # non-finite values are dead-lettered by _upsert
    record = dict(zip(TABLE_COLUMNS["option_prices"], values, strict=True))
    record["timestamp"] = row.timestamp.isoformat()
    record["expiration_date"] = row.expiration_date.isoformat()
    return record

