"""The dead-letter file shared by the sinks (streaming_service/sinks/dead_letters.py), on real files."""

from __future__ import annotations

import asyncio
import json
import math
import os
import select
import threading
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import EquityRow
from streaming_service.sinks.dead_letters import DeadLetters, Refused, row_values

T0 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)


def refused(price: float, *, ticker: str = "QQQ", table: str = "equity_data") -> Refused:
    row = EquityRow(ticker, T0, price, 1)
    return Refused(table, "22003", "numeric field overflow", row_values(row))


def lines(path: Path) -> list[dict[str, Any]]:
    def no_nan(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return [json.loads(line, parse_constant=no_nan) for line in path.read_text().splitlines()]


async def test_a_line_per_row_with_its_error_logged_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "dead.jsonl"
    letters = DeadLetters(path)
    with capture_logs() as logs:
        assert await letters.add([refused(1e9), refused(2e9)]) == 2
    [first, second] = lines(path)
    assert set(first) == {"at", "table", "code", "error", "row"}
    assert datetime.fromisoformat(first["at"]).tzinfo is not None
    assert (first["table"], first["code"], first["error"]) == (
        "equity_data",
        "22003",
        "numeric field overflow",
    )
    assert first["row"] == {"ticker": "QQQ", "timestamp": T0.isoformat(), "price": 1e9, "volume": 1}
    assert second["row"]["price"] == 2e9
    events = [e for e in logs if e["event"] == "row rejected, written to the dead-letter file"]
    assert [(e["code"], e["dead_letters"], e["log_level"]) for e in events] == [
        ("22003", 1, "error"),
        ("22003", 2, "error"),
    ]
    assert letters.count == 2


async def test_each_row_is_written_once(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "dead.jsonl")
    with capture_logs() as logs:
        written = [
            await letters.add([refused(1e9), refused(1e9)]),  # twice in one call
            await letters.add([refused(1e9)]),  # a replay
            await letters.add([refused(1e9, table="indicators")]),  # another table: another row
            await letters.add([refused(3e9)]),  # other values: another row
        ]
    print(f"rows offered 5, lines written per call {written}, log events {len(logs)}")
    assert written == [1, 0, 1, 1]
    assert len(lines(tmp_path / "dead.jsonl")) == 3 == letters.count == len(logs)


async def test_a_new_process_learns_the_rows_already_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await DeadLetters(path).add([refused(1e9), refused(2e9)])
    with path.open("a") as file:
        file.write('{"at": "2026-11-24T14:30:00+00:00", "table": "equity_data", "ro')  # cut by a crash
    restarted = DeadLetters(path)
    assert await restarted.add([refused(1e9), refused(2e9)]) == 0
    assert restarted.count == 0


async def test_memory_is_bounded(tmp_path: Path) -> None:
    letters = DeadLetters(tmp_path / "dead.jsonl", remember=2)
    for price in (1e9, 2e9, 3e9):
        await letters.add([refused(price)])
    assert await letters.add([refused(3e9)]) == 0  # remembered
    assert await letters.add([refused(1e9)]) == 1  # forgotten: the oldest of three, with room for two
    assert len(lines(tmp_path / "dead.jsonl")) == 4


async def test_values_json_cannot_carry_are_written_as_text(tmp_path: Path) -> None:
    row = {"price": math.nan, "vwap": -math.inf, "day": date(2026, 11, 27), "ts": T0, "n": None}
    await DeadLetters(tmp_path / "dead.jsonl").add([Refused("indicators", "non-finite", "NaN", row)])
    assert lines(tmp_path / "dead.jsonl")[0]["row"] == {
        "price": "nan", "vwap": "-inf", "day": "2026-11-27", "ts": T0.isoformat(), "n": None
    }  # fmt: skip


async def test_an_unusable_path_is_rejected_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SinkRejected, match="DEAD_LETTER_PATH"):
        await DeadLetters(blocker / "dead.jsonl").check()
    await DeadLetters(tmp_path / "fine" / "dead.jsonl").check()
    assert (tmp_path / "fine").is_dir() and not (tmp_path / "fine" / "dead.jsonl").exists()


async def test_a_failed_append_is_unavailable_and_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    path.mkdir()  # a directory where the file should be: appending fails
    letters = DeadLetters(path)
    with pytest.raises(SinkUnavailable, match="dead-letter file"):
        await letters.add([refused(1e9)])
    path.rmdir()
    assert await letters.add([refused(1e9)]) == 1  # the batch's replay writes it
    assert len(lines(path)) == 1


async def test_the_file_is_written_off_the_event_loop(tmp_path: Path) -> None:
    """The dead-letter file is a FIFO whose reader waits, with more than a pipe's buffer to write:
    the writer blocks. The reader asks the event loop to run a coroutine meanwhile; only if the
    file I/O is off the loop does that happen."""
    path = tmp_path / "dead.fifo"
    os.mkfifo(path)
    loop = asyncio.get_running_loop()
    seen: dict[str, Any] = {}

    def reader() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            select.select([fd], [], [], 10)  # the writer has begun
            probe = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            try:
                probe.result(timeout=5)
                seen["loop_ran"] = True
            except TimeoutError:
                seen["loop_ran"] = False
            os.set_blocking(fd, True)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            seen["bytes"] = sum(len(c) for c in chunks)
        finally:
            os.close(fd)

    thread = threading.Thread(target=reader, name="fifo-reader")
    thread.start()
    many = [refused(1e9 + i, ticker=f"T{i}") for i in range(2000)]
    assert await DeadLetters(path).add(many) == 2000
    await asyncio.to_thread(thread.join)
    print(f"{seen.get('bytes')} bytes through a FIFO; the event loop ran while the writer waited: "
          f"{seen.get('loop_ran')}")  # fmt: skip
    assert seen["bytes"] > 1 << 16
    assert seen["loop_ran"] is True
