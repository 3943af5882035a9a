"""Supabase sink: upserts through Supabase's REST API (PostgREST) with the supabase-py async client.

One `upsert(rows, on_conflict=<unique key>, returning="minimal")` request per table per batch;
PostgREST runs each request as one statement in one transaction. Every failed answer is classified
once, by `classify_answer(status, headers, body)`: HTTP status first, then the SQLSTATE or PGRST code
of the body (which a gateway or proxy answer does not have). supabase-py's `APIError` carries no
HTTP status, so the sink reads it at the boundary: a response hook on the `httpx.AsyncClient` it
gives supabase-py keeps the last failed answer (one request at a time per sink).

- 401/403 → `SinkRejected` naming SUPABASE_SERVICE_ROLE_KEY (also the gateway's
  `{"message":"Invalid API key"}`, which has no code);
- 404, or a PGRST2xx code (unknown table or column) → `SinkRejected` saying to apply the migrations
  (`TableMissing` when the table does not exist);
- 408, 429, 5xx, network errors, timeouts → `SinkUnavailable`, with `retry_after` from a
  `Retry-After` header (seconds or an HTTP date): the batcher retries the batch. Tables of that
  batch already written are not sent again;
- bad data (SQLSTATE class 22 or 23, or 21000, whatever the status): the request is split in halves
  until the offending rows are isolated; the others are written, and each refused row goes to the
  dead-letter file (`sinks.dead_letters`) once. Rows with NaN, infinity or a naive timestamp are
  dead-lettered without a request;
- any other refusal (42xxx, PGRST1xx, …) → `SinkRejected`.

The sink does not own the schema: a project without an optional table, `stream_gaps` or
`volume_checks` (its migration not applied), gets one warning, at `open()` or at the first row for
it, and those rows are dropped (`gaps_dropped`, `checks_dropped`) while the other tables are
written. `latest_volume_checks` reads that table (none: an empty list).

`recorded_rows` reads with GETs (`ticker=eq.`, `timestamp=gte./lt.`, `order=timestamp.asc`,
`limit`), a page at a time: each next page starts after the last timestamp seen (keyset), and
reading stops at an empty page, so a server whose max-rows cap is below the page size (which
makes a full page look short) still gives every row.

The key never appears in names, logs or reprs.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import Batch, TableRow, VolumeCheckRow
from streaming_service.sinks.base import (
    OPTIONAL_TABLES,
    PROBE_TIMEOUT_S,
    TABLE_COLUMNS,
    UNIQUE_KEYS,
    ErrorKind,
    RecordedRow,
    check_window,
    classify_sqlstate,
    encoded_values,
    recorded_row,
    volume_check_row,
    warn_missing_table,
)
from streaming_service.sinks.dead_letters import DeadLetters, Refused, row_values, split_storable

if TYPE_CHECKING:
    from supabase import AsyncClient

__all__ = ["AUTH_CODES", "Answer", "BadRows", "SupabaseSink", "TableMissing", "classify_answer"]

_KEY_HELP = (
    "check SUPABASE_SERVICE_ROLE_KEY: it must be the project's service_role key "
    "(Dashboard → Project Settings → API keys), not the anon/publishable key"
)
_SCHEMA_HELP = (
    "the project's tables do not match what the service writes: apply supabase/migrations "
    "(docs/deployment.md, 'Supabase')"
)
_URL_HELP = "check SUPABASE_URL (https://<project>.supabase.co) and apply supabase/migrations"
#: Codes meaning the key may not do this: permission denied, bad JWT, HTTP 401/403.
AUTH_CODES = frozenset({"42501", "PGRST301", "PGRST302", "401", "403"})
#: Codes meaning the table does not exist (PostgREST's schema cache; Postgres).
_NO_TABLE_CODES = frozenset({"PGRST205", "42P01"})

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a failed answer means: `kind`; `code` (SQLSTATE, PGRST code, or "" when the body has
    none); `message` (says the status, the code and the server's words); `fix` for a rejection;
    `retry_after` in seconds when the server said so."""

    kind: ErrorKind
    code: str
    message: str
    fix: str = ""
    retry_after: float | None = None


