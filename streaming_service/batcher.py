"""Collect rows and write them in batches: at `size` equity rows or every `interval` seconds.

Rows wait in a dict keyed by (ticker, timestamp), so a row emitted twice before a write is written
once, with its latest values. Option snapshot rows (`add_options`) wait the same way, keyed by
their UNIQUE key, and wake the writer: one snapshot, one write. Writing happens in `run()`'s task;
`add()` never waits for the database, so a slow or unreachable sink never stalls the stream. A
failed write of a batch is retried (`SinkUnavailable`, exponential backoff with jitter, capped)
until it succeeds; rows that arrive meanwhile are kept and written after it, together (a batch
takes everything pending, up to `MAX_BATCH_ROWS`), so a backlog costs few writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from streaming_service.errors import SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow, OptionRow
from streaming_service.pipeline import RowPair
from streaming_service.sinks.base import Sink

__all__ = ["Batcher", "WriteStats"]

log = structlog.get_logger(__name__)
#: Upper bound of one write, so a backlog after an outage goes out in reasonably sized requests.
MAX_BATCH_ROWS = 5000
_Key = tuple[str, datetime]


@dataclass(slots=True)
class WriteStats:
    """Counters for the status line."""

    rows_written: int = 0  # all tables
    option_rows_written: int = 0
    batches: int = 0
    write_errors: int = 0
    last_write_at: float | None = None
    last_error: str | None = field(default=None)


class Batcher:
    """See the module docstring. Use: `add()` from the stream, `run()` as a task, `close()` to stop."""

    def __init__(
        self,
        sink: Sink,
        *,
        size: int,
        interval: float,
        drain: Callable[[], list[RowPair]] = list,
        max_retry_wait: float = 60.0,
    ) -> None:
        self._sink = sink
        self._size = size
        self._interval = interval
        self._drain = drain
        self._max_retry_wait = max_retry_wait
        self._equity: dict[_Key, EquityRow] = {}
        self._indicators: dict[_Key, IndicatorRow] = {}
        self._options: dict[tuple[object, ...], OptionRow] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = asyncio.Event()
        self._in_flight = 0
        self.stats = WriteStats()

    @property
    def pending(self) -> int:
        """Equity and option rows waiting to be written."""
        return len(self._equity) + len(self._options)

    def add(self, pair: RowPair) -> None:
        """Queue a row pair; wakes the writer when `size` equity rows are waiting. Never blocks."""
        equity, indicator = pair
        self._equity[equity.key] = equity
        self._indicators[equity.key] = indicator
        if len(self._equity) >= self._size:
            self._wake.set()

    def add_options(self, rows: list[OptionRow]) -> None:
        """Queue an option snapshot and wake the writer. Never blocks."""
        for row in rows:
            self._options[row.key] = row
        if rows:
            self._wake.set()

    async def run(self) -> None:
        """Write batches until `close()`; then write what is left (open rows included) and return.

        Raises `SinkRejected` if the sink refuses a batch (the service stops: see the log line).
        """
        try:
            while not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                except TimeoutError:
                    for pair in self._drain():  # interval elapsed: include rows still open
                        self.add(pair)
                self._wake.clear()
                await self._write_pending()
            for pair in self._drain():
                self.add(pair)
            await self._write_pending()
        finally:
            self._closed.set()

    async def close(self, grace: float = 20.0) -> None:
        """Ask `run()` to flush everything and stop; wait up to `grace` seconds for it."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._closed.wait(), timeout=grace)
        except TimeoutError:
            log.error(
                "final flush timed out; rows not written",
                rows=self.pending + self._in_flight,
                grace_s=grace,
            )

    async def _write_pending(self) -> None:
        """Write what is pending, in batches of at most `MAX_BATCH_ROWS` equity rows."""
        while self._equity or self._indicators or self._options:
            keys = list(self._equity)[:MAX_BATCH_ROWS] or list(self._indicators)[:MAX_BATCH_ROWS]
            option_keys = list(self._options)[:MAX_BATCH_ROWS]
            batch = Batch(
                tuple(self._equity.pop(k) for k in keys if k in self._equity),
                tuple(self._indicators.pop(k) for k in keys if k in self._indicators),
                tuple(self._options.pop(k) for k in option_keys),
            )
            self._in_flight = len(batch.equity) + len(batch.options)
            await self._write_with_retry(batch)
            self._in_flight = 0
            if len(self._equity) < self._size and not self._options and not self._closing:
                return

    async def _write_with_retry(self, batch: Batch) -> None:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.stats.write_errors += 1
            self.stats.last_error = str(exc)
            log.warning(
                "write failed, retrying",
                sink=self._sink.name,
                rows=len(batch),
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 1),
                error=str(exc),
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(SinkUnavailable),
            wait=wait_exponential_jitter(max=self._max_retry_wait),
            stop=stop_after_delay(self._max_retry_wait * 2) if self._closing else stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._sink.write(batch)
        self.stats.rows_written += len(batch)
        self.stats.option_rows_written += len(batch.options)
        self.stats.batches += 1
        self.stats.last_write_at = time.time()
        log.debug("batch written", sink=self._sink.name, rows=len(batch))
