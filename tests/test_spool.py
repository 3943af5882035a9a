"""The durable spool: keyed replacement, confirm by version, bounded disk, survives kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from streaming_service.models import EquityRow, IndicatorRow, OptionRow
from streaming_service.spool import Spool, SpoolError

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


def equity(i: int, volume: int = 100) -> EquityRow:
    return EquityRow("QQQ", T0 + timedelta(seconds=i), 500.0 + i, volume)


def option(i: int) -> OptionRow:
    return OptionRow(
        "QQQ", T0, "CALL", 500.0 + i, date(2026, 11, 27), None, 1.25, 1.3, 10, 20, 0.18,
        0.5, 0.01, -0.2, 0.3, f"QQQ   261127C{500 + i:05d}000",
    )  # fmt: skip


async def test_rows_round_trip_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=2**30)
    await spool.open()
    rows = [equity(0), IndicatorRow("QQQ", T0, None, 500.12), option(0)]
    spool.put(rows)
    assert await spool.commit() == 3
    taken = await spool.take(10)
    assert (taken.batch.equity, taken.batch.indicators, taken.batch.options) == (
        (rows[0],), (rows[1],), (rows[2],)
    )  # fmt: skip
    await spool.aclose()


async def test_a_row_emitted_again_replaces_its_earlier_version(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=2**30)
    await spool.open()
    spool.put([equity(0, volume=100)])
    await spool.commit()
    spool.put([equity(0, volume=250)])
    await spool.commit()
    assert spool.depth == 1
    taken = await spool.take(10)
    assert [r.volume for r in taken.batch.equity] == [250]
    await spool.aclose()


async def test_confirm_keeps_a_row_replaced_while_it_was_being_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=2**30)
    await spool.open()
    spool.put([equity(0, volume=100), equity(1)])
    await spool.commit()
    taken = await spool.take(10)
    spool.put([equity(0, volume=300)])  # the open row grew while the batch was in flight
    await spool.commit()
    await spool.confirm(taken)
    left = await spool.take(10)
    assert [(r.timestamp, r.volume) for r in left.batch.equity] == [(T0, 300)]
    await spool.aclose()


async def test_take_returns_the_oldest_first_and_reopen_finds_what_was_left(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=2**30)
    await spool.open()
    for i in range(5):
        spool.put([equity(i)])
        await spool.commit()
    taken = await spool.take(2)
    assert [r.timestamp for r in taken.batch.equity] == [T0, T0 + timedelta(seconds=1)]
    await spool.confirm(taken)
    await spool.aclose()
    again = Spool(tmp_path / "s.db", max_bytes=2**30)
    assert await again.open() == 3
    spool.put([equity(9)])  # sequence numbers continue after a reopen: new rows come last
    again.put([equity(9)])
    await again.commit()
    assert [r.timestamp.second for r in (await again.take(10)).batch.equity] == [2, 3, 4, 9]
    await again.aclose()


async def test_recorded_rows_are_a_tickers_waiting_rows_in_a_time_range(tmp_path: Path) -> None:
    """Committed and buffered rows, the latest version of each, oldest first, with their
    indicators; other tickers, other tables and rows outside [since, until) are left out."""
    spool = Spool(tmp_path / "s.db", max_bytes=2**30)
    await spool.open()
    half = timedelta(milliseconds=500)  # a timestamp with a fraction sorts between whole seconds
    spool.put([equity(0), equity(1), equity(3), IndicatorRow("QQQ", T0 + timedelta(seconds=1), 501.0, 500.5),
               EquityRow("QQQM", T0 + timedelta(seconds=1), 20.0, 5), option(0),
               EquityRow("QQQ", T0 + timedelta(seconds=1) + half, 501.5, 7)])  # fmt: skip
    await spool.commit()
    spool.put([equity(1, volume=300), equity(2)])  # buffered: a newer version, and a new row
    rows = await spool.recorded_rows("QQQ", T0 + timedelta(seconds=1), T0 + timedelta(seconds=3))
    assert [(e.timestamp - T0, e.volume, i) for e, i in rows] == [
        (timedelta(seconds=1), 300, IndicatorRow("QQQ", T0 + timedelta(seconds=1), 501.0, 500.5)),
        (timedelta(seconds=1) + half, 7, None),
        (timedelta(seconds=2), 100, None),
    ]
    await spool.aclose()


async def test_past_the_limit_the_oldest_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=256 * 1024)
    await spool.open()
    for chunk in range(40):
        spool.put([equity(chunk * 500 + i) for i in range(500)])
        await spool.commit()
    size = (tmp_path / "s.db").stat().st_size
    kib = size / 1024
    print(f"spool limit 256 KiB: {spool.depth} rows kept, {spool.dropped} dropped, file {kib:.0f} KiB")
    assert spool.dropped > 0
    assert spool.depth + spool.dropped == 20_000
    newest = await spool.take(spool.depth)
    assert max(r.timestamp for r in newest.batch.equity) == T0 + timedelta(seconds=19_999)
    await spool.aclose()


async def test_an_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    spool = Spool(tmp_path / "file" / "spool.db", max_bytes=2**20)
    with pytest.raises(SpoolError, match="SPOOL_PATH"):
        await spool.open()


def test_committed_rows_survive_kill_9(tmp_path: Path) -> None:
    """A child commits rows, keeps buffering more without committing, and is SIGKILLed."""
    path = tmp_path / "s.db"
    child = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from datetime import UTC, datetime, timedelta
        from streaming_service.models import EquityRow
        from streaming_service.spool import Spool
        T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)
        async def main():
            spool = Spool({str(path)!r}, max_bytes=2**30)
            await spool.open()
            spool.put([EquityRow("QQQ", T0 + timedelta(seconds=i), 500.0, 1) for i in range(1000)])
            await spool.commit()
            spool.put([EquityRow("QQQ", T0 + timedelta(seconds=5000), 500.0, 1)])  # never committed
            print("committed", flush=True)
            await asyncio.sleep(3600)
        asyncio.run(main())
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "committed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    import asyncio

    async def reopen() -> int:
        spool = Spool(path, max_bytes=2**30)
        depth = await spool.open()
        await spool.aclose()
        return depth

    assert asyncio.run(reopen()) == 1000