def classify_answer(
    status: int, headers: Mapping[str, str], body: bytes, *, now: datetime | None = None
) -> Answer:
    """The one mapping of a failed HTTP answer (status ≥ 400) to what the sink does: by status
    first, then by the body's code; see the module docstring. `headers` must be case-insensitive
    (httpx.Headers) or lower-case; `now` is for HTTP-date Retry-After values."""
    code, words = _parse_body(status, headers, body)
    message = f"HTTP {status}" + (f" [{code}]" if code else "") + f" {words}"
    if status in (401, 403):
        return Answer("rejected", code, message, _KEY_HELP)
    if status == 404:
        return Answer("rejected", code, message, _SCHEMA_HELP if code else _URL_HELP)
    if status in (408, 429):
        return Answer("unavailable", code, message, retry_after=_retry_after(headers, now))
    if code and classify_sqlstate(code) == "bad_rows":  # 400, 409, or 500 for 21000
        return Answer("bad_rows", code, words)
    if status >= 500:
        return Answer("unavailable", code, message, retry_after=_retry_after(headers, now))
    if code in AUTH_CODES or code.startswith("28"):
        return Answer("rejected", code, message, _KEY_HELP)
    return Answer("rejected", code, message, _SCHEMA_HELP if code else _URL_HELP)


