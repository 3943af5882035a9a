"""The batcher writes at BATCH_SIZE rows or BATCH_INTERVAL seconds, retries outages, flushes on close."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from memory_sink import MemorySink

from streaming_service.batcher import MAX_BATCH_ROWS, Batcher
from streaming_service.models import EquityRow, IndicatorRow
from streaming_service.pipeline import RowPair

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


def pair(i: int, volume: int = 100) -> RowPair:
    ts = T0 + timedelta(seconds=i)
    return EquityRow("QQQ", ts, 500.0 + i, volume), IndicatorRow("QQQ", ts, None, 500.0)


async def test_size_trigger_writes_when_batch_size_rows_are_pending() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=10, interval=3600)
    task = asyncio.create_task(batcher.run())
    for i in range(10):  # add() never yields, so the writer sees exactly these 10
        batcher.add(pair(i))
    await sink.wait_for_batches(1)
    for i in range(10, 15):
        batcher.add(pair(i))
    assert batcher.pending == 5
    await batcher.close()
    await task
    assert [len(b.equity) for b in sink.batches] == [10, 5]
    assert [len(b.indicators) for b in sink.batches] == [10, 5]


async def test_backlog_goes_out_in_batches_of_at_most_max_rows() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=10, interval=3600)
    task = asyncio.create_task(batcher.run())
    for i in range(MAX_BATCH_ROWS + 7):
        batcher.add(pair(i))
    await batcher.close()
    await task
    assert [len(b.equity) for b in sink.batches] == [MAX_BATCH_ROWS, 7]


async def test_size_trigger_fires_without_waiting_for_the_interval() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=3, interval=3600)
    task = asyncio.create_task(batcher.run())
    for i in range(3):
        batcher.add(pair(i))
    await sink.wait_for_batches(1, within=2)
    assert len(sink.batches[0].equity) == 3
    await batcher.close()
    await task


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


async def test_time_trigger_includes_open_rows_from_drain() -> None:
    sink = MemorySink()
    open_rows = [pair(7)]
    batcher = Batcher(sink, size=1000, interval=0.05, drain=lambda: open_rows)
    task = asyncio.create_task(batcher.run())
    await sink.wait_for_batches(1, within=5)
    assert sink.batches[0].equity == (open_rows[0][0],)
    open_rows = []
    await batcher.close()
    await task


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
    written = [r.timestamp for b in sink.batches for r in b.equity]
    assert sorted(written) == [T0 + timedelta(seconds=i) for i in range(8)]


async def test_close_flushes_pending_rows_and_drained_open_rows() -> None:
    sink = MemorySink()
    batcher = Batcher(sink, size=1000, interval=3600, drain=lambda: [pair(99)])
    task = asyncio.create_task(batcher.run())
    batcher.add(pair(0))
    await batcher.close()
    await task
    assert [len(b.equity) for b in sink.batches] == [2]
    assert batcher.stats.rows_written == 4
