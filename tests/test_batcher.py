"""The writer: rows go to the spool at once and to the sink at BATCH_SIZE rows or BATCH_INTERVAL
seconds; outages are retried (Retry-After honoured), shutdown is bounded, the spool survives."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from memory_sink import MemorySink
from polling import wait_until

from streaming_service.batcher import MAX_BATCH_ROWS, Batcher
from streaming_service.errors import SinkUnavailable
from streaming_service.models import Batch, EquityRow, IndicatorRow
from streaming_service.pipeline import RowPair
from streaming_service.spool import Spool

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


def pair(i: int, volume: int = 100) -> RowPair:
    ts = T0 + timedelta(seconds=i)
    return EquityRow("QQQ", ts, 500.0 + i, volume), IndicatorRow("QQQ", ts, None, 500.0)


def equity_written(sink: MemorySink) -> list[datetime]:
    return sorted(r.timestamp for b in sink.batches for r in b.equity)


async def test_size_trigger_writes_when_batch_size_rows_are_pending() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=10, interval=3600)
    task = asyncio.create_task(batcher.run())
    for i in range(10):  # add() never yields, so the writer sees exactly these 10
        batcher.add(pair(i))
    await wait_until(lambda: batcher.stats.batches == 1)  # written and confirmed
    for i in range(10, 15):
        batcher.add(pair(i))
    assert batcher.pending == 10  # 5 equity + 5 indicator rows
    await batcher.close()
    await task
    assert [len(b.equity) for b in sink.batches] == [10, 5]
    assert [len(b.indicators) for b in sink.batches] == [10, 5]


async def test_backlog_goes_out_in_batches_of_at_most_max_rows() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=10, interval=3600)
    task = asyncio.create_task(batcher.run())
    for i in range(MAX_BATCH_ROWS + 7):  # two rows each
        batcher.add(pair(i))
    await batcher.close()
    await task
    assert [len(b) for b in sink.batches] == [MAX_BATCH_ROWS, MAX_BATCH_ROWS, 14]
    assert len(equity_written(sink)) == MAX_BATCH_ROWS + 7


async def test_time_trigger_writes_a_partial_batch() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=1000, interval=0.05)
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    batcher.add(pair(1))
    await sink.wait_for_batches(1, within=5)
    assert [r.price for r in sink.batches[0].equity] == [500.0, 501.0]
    await batcher.close()
    await task


async def test_open_rows_from_drain_reach_the_spool_within_a_commit_window() -> None:
    sink = MemorySink()
    open_rows = [pair(7)]

    def drain() -> list[RowPair]:
        rows, open_rows[:] = list(open_rows), []
        return rows

    batcher = Batcher(sink, size=1000, interval=3600, drain=drain, commit_every=0.01)
    task = asyncio.create_task(batcher.run())
    await wait_until(lambda: batcher.spool.depth == 2 and not batcher.spool._buffer, within=5)
    assert sink.batches == []  # on disk, not yet written: the interval has not passed
    await batcher.close()
    await task
    assert sink.batches[0].equity == (pair(7)[0],)


async def test_same_key_emitted_twice_is_written_once_with_latest_values() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=1000, interval=3600)
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0, volume=100))
    batcher.add(pair(0, volume=250))
    await batcher.close()
    await task
    (batch,) = sink.batches
    assert [r.volume for r in batch.equity] == [250]


async def test_outage_is_retried_until_written_and_nothing_is_lost() -> None:
    sink = MemorySink()
    sink.fail_next(3)
    batcher = Batcher(sink, size=5, interval=3600, max_retry_wait=0.01)
    task = asyncio.create_task(batcher.run())
    for i in range(5):
        batcher.add(pair(i))
    await sink.wait_for_batches(1)
    for i in range(5, 8):  # rows arriving after the outage are kept too
        batcher.add(pair(i))
    await batcher.close()
    await task
    assert sink.attempts >= 4
    assert batcher.stats.write_errors == 3
    assert batcher.stats.failing_since is None
    assert equity_written(sink) == [T0 + timedelta(seconds=i) for i in range(8)]


class _SlowDownSink(MemorySink):
    """Refuses writes with SinkUnavailable(retry_after=...) a number of times; records when."""

    def __init__(self, refusals: int, retry_after: float) -> None:
        super().__init__()
        self.refusals, self.retry_after, self.times = refusals, retry_after, []  # type: ignore[var-annotated]

    async def write(self, batch: Batch) -> None:
        self.times.append(time.monotonic())
        if self.refusals:
            self.refusals -= 1
            raise SinkUnavailable("429 slow down", retry_after=self.retry_after)
        await super().write(batch)


async def test_retry_after_is_honoured_over_a_shorter_backoff() -> None:
    sink = _SlowDownSink(refusals=1, retry_after=0.3)
    batcher = Batcher(sink, size=1, interval=3600, max_retry_wait=0.01)
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    await sink.wait_for_batches(1)
    gap = sink.times[1] - sink.times[0]
    print(f"retry_after=0.3s backoff_cap=0.01s measured_gap={gap:.3f}s")
    assert gap >= 0.3
    await batcher.close()
    await task


class _DownAtStartSink(MemorySink):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.open_failures = failures

    async def open(self) -> None:
        if self.open_failures:
            self.open_failures -= 1
            raise SinkUnavailable("connection refused")


async def test_sink_down_at_start_is_retried_while_rows_wait_in_the_spool() -> None:
    sink = _DownAtStartSink(failures=3)
    batcher = Batcher(sink, size=1, interval=3600, max_retry_wait=0.01)
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    await sink.wait_for_batches(1)
    assert batcher.stats.write_errors == 3
    await batcher.close()
    await task
    assert equity_written(sink) == [T0]


async def test_close_during_an_outage_returns_within_grace_and_keeps_rows_on_disk(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_next(10**9)
    spool = Spool(tmp_path / "spool.db", max_bytes=2**30)
    batcher = Batcher(sink, size=1, interval=3600, spool=spool, max_retry_wait=0.05)
    task = asyncio.create_task(batcher.run())
    for i in range(20):
        batcher.add(pair(i))
    await wait_until(lambda: sink.attempts >= 2)
    started = time.monotonic()
    await batcher.close(grace=0.5)
    took = time.monotonic() - started
    await asyncio.wait({task}, timeout=5)
    assert task.done()
    await spool.aclose()
    print(f"close with the sink down: {took:.2f}s for a grace of 0.5s; rows kept on disk: 40")

    # The next run writes them all.
    sink = MemorySink()
    spool = Spool(tmp_path / "spool.db", max_bytes=2**30)
    assert await spool.open() == 40
    batcher = Batcher(sink, size=1000, interval=3600, spool=spool)
    task = asyncio.create_task(batcher.run())
    await batcher.close()
    await task
    await spool.aclose()
    assert equity_written(sink) == [T0 + timedelta(seconds=i) for i in range(20)]


class _HeldSink(MemorySink):
    """A sink whose writes wait until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.writing = asyncio.Event()

    async def write(self, batch: Batch) -> None:
        self.writing.set()
        await self.release.wait()
        await super().write(batch)


