"""The dead-letter file: rows a database refused, one JSON object per line, shared by every sink.

A line is `{"at": <UTC ISO time>, "table": ..., "code": <SQLSTATE or the sink's code>, "error": ...,
"row": {column: value}}`; the row's datetimes and dates are ISO strings, NaN and infinities the
strings "nan", "inf", "-inf". Each row is written once: `add` skips a (table, row) it has written
before, remembering the last `remember` of them (seeded, on first use, from the end of the existing
file, so a batch replayed after a restart does not repeat its letters either). A row whose values
change is a new row. The file is appended in a worker thread, never on the event loop, and each
new row is logged once (`row rejected, written to the dead-letter file`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import hashlib
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import structlog

from streaming_service.errors import SinkRejected, SinkUnavailable
from streaming_service.models import Batch, TableRow
from streaming_service.sinks.base import last_per_key, unstorable

__all__ = ["DEFAULT_PATH", "DeadLetters", "Refused", "row_values", "split_storable"]

log = structlog.get_logger(__name__)

#: Where refused rows go when a sink is given no path (the same as DEAD_LETTER_PATH's default).
DEFAULT_PATH = Path("data/dead_letters.jsonl")
#: How much of an existing file's end is read to learn which rows it already holds.
_SEED_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Refused:
    """A row the database (or the sink, before sending it) refused: `code` is the SQLSTATE, the
    database's error name, or the sink's own (`non-finite`, `naive-timestamp`)."""

    table: str
    code: str
    error: str
    row: dict[str, Any]


def row_values(row: Any) -> dict[str, Any]:
    """A row model's fields as a dict, in declaration order (what a dead letter's `row` holds)."""
    return {field.name: getattr(row, field.name) for field in dataclasses.fields(row)}


def split_storable(batch: Batch) -> tuple[dict[str, list[TableRow]], list[Refused]]:
    """The rows of `batch` per table (one per UNIQUE key, the last winning; tables without rows
    left out) that a database can be asked to store, and those no database can (NaN or infinity, a
    naive timestamp: see `unstorable`), as dead letters."""
    storable: dict[str, list[TableRow]] = {}
    refused: list[Refused] = []
    tables: tuple[tuple[str, tuple[TableRow, ...]], ...] = (
        ("equity_data", batch.equity), ("indicators", batch.indicators), ("option_prices", batch.options),
        ("stream_gaps", batch.gaps), ("volume_checks", batch.checks),
    )  # fmt: skip
    for table, rows in tables:
        for row in last_per_key(rows):
            if problem := unstorable(row):
                refused.append(Refused(table, *problem, row_values(row)))
            else:
                storable.setdefault(table, []).append(row)
    return storable, refused


class DeadLetters:
    """Appends refused rows to `path` (JSON lines), each (table, row) once; see the module docstring.

    `count` is the number of lines this object has written. Not for concurrent use by several tasks
    (a sink writes one batch at a time).
    """

    def __init__(self, path: Path | None = None, *, remember: int = 10_000) -> None:
        self.path = DEFAULT_PATH if path is None else path
        self.count = 0
        self._remember = remember
        self._seen: OrderedDict[bytes, None] | None = None  # None: not yet read from the file

    def __repr__(self) -> str:
        return f"DeadLetters({str(self.path)!r}, count={self.count})"

    async def check(self) -> None:
        """Make the file's directory; raises `SinkRejected` if the file could not be appended to."""
        try:
            await asyncio.to_thread(self._check_sync)
        except OSError as exc:
            raise SinkRejected(
                f"dead-letter file {self.path}: {exc}; set DEAD_LETTER_PATH to a writable file"
            ) from None

    async def add(self, refused: Iterable[Refused]) -> int:
        """Append the rows not written before; return how many lines were written.

        Raises `SinkUnavailable` if the file cannot be written (disk full, …): nothing is then
        remembered, so the batch's replay writes them."""
        pending: dict[bytes, dict[str, Any]] = {}
        for item in refused:
            row = _jsonable(item.row)
            letter = {"table": item.table, "code": item.code, "error": item.error, "row": row}
            pending.setdefault(_digest(item.table, row), letter)
        if not pending:
            return 0
        try:
            written = await asyncio.to_thread(self._append_sync, pending)
        except OSError as exc:
            raise SinkUnavailable(
                f"cannot write the dead-letter file {self.path}: {exc}; the batch will be retried"
            ) from None
        for letter in written:
            self.count += 1
            log.error(
                "row rejected, written to the dead-letter file",
                table=letter["table"],
                code=letter["code"],
                error=letter["error"],
                row=json.dumps(letter["row"], ensure_ascii=False),
                file=str(self.path),
                dead_letters=self.count,
            )
        return len(written)

    # --- worker thread ---------------------------------------------------------------------------

    def _check_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        target = self.path if self.path.exists() else self.path.parent
        if not os.access(target, os.W_OK):
            raise PermissionError(f"no permission to write {target}")

    def _append_sync(self, pending: dict[bytes, dict[str, Any]]) -> list[dict[str, Any]]:
        seen = self._seen if self._seen is not None else self._read_seen()
        self._seen = seen
        new = {digest: letter for digest, letter in pending.items() if digest not in seen}
        if not new:
            return []
        at = datetime.now(UTC).isoformat()
        lines = "".join(json.dumps({"at": at, **row}, ensure_ascii=False) + "\n" for row in new.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as file:
            file.write(lines)
            file.flush()
            try:
                os.fsync(file.fileno())
            except OSError as exc:  # a pipe or /dev/null cannot be synced, and need not be
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
                    raise
        for digest in new:
            self._remember_digest(seen, digest)
        return list(new.values())

    def _read_seen(self) -> OrderedDict[bytes, None]:
        """The digests of the rows in the last `_SEED_BYTES` of an existing regular file."""
        seen: OrderedDict[bytes, None] = OrderedDict()
        try:
            if not self.path.is_file():
                return seen
            with self.path.open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - _SEED_BYTES))
                tail = file.read().split(b"\n")
        except OSError:
            return seen
        for line in tail[1:] if size > _SEED_BYTES else tail:  # the first piece may be cut
            try:
                letter = json.loads(line)
                self._remember_digest(seen, _digest(str(letter["table"]), letter["row"]))
            except (ValueError, KeyError, TypeError):
                continue  # a partial or foreign line
        return seen

    def _remember_digest(self, seen: OrderedDict[bytes, None], digest: bytes) -> None:
        seen[digest] = None
        seen.move_to_end(digest)
        while len(seen) > self._remember:
            seen.popitem(last=False)


def _digest(table: str, row: Any) -> bytes:
    canonical = json.dumps([table, row], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def _jsonable(value: Any) -> Any:
    """`value` with datetimes/dates as ISO strings and non-finite floats as strings, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)
