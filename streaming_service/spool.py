"""The durable outbox: rows wait on disk, in a local SQLite file, until the database confirms them.

Rows are keyed by their table's UNIQUE key, so a row emitted again (an open row that grew) replaces
its earlier version. `put()` only appends to a small in-memory buffer; `commit()` (called every
~250 ms by the writer's committer task: group commit) writes the buffer in one transaction, so
kill -9 or a power cut loses at most the rows of one commit window. `take()` reads the oldest rows;
`confirm()` deletes them once the sink has committed them — but only the versions that were taken, so
a row replaced meanwhile stays. Delivery is at-least-once; the sinks' upserts make replays harmless.

`recorded_rows()` reads the rows of a ticker that wait here: with the database's, what is recorded.

The same file holds the service's checkpoint (`commit(checkpoint=...)`, `checkpoint`): the state
the indicators and open rows need to continue after a restart, written in the same transaction as
the rows it covers, so the two always agree.

Disk is bounded by `max_bytes`: past it, the oldest rows are dropped and counted (`dropped`), with an
error logged at most once a minute. All SQLite work runs in a worker thread, one call at a time
(`SqliteFile`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from streaming_service.errors import StreamerError
from streaming_service.models import (
    Batch,
    EquityRow,
    GapRow,
    IndicatorRow,
    OptionRow,
    TableRow,
    VolumeCheckRow,
)
from streaming_service.sqlite_file import SqliteFile

__all__ = ["Spool", "SpoolError", "Taken"]

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_TABLES: dict[type[Any], str] = {
    EquityRow: "equity_data", IndicatorRow: "indicators", OptionRow: "option_prices", GapRow: "stream_gaps",
    VolumeCheckRow: "volume_checks",
}  # fmt: skip
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    queued_at REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq);
CREATE TABLE IF NOT EXISTS checkpoint (name TEXT PRIMARY KEY, state TEXT NOT NULL);
"""
_PUT = """
INSERT INTO outbox (tbl, key, seq, queued_at, payload) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tbl, key) DO UPDATE SET seq = excluded.seq, payload = excluded.payload
"""
_DROP_ALERT_EVERY_S = 60.0
_RECORDED = ("equity_data", "indicators")  # the tables `recorded_rows` reads


class SpoolError(StreamerError):
    """The spool file cannot be opened or written (disk full, permissions); the message says which."""


@dataclass(frozen=True, slots=True)
class Taken:
    """Rows read from the spool: `batch` to write, `last_seq` for `confirm()`."""

    batch: Batch
    last_seq: int

    def __len__(self) -> int:
        return len(self.batch)