async def test_close_during_a_write_still_writes_the_open_rows_drained_after_it() -> None:
    open_rows: list[RowPair] = []
    sink = _HeldSink()
    batcher = Batcher(sink, size=1, interval=3600, drain=lambda: [open_rows.pop()] if open_rows else [])
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    await asyncio.wait_for(sink.writing.wait(), timeout=5)  # the writer is inside a write…
    open_rows.append(pair(1, volume=7))  # …when the open row changes, and shutdown begins
    closing = asyncio.create_task(batcher.close(grace=5))
    await asyncio.sleep(0)  # close() has set closing before the write returns
    sink.release.set()
    await asyncio.wait_for(closing, timeout=10)
    await task
    assert equity_written(sink) == [T0, T0 + timedelta(seconds=1)]
    assert batcher.spool.depth == 0


async def test_low_latency_mode_commits_and_writes_an_open_row_change_at_once() -> None:
    """BATCH_SIZE=1: `changed()` (an open row grew) commits the spool and writes now, without
    waiting for a group-commit tick (an hour here) or the interval."""
    sink = MemorySink()
    open_rows = [pair(3, volume=5)]
    batcher = Batcher(
        sink, size=1, interval=3600, commit_every=3600, drain=lambda: [open_rows.pop()] if open_rows else []
    )
    task = asyncio.create_task(batcher.run())
    await asyncio.wait_for(batcher.sink_open.wait(), timeout=5)
    assert batcher.eager
    batcher.changed()
    await sink.wait_for_batches(1)
    await wait_until(lambda: batcher.spool.depth == 0)  # confirmed, so it went through the spool
    open_rows.append(pair(3, volume=9))  # the same row grew
    batcher.changed()
    await sink.wait_for_batches(2)
    assert [r.volume for b in sink.batches for r in b.equity] == [5, 9]
    await batcher.close()
    await task
    assert not Batcher(sink, size=10, interval=60).eager  # the default stays batched


class _DownSink(MemorySink):
    """Refuses writes while `down`; `probe()` answers accordingly."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    async def write(self, batch: Batch) -> None:
        self.attempts += 1
        if self.down:
            raise SinkUnavailable("connection refused")
        self.batches.append(batch)
        self.written.set()

    async def probe(self) -> bool:
        self.probes += 1
        return not self.down


async def test_a_probe_that_answers_ends_the_backoff_at_once() -> None:
    sink = _DownSink()
    batcher = Batcher(sink, size=1, interval=3600, max_retry_wait=3600, probe_every=0.01)
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    await wait_until(lambda: batcher.stats.write_errors == 1 and sink.probes >= 2)  # backoff ≥ 1 s
    sink.down = False
    await sink.wait_for_batches(1, within=0.8)  # the backoff alone would take at least 1 s
    assert batcher.stats.write_errors == 1  # one failure, then the retry a probe allowed
    assert batcher.stats.probes == sink.probes
    await batcher.close()
    await task
