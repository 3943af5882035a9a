"""The writer: rows go into the durable spool at once and out to the sink in batches.

`add()` / `add_options()` / `add_gap()` put rows into the spool's buffer (never waiting for
anything); a committer commits that buffer to disk every `commit_every` seconds (group commit:
250 ms, or `interval` if smaller), first pulling in the pipeline's open rows (`drain`), so a row
received is on disk within about that time. With `size` 1 (low-latency mode) every change is
written now instead: `add()` and `changed()` (an open row grew) wake the writer, which commits the
spool and writes at once; changes arriving during a write go out together in the next one.

Each commit with rows also writes `checkpoint()` (the state those rows leave the pipeline in) in
the same transaction; without rows, at most every `checkpoint_every` seconds. The writer takes
the oldest rows from the spool when `size` equity rows wait, an option snapshot arrived, or
`interval` seconds passed, writes them (up to `batch_rows` per write) and deletes them from the
spool only after the sink committed them. A write that fails with `SinkUnavailable` is
retried (exponential backoff with jitter, capped; a server's Retry-After is honoured) until it
succeeds, each attempt logged (the error itself with the first of an outage and when it
changes); while the backoff sleeps, the sink is probed every `PROBE_EVERY_S` (`Sink.probe()`,
cheap) and the write is retried as soon as a probe succeeds, so recovery does not wait for the
backoff. Rows arriving meanwhile wait on disk, so RAM stays flat during an outage of any length,
and the backlog then goes out in large batches. A sink that cannot be reached at start-up is
retried the same way: the stream runs into the spool meanwhile.

`hold()` keeps rows where they are while a reader looks for them (recovery reads the sink, then
the spool): no commit and no deletion from the spool meanwhile, so a row cannot slip between the two
reads. Writes go on (a row written while held is still in the spool too).

`close(grace)` ends it: commit, keep writing for at most `grace` seconds, then cancel the write in
flight. What was not written stays in the spool for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from streaming_service.errors import SinkUnavailable
from streaming_service.models import Batch, GapRow, OptionRow
from streaming_service.pipeline import RowPair
from streaming_service.sinks.base import Sink
from streaming_service.spool import Spool, SpoolError

__all__ = ["COMMIT_EVERY_S", "MAX_BATCH_ROWS", "PROBE_EVERY_S", "Batcher", "WriteStats"]

log = structlog.get_logger(__name__)
#: Rows per write when a backlog drains: large requests make catching up cheap.
MAX_BATCH_ROWS = 5000
#: The spool's group-commit period (the longest a received row waits before it is on disk).
COMMIT_EVERY_S = 0.25
#: Seconds between probes of a failing sink while a retry backoff sleeps.
PROBE_EVERY_S = 1.0
_SPOOL_ALERT_EVERY_S = 60.0


@dataclass(slots=True)
class WriteStats:
    """Counters for the status line and /healthz."""

    rows_written: int = 0  # all tables
    option_rows_written: int = 0
    batches: int = 0
    write_errors: int = 0
    probes: int = 0  # `Sink.probe()` calls made while a retry backoff slept
    retry_due_at: float | None = None  # wall clock when the backoff in progress ends (no probe)
    last_write_at: float | None = None
    last_error: str | None = None
    failing_since: float | None = None  # wall clock of the first failure of the current outage


class Batcher:
    """See the module docstring. Use: `add()` from the stream, `run()` as a task, `close()` to stop."""

    def __init__(
        self,
        sink: Sink,
        *,
        size: int,
        interval: float,
        spool: Spool | None = None,
        drain: Callable[[], list[RowPair]] = list,
        checkpoint: Callable[[], dict[str, Any] | None] = lambda: None,
        checkpoint_every: float = 5.0,
        max_retry_wait: float = 60.0,
        commit_every: float | None = None,
        batch_rows: int = MAX_BATCH_ROWS,
        probe_every: float = PROBE_EVERY_S,
    ) -> None:
        """`spool`: where rows wait; None = an in-memory spool (tests and benchmarks: it survives
        outages, not restarts). `commit_every`: None = `COMMIT_EVERY_S`, or `interval` if smaller."""
        self._sink = sink
        self.spool = spool or Spool(Path(":memory:"), max_bytes=2**62)
        self._size = size
        self._interval = interval
        self._drain = drain
        self._checkpoint = checkpoint
        self._checkpoint_every = checkpoint_every
        self._checkpointed_at = 0.0
        self._max_retry_wait = max_retry_wait
        self._commit_every = min(COMMIT_EVERY_S, interval) if commit_every is None else commit_every
        self._probe_every = probe_every
        self._batch_rows = batch_rows
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._last_spool_alert = 0.0
        self.stats = WriteStats()
        self.sink_open = asyncio.Event()  # set once the sink's open() succeeded
        self._held = asyncio.Lock()  # see `hold()`
        self.confirms = 0  # deletions from the spool of rows the sink committed

    @property
    def pending(self) -> int:
        """Rows waiting to be written (all tables), on disk or about to be."""
        return self.spool.depth

    def add(self, pair: RowPair) -> None:
        """Queue a row pair; wakes the writer when `size` equity rows are waiting. Never blocks."""
        self.spool.put(pair)
        if self.spool.equity_depth >= self._size:
            self._wake.set()

    @property
    def eager(self) -> bool:
        """Low-latency mode (`size` 1): every change is committed and written at once."""
        return self._size == 1

    def changed(self) -> None:
        """The pipeline's open rows changed (they are pulled in by `drain`). In low-latency mode,
        wake the writer to commit and write them now; otherwise nothing (the committer pulls them
        in within `commit_every`). Never blocks."""
        if self.eager:
            self._wake.set()

    def add_options(self, rows: list[OptionRow]) -> None:
        """Queue an option snapshot and wake the writer. Never blocks."""
        self.spool.put(rows)
        if rows:
            self._wake.set()

    def add_gap(self, row: GapRow) -> None:
        """Queue a `stream_gaps` row (a later version of the same gap replaces it). Never blocks."""
        self.spool.put((row,))

    def hold(self) -> asyncio.Lock:
        """`async with batcher.hold():` no commit and no deletion from the spool inside (see the
        module docstring). Hold it briefly: rows received meanwhile wait in memory."""
        return self._held

    async def run(self) -> None:
        """Open the spool and the sink, then write until `close()`. Returns when closed and either
        the spool is empty or the grace ran out. Raises `SinkRejected` (fatal: the log says why;
        the rows stay in the spool) or `SpoolError` if the spool cannot be opened."""
        self._writer = asyncio.current_task()
        await self.spool.open()
        committer = asyncio.create_task(self._commit_forever(), name="spool-commit")
        try:
            await self._retrying(self._sink.open, "open")
            self.sink_open.set()
            while True:
                closing = self._closing  # sampled before the commit: it then holds the last open rows
                if not closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
                self._wake.clear()
                await self._commit()
                await self._write_spooled()
                if closing and not self.spool.depth:
                    break
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def close(self, grace: float = 10.0) -> None:
        """Commit, let `run()` write for at most `grace` seconds, then cancel it. Never raises the
        writer's errors (`run()`'s awaiter sees them); waits for nothing without a deadline."""
        self._closing = True
        self._wake.set()
        writer = self._writer
        if writer is None or writer.done():
            await self._commit()
            return
        done, _ = await asyncio.wait({writer}, timeout=grace)
        if not done:
            writer.cancel()
            await asyncio.wait({writer}, timeout=5.0)
            log.warning(
                "shutdown grace over; rows left in the spool for the next run",
                rows=self.spool.depth,
                grace_s=grace,
            )
        await self._commit()

    async def _commit_forever(self) -> None:
        while True:
            await asyncio.sleep(self._commit_every)
            await self._commit()

    async def _commit(self) -> None:
        """Pull the open rows in and commit the spool's buffer with the checkpoint they leave the
        pipeline in (both taken at once, inside `hold()`). A failing spool is logged, not raised:
        its rows stay buffered for the next try."""
        async with self._held:
            for pair in self._drain():
                self.spool.put(pair)
            now = time.monotonic()
            checkpoint = None
            if self.spool.buffered or now - self._checkpointed_at >= self._checkpoint_every:
                checkpoint, self._checkpointed_at = self._checkpoint(), now
            try:
                await self.spool.commit(checkpoint)
            except SpoolError as exc:
                now = time.monotonic()
                if now - self._last_spool_alert >= _SPOOL_ALERT_EVERY_S or not self._last_spool_alert:
                    self._last_spool_alert = now
                    log.error("spool commit failed; rows kept in memory", error=str(exc))
        if self.spool.equity_depth >= self._size:
            self._wake.set()

    async def _write_spooled(self) -> None:
        """Write from the spool until it is below `size` equity rows (everything when closing or
        when the interval woke us)."""
        while taken := await self.spool.take(self._batch_rows):
            await self._retrying(lambda: self._sink.write(taken.batch), "write", rows=len(taken))
            async with self._held:
                await self.spool.confirm(taken)
                self.confirms += 1
            self._count(taken.batch)
            if not self._closing and len(taken) < self._batch_rows:
                return
            await asyncio.sleep(0)  # a backlog: let the stream run between batches

    def _count(self, batch: Batch) -> None:
        self.stats.rows_written += len(batch)
        self.stats.option_rows_written += len(batch.options)
        self.stats.batches += 1
        self.stats.last_write_at = time.time()
        if self.stats.failing_since is not None:
            log.info("sink is back", down_s=round(time.time() - self.stats.failing_since, 1))
            self.stats.failing_since = None
        log.debug("batch written", sink=self._sink.name, rows=len(batch))

    async def _retrying(self, call: Callable[[], Awaitable[None]], doing: str, *, rows: int = 0) -> None:
        """Await `call()` until it does not raise `SinkUnavailable` (forever; cancel to stop)."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            error = str(exc)
            new = self.stats.failing_since is None or error != self.stats.last_error
            self.stats.write_errors += 1
            self.stats.last_error = error
            if self.stats.failing_since is None:
                self.stats.failing_since = time.time()
            self.stats.retry_due_at = time.time() + state.upcoming_sleep
            log.warning(
                "write failed, retrying" if doing == "write" else "sink unavailable, retrying",
                sink=self._sink.name,
                rows=rows or None,
                spooled=self.spool.depth,
                attempt=state.attempt_number,
                retry_in_s=round(state.upcoming_sleep, 1),
                **({"error": error} if new else {}),  # said once per outage, and when it changes
            )

        wait = _RetryAfterOrBackoff(self._max_retry_wait)

        async def sleep(seconds: float) -> None:
            """Sleep `seconds`, or less: past what the server asked (Retry-After), probe the sink
            every `probe_every` seconds and return as soon as it answers."""
            loop = asyncio.get_running_loop()
            asked = min(wait.asked, seconds)
            if asked > 0:
                await asyncio.sleep(asked)
            deadline = loop.time() + seconds - asked
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(self._probe_every, left))
                if loop.time() >= deadline:
                    return
                self.stats.probes += 1
                if await self._sink.probe():
                    log.info("sink answers again; retrying now", sink=self._sink.name, doing=doing)
                    return

        retrying = AsyncRetrying(
            sleep=sleep,
            retry=retry_if_exception_type(SinkUnavailable),
            wait=wait,
            stop=stop_never,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await call()


class _RetryAfterOrBackoff(wait_exponential_jitter):
    """Exponential backoff with jitter, capped; at least what the server's Retry-After asked.
    `asked` holds the part of the last wait the server asked for (not to be cut short by a probe)."""

    def __init__(self, cap: float) -> None:
        super().__init__(max=cap)
        self._cap = cap
        self.asked = 0.0

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = super().__call__(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self.asked = min(float(getattr(exc, "retry_after", None) or 0.0), max(self._cap, 300.0))
        return max(backoff, self.asked)