class Spool:
    """See the module docstring. `open()` first; `aclose()` commits what is buffered and closes."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._buffer: dict[tuple[str, str], TableRow] = {}
        self._buffered_equity = 0  # equity_data rows in the buffer
        self._committing = 0  # rows of a commit in progress (neither buffered nor counted on disk)
        self._file = SqliteFile(self.path, _SCHEMA, busy_timeout=10)
        self._seq = 0
        self._depth = 0
        self._equity_depth = 0
        self._oldest: float | None = None
        self._last_drop_alert = 0.0
        self.dropped = 0
        self.checkpoint: dict[str, Any] | None = None  # as last committed (or found by `open()`)

    @property
    def depth(self) -> int:
        """Rows waiting (committed to the spool or still buffered; a replaced row counts once)."""
        return self._depth + len(self._buffer) + self._committing

    @property
    def buffered(self) -> int:
        """Rows waiting for the next `commit()`."""
        return len(self._buffer)

    @property
    def equity_depth(self) -> int:
        """`equity_data` rows waiting: what BATCH_SIZE counts."""
        return self._equity_depth + self._buffered_equity

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds the next row to write (the oldest version) has waited, or None when empty."""
        if self._oldest is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self._oldest)

    async def open(self) -> int:
        """Create or reopen the file; return how many rows a previous run left. Raises `SpoolError`."""
        try:
            await self._file.open()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from exc
        await self._run(self._load_state)
        return self._depth

    def put(self, rows: Iterable[TableRow]) -> None:
        """Buffer rows for the next `commit()` (a later version of a key replaces an earlier one)."""
        for row in rows:
            key = (_TABLES[type(row)], _key_text(row.key))
            if key[0] == "equity_data" and key not in self._buffer:
                self._buffered_equity += 1
            self._buffer[key] = row

    async def commit(self, checkpoint: dict[str, Any] | None = None) -> int:
        """Write the buffer, and `checkpoint` if given (JSON-compatible: it replaces the previous
        one), to disk in one transaction; return the rows committed. Raises `SpoolError`."""
        if not self._buffer and checkpoint is None:
            return 0
        buffer, self._buffer, self._buffered_equity = self._buffer, {}, 0
        self._committing = len(buffer)
        try:
            await self._run(self._commit_sync, buffer, checkpoint)
        except BaseException:
            self._buffer = {**buffer, **self._buffer}  # nothing was committed: keep it for the next try
            self._buffered_equity = sum(1 for table, _ in self._buffer if table == "equity_data")
            raise
        finally:
            self._committing = 0
        if checkpoint is not None:
            self.checkpoint = checkpoint
        return len(buffer)

    async def take(self, limit: int) -> Taken:
        """The `limit` oldest committed rows (possibly none). They stay in the spool until confirmed."""
        return await self._run(self._take_sync, limit)

    async def recorded_rows(
        self, ticker: str, since: datetime, until: datetime
    ) -> list[tuple[EquityRow, IndicatorRow | None]]:
        """The equity rows of `ticker` stamped in [since, until) that wait here, committed or
        buffered (the latest version of each), oldest first, each with its indicators row (None if
        that is not here). Raises `SpoolError`."""
        low, high = (f"{ticker}|{moment.astimezone(UTC).isoformat()}" for moment in (since, until))
        committed = await self._run(self._recorded_sync, low, high)
        rows: dict[tuple[str, str], TableRow] = {
            (table, key): _decode(table, json.loads(payload)) for table, key, payload in committed
        }
        rows.update((key, row) for key, row in self._buffer.items() if key[0] in _RECORDED)
        return _pairs(rows.values(), ticker, since, until)

    def buffered_rows(
        self, ticker: str, since: datetime, until: datetime
    ) -> list[tuple[EquityRow, IndicatorRow | None]]:
        """As `recorded_rows`, of the buffer alone (not committed yet), without waiting."""
        return _pairs((row for key, row in self._buffer.items() if key[0] in _RECORDED), ticker, since, until)

    async def confirm(self, taken: Taken) -> None:
        """Delete the taken rows whose version is unchanged (the sink committed exactly those).

        Every commit gives each row it writes a new, higher sequence number, and `take()` reads in
        sequence order: so the taken versions are exactly the rows with `seq <= last_seq`, and a
        row replaced since has a higher one and stays."""
        if len(taken):
            await self._run(self._confirm_sync, taken.last_seq)

    async def aclose(self) -> None:
        """Commit the buffer and close the file; idempotent."""
        if self._file.is_open:
            await self.commit()
        try:
            await self._file.close()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    # --- worker-thread side -------------------------------------------------------------------

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        """`func(connection, *args)` in the file's worker thread."""
        try:
            return await self._file.call(func, *args)
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> SpoolError:
        return SpoolError(
            f"spool {self.path}: {type(exc).__name__}: {exc}; check that the directory is writable "
            "and the disk has room (SPOOL_PATH, SPOOL_MAX_MB)"
        )

    def _load_state(self, conn: sqlite3.Connection) -> None:
        self._seq = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]
        saved = conn.execute("SELECT state FROM checkpoint WHERE name = 'service'").fetchone()
        self.checkpoint = json.loads(saved[0]) if saved else None
        self._refresh_counts(conn)

    def _commit_sync(
        self,
        conn: sqlite3.Connection,
        buffer: dict[tuple[str, str], TableRow],
        checkpoint: dict[str, Any] | None,
    ) -> None:
        now = time.time()
        records = []
        for (table, key), row in buffer.items():
            self._seq += 1
            records.append((table, key, self._seq, now, _encode(row)))
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_PUT, records)
            if checkpoint is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO checkpoint (name, state) VALUES ('service', ?)",
                    (json.dumps(checkpoint, separators=(",", ":")),),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._refresh_counts(conn)
        self._enforce_limit(conn)

    def _take_sync(self, conn: sqlite3.Connection, limit: int) -> Taken:
        rows = conn.execute("SELECT tbl, seq, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        by_table: dict[str, list[Any]] = {table: [] for table in _TABLES.values()}
        values = json.loads(f"[{','.join(payload for _, _, payload in rows)}]")  # one parse per take
        for (table, _, _), row_values in zip(rows, values, strict=True):
            by_table[table].append(_decode(table, row_values))
        batch = Batch(
            tuple(by_table["equity_data"]),
            tuple(by_table["indicators"]),
            tuple(by_table["option_prices"]),
            tuple(by_table["stream_gaps"]),
            tuple(by_table["volume_checks"]),
        )
        return Taken(batch, rows[-1][1] if rows else 0)

    def _recorded_sync(self, conn: sqlite3.Connection, low: str, high: str) -> list[tuple[str, str, str]]:
        return conn.execute(
            "SELECT tbl, key, payload FROM outbox WHERE tbl IN (?, ?) AND key >= ? AND key < ?",
            (*_RECORDED, low, high),
        ).fetchall()

    def _confirm_sync(self, conn: sqlite3.Connection, last_seq: int) -> None:
        # One statement: atomic. The counts follow from what it deleted (no count(*) over a backlog).
        deleted = conn.execute("DELETE FROM outbox WHERE seq <= ? RETURNING tbl", (last_seq,)).fetchall()
        self._depth -= len(deleted)
        self._equity_depth -= sum(1 for (table,) in deleted if table == "equity_data")
        oldest = conn.execute("SELECT queued_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        self._oldest = oldest[0] if oldest else None

    def _enforce_limit(self, conn: sqlite3.Connection) -> None:
        """Past `max_bytes` of live pages, drop the oldest tenth of the rows (counted, alerted)."""
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))  # fmt: skip
        if (pages - free) * size <= self._max_bytes:
            return
        drop = max(1, self._depth // 10)
        conn.execute(
            "DELETE FROM outbox WHERE (tbl, key) IN (SELECT tbl, key FROM outbox ORDER BY seq LIMIT ?)",
            (drop,),
        )
        self.dropped += drop
        self._refresh_counts(conn)
        now = time.monotonic()
        if now - self._last_drop_alert >= _DROP_ALERT_EVERY_S or self._last_drop_alert == 0.0:
            self._last_drop_alert = now
            log.error(
                "spool full: oldest rows dropped",
                dropped_total=self.dropped,
                spool_max_mb=round(self._max_bytes / 2**20, 1),
                fix="the database has been unreachable for long: fix it, or raise SPOOL_MAX_MB",
            )

    def _refresh_counts(self, conn: sqlite3.Connection) -> None:
        depth, equity, oldest = conn.execute(
            "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM outbox WHERE tbl = 'equity_data'),"
            " (SELECT queued_at FROM outbox ORDER BY seq LIMIT 1)"
        ).fetchone()
        self._depth, self._equity_depth, self._oldest = depth, equity, oldest


def _pairs(rows: Iterable[TableRow], ticker: str, since: datetime, until: datetime,
           ) -> list[tuple[EquityRow, IndicatorRow | None]]:  # fmt: skip
    """`ticker`'s equity rows of `rows` stamped in [since, until), oldest first, with their indicators."""
    ours = [row for row in rows if row.key[0] == ticker and since <= row.key[1] < until]
    equity = sorted((row for row in ours if isinstance(row, EquityRow)), key=lambda row: row.timestamp)
    indicators = {row.timestamp: row for row in ours if isinstance(row, IndicatorRow)}
    return [(row, indicators.get(row.timestamp)) for row in equity]


def _key_text(key: tuple[Any, ...]) -> str:
    return "|".join(part.isoformat() if isinstance(part, date) else str(part) for part in key)


def _encode(row: TableRow) -> str:
    values = [getattr(row, name) for name in row.__slots__]
    return json.dumps([v.isoformat() if isinstance(v, date) else v for v in values], separators=(",", ":"))


def _decode(table: str, values: list[Any]) -> TableRow:
    if table == "equity_data":
        return EquityRow(values[0], datetime.fromisoformat(values[1]), values[2], values[3])
    if table == "indicators":
        return IndicatorRow(values[0], datetime.fromisoformat(values[1]), values[2], values[3])
    if table == "stream_gaps":
        values[1], values[2] = datetime.fromisoformat(values[1]), datetime.fromisoformat(values[2])
        return GapRow(*values)
    if table == "volume_checks":
        values[1] = date.fromisoformat(values[1])
        values[6] = None if values[6] is None else datetime.fromisoformat(values[6])
        values[9] = datetime.fromisoformat(values[9])
        return VolumeCheckRow(*values)
    values[1], values[4] = datetime.fromisoformat(values[1]), date.fromisoformat(values[4])
    return OptionRow(*values)