def _parse_body(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
    """(code, words): PostgREST's `{"code", "message", ...}`, a gateway's `{"message"}`, or a
    proxy's text or HTML page (words = the status's reason phrase and the start of the text)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    if isinstance(data, dict) and (data.get("message") or data.get("code")):
        code = str(data.get("code") or "")
        words = "; ".join(str(data.get(k)) for k in ("message", "details") if data.get(k))
        return code, words or "(no message)"
    proxy = str(headers.get("proxy-status", ""))
    code = proxy.partition("error=")[2].split(";")[0].strip() if "error=" in proxy else ""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    text = " ".join(body.decode(errors="replace").split())
    if "html" in str(headers.get("content-type", "")).lower() or text.startswith("<"):
        text = "(an HTML page: a proxy or gateway answered, not PostgREST)"
    return code, f"{phrase}: {text[:200]}" if text else phrase


def _retry_after(headers: Mapping[str, str], now: datetime | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date); None if absent or invalid."""
    value = str(headers.get("retry-after", "")).strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class BadRows(Exception):
    """The database refused the data of this request (not the connection or the credentials)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class TableMissing(SinkRejected):
    """The project has no such table (PGRST205 or 42P01): its migration was not applied."""


class SupabaseSink:
    """Writes batches to a Supabase project's tables over REST. See the module docstring.

    `timeout` bounds each request, in seconds. `dead_letter_path` is the dead-letter file
    (None: `data/dead_letters.jsonl`); `dead_letters.count` counts the rows written there;
    `gaps_dropped` the gap rows dropped for want of `stream_gaps`, `checks_dropped` the check rows
    for want of `volume_checks`. `page_size` is how many rows
    `recorded_rows` asks for per request.
    """

    page_size = 1000

    def __init__(
        self, url: str, key: str, *, dead_letter_path: Path | None = None, timeout: float = 10.0
    ) -> None:
        self.name = f"supabase:{urlsplit(url).hostname or url}"
        self.dead_letters = DeadLetters(dead_letter_path)
        self._url = url
        self._key = key
        self._timeout = timeout
        self._client: AsyncClient | None = None
        self._session: httpx.AsyncClient | None = None
        self._failed: httpx.Response | None = None  # the last failed answer (see _keep_failed)
        self._retrying: tuple[Batch, set[str]] | None = None  # a batch being retried, tables done
        self._missing_optional: set[str] = set()  # optional tables found missing
        self.gaps_dropped = 0
        self.checks_dropped = 0

    def __repr__(self) -> str:
        return f"SupabaseSink({self.name!r})"

    async def open(self) -> None:
        """Create the client and check that the tables and columns exist, and that the dead-letter
        file can be written. Raises `SinkError`s; a missing optional table only warns (see the
        module docstring)."""
        await self.dead_letters.check()
        client = await self.connect()
        for table, columns in TABLE_COLUMNS.items():
            try:
                await self.request(table, client.table(table).select(",".join(columns)).limit(1))
            except TableMissing as exc:
                if table not in OPTIONAL_TABLES:
                    raise
                self._no_table(table, exc)

    async def write(self, batch: Batch) -> None:
        """Upsert the batch, one request per table; see the module docstring for errors."""
        await self.connect()
        done = self._retrying[1] if self._retrying and self._retrying[0] is batch else set()
        self._retrying = (batch, done)
        tables, unstorable = split_storable(batch)
        await self.dead_letters.add(unstorable)
        for table, models in tables.items():
            if table not in done:
                await self.dead_letters.add(await self._write_table(table, models))  # before `done`
                done.add(table)
        self._retrying = None

    async def recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]:
        """The `Sink.recorded_rows` contract: equity_data and indicators read a page at a time (see
        the module docstring) and joined here. Raises `ValueError` for naive bounds,
        `SinkUnavailable` or `SinkRejected` (a refused filter value too)."""
        check_window(since, until)
        equity = await self._select_window("equity_data", ("price", "volume"), ticker, since, until)
        indicators = {
            datetime.fromisoformat(row["timestamp"]): row
            for row in await self._select_window("indicators", ("sma9", "vwap"), ticker, since, until)
        }
        recorded = []
        for row in equity:
            ts = datetime.fromisoformat(row["timestamp"])
            found = indicators.get(ts)
            values = found or {}
            recorded.append(
                recorded_row(
                    ticker, ts, row["price"], row["volume"], found is not None, values.get("sma9"),
                    values.get("vwap"),
                )
            )  # fmt: skip
        return recorded

    async def probe(self) -> bool:
        """One `GET /rest/v1/equity_data?select=ticker&limit=0` through `request`, within
        `PROBE_TIMEOUT_S`: True if the project answered (a refusal counts as an answer: the retried
        call reports it), False on 408/429/5xx, network errors and timeouts. Never raises a
        `SinkError`; safe to cancel."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                client = await self.connect()
                await self.request("equity_data", client.table("equity_data").select("ticker").limit(0))
        except (SinkUnavailable, TimeoutError):
            return False
        except (SinkRejected, BadRows):
            return True
        return True

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
        session = httpx.AsyncClient(
            timeout=self._timeout, follow_redirects=True, event_hooks={"response": [self._keep_failed]}
        )
        options = AsyncClientOptions(httpx_client=session, postgrest_client_retry=False)
        try:
            self._client = await acreate_client(self._url, self._key, options=options)
        except Exception as exc:  # SupabaseException: invalid URL or key
            await session.aclose()
            raise SinkRejected(f"{self.name}: cannot create the Supabase client: {exc}") from None
        self._session = session
        return self._client

    # --- internals ---------------------------------------------------------------------------------

    async def _keep_failed(self, response: httpx.Response) -> None:
        """httpx response hook: remember a failed answer, body read, for `request` to classify."""
        if response.status_code >= 400:
            await response.aread()
            self._failed = response

    def _no_table(self, table: str, exc: TableMissing) -> None:
        if table not in self._missing_optional:
            self._missing_optional.add(table)
            warn_missing_table(self.name, table, str(exc).partition("; ")[0])

    async def _write_table(self, table: str, models: list[TableRow]) -> list[Refused]:
        """Upsert one table's rows; return those refused. Rows of a missing optional table are
        dropped (and counted)."""
        if table not in self._missing_optional:
            try:
                return await self._bisect(table, [(model, _row(table, model)) for model in models])
            except TableMissing as exc:
                if table not in OPTIONAL_TABLES:
                    raise
                self._no_table(table, exc)
        if table == "stream_gaps":
            self.gaps_dropped += len(models)
        else:
            self.checks_dropped += len(models)
        return []

    async def latest_volume_checks(self) -> list[VolumeCheckRow]:
        """The `VolumeChecksReader` contract, from the newest 1000 rows (by day): each ticker's
        latest. Raises `SinkUnavailable` or `SinkRejected`; [] without the table."""
        if "volume_checks" in self._missing_optional:
            return []
        client = await self.connect()
        columns = TABLE_COLUMNS["volume_checks"]
        request = client.table("volume_checks").select(",".join(columns)).order("day", desc=True).limit(1000)
        try:
            rows: list[Row] = (await self.request("volume_checks", request)).data
        except TableMissing:
            return []
        except BadRows as exc:
            reason = f"reading refused: [{exc.code}] {exc.message}"
            raise SinkRejected(f"{self.name}: volume_checks: {reason}") from None
        latest: dict[str, VolumeCheckRow] = {}
        for row in rows:
            check = volume_check_row(tuple(row[c] for c in columns))
            if check.ticker not in latest or check.day > latest[check.ticker].day:
                latest[check.ticker] = check
        return [latest[ticker] for ticker in sorted(latest)]

    async def _select_window(
        self, table: str, columns: tuple[str, ...], ticker: str, since: datetime, until: datetime
    ) -> list[Row]:
        """`table`'s rows of `ticker` with since <= timestamp < until, ascending, with `timestamp`
        and `columns`: keyset pages of `page_size` until an empty one."""
        client = await self.connect()
        rows: list[Row] = []
        while True:
            request = (
                client.table(table)
                .select(",".join(("timestamp", *columns)))
                .eq("ticker", ticker)
                .lt("timestamp", until.isoformat())
                .order("timestamp")
                .limit(self.page_size)
            )
            if rows:
                request = request.gt("timestamp", rows[-1]["timestamp"])
            else:
                request = request.gte("timestamp", since.isoformat())
            try:
                page: list[Row] = (await self.request(table, request)).data
            except BadRows as exc:
                reason = f"reading refused: [{exc.code}] {exc.message}"
                raise SinkRejected(f"{self.name}: {table}: {reason}") from None
            if not page:
                return rows
            rows += page

    async def _bisect(self, table: str, rows: list[tuple[TableRow, Row]]) -> list[Refused]:
        """Upsert `rows` (not empty), halving on `BadRows` until the refused rows are isolated;
        return them."""
        client = await self.connect()
        request = client.table(table).upsert(
            [row for _, row in rows],
            on_conflict=",".join(UNIQUE_KEYS[table]),
            returning="minimal",  # type: ignore[arg-type]
        )
        try:
            await self.request(table, request)
        except BadRows as exc:
            if len(rows) == 1:
                return [Refused(table, exc.code, exc.message, row_values(rows[0][0]))]
            middle = len(rows) // 2
            return await self._bisect(table, rows[:middle]) + await self._bisect(table, rows[middle:])
        return []

    async def request(self, table: str, request: Any) -> Any:
        """Send one request (a supabase-py request builder for `table`) through the one error
        mapping and return its answer (an `APIResponse`: `.data` holds a select's rows); raise
        `BadRows`, `SinkUnavailable` or `SinkRejected` (`TableMissing` for an unknown table) if it
        failed."""
        from postgrest import APIError

        self._failed = None
        try:
            return await request.execute()
        except APIError as exc:
            failed, self._failed = self._failed, None
            if failed is not None:
                answer = classify_answer(failed.status_code, failed.headers, failed.content)
            else:  # no answer seen (cannot happen with our session): classify by the body alone
                answer = classify_answer(0, {}, json.dumps(exc.json()).encode())
            if answer.kind == "bad_rows":
                raise BadRows(answer.code, answer.message) from None
            if answer.kind == "unavailable":
                raise SinkUnavailable(
                    f"{self.name}: {table}: {answer.message}", retry_after=answer.retry_after
                ) from None
            rejected = TableMissing if answer.code in _NO_TABLE_CODES else SinkRejected
            raise rejected(f"{self.name}: {table}: {answer.message}; {answer.fix}") from None
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise SinkUnavailable(f"{self.name}: {table}: {reason}") from None


def _row(table: str, model: TableRow) -> Row:
    """The row's JSON object: timestamps and dates ISO, prices rounded to the columns' scale
    (non-finite values were dead-lettered by split_storable)."""
    return dict(zip(TABLE_COLUMNS[table], encoded_values(table, model, datetime.isoformat), strict=True))
