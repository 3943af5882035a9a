"""One SQLite file used from worker threads: the plumbing the spool and the SQLite sink share.

One connection in autocommit mode (transactions are spelled out), WAL journal with
synchronous=NORMAL (a commit survives kill -9). Every call runs in a worker thread
(`asyncio.to_thread`), one at a time under a `threading.Lock`, which also holds when the awaiting
task is cancelled: the call then finishes in its thread and the file stays consistent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["SqliteFile"]

_T = TypeVar("_T")


class SqliteFile:
    """`open()` creates the parent directory, the file and `schema` (a script run at every open);
    `call(func, *args)` runs `func(connection, *args)`; `close()` is idempotent. Errors are
    sqlite3's and OSError, as raised: the owner maps them."""

    def __init__(self, path: Path, schema: str, *, busy_timeout: float) -> None:
        self.path = path
        self._schema = schema
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    async def open(self) -> None:
        await asyncio.to_thread(self._locked, self._open_sync)

    async def call(self, func: Callable[..., _T], *args: Any) -> _T:
        """`func(connection, *args)` in a worker thread. Raises `sqlite3.ProgrammingError` if the
        file is not open (or was closed while the call waited)."""
        return await asyncio.to_thread(self._locked, self._with_connection, func, *args)

    async def close(self) -> None:
        await asyncio.to_thread(self._locked, self._close_sync)

    def _locked(self, func: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return func(*args)

    def _with_connection(self, func: Callable[..., _T], *args: Any) -> _T:
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self.path} is not open")
        return func(self._conn, *args)

    def _open_sync(self) -> None:
        if self._conn is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(self._schema)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
