"""Each of the three sinks over a real, empty database, and SQL access to that database: the
`target` fixture (import it into a test module) is parametrised over SQLite, Postgres and Supabase
(the real supabase-py client → the PostgREST double → Postgres with Supabase's roles and migrations).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgrest_double import PostgrestDouble, make_key

from streaming_service.sinks import PostgresSink, Sink, SQLiteSink
from streaming_service.sinks.supabase import SupabaseSink

__all__ = ["KINDS", "Target", "target"]

KINDS = ("sqlite", "postgres", "supabase")


@dataclass
class Target:
    """`sink` is opened; `url` is the SQLite path or the (superuser) Postgres DSN; `double` is the
    PostgREST double (Supabase only); refused rows go to `dead`."""

    kind: str
    sink: Sink
    url: str
    dead: Path
    double: PostgrestDouble | None = None

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run `sql` (`?` placeholders) on the database directly; rows, or [] for a statement."""
        if self.kind == "sqlite":
            with contextlib.closing(sqlite3.connect(self.url, isolation_level=None)) as lite:
                return lite.execute(sql, params).fetchall()
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s").encode(), params)
            return cursor.fetchall() if cursor.description else []

    def letters(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.dead.read_text().splitlines()] if self.dead.exists() else []

    def refused_code(self, sqlstate: str) -> str:
        """The dead-letter code of a CHECK failure: the SQLSTATE, or SQLite's error name."""
        return "SQLITE_CONSTRAINT_CHECK" if self.kind == "sqlite" else sqlstate


@pytest.fixture(params=KINDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    dead = tmp_path / "dead.jsonl"
    with contextlib.ExitStack() as stack:
        double = None
        if request.param == "sqlite":
            url = str(tmp_path / "rows.db")
            sink: Sink = SQLiteSink(Path(url), dead_letter_path=dead)
        elif request.param == "postgres":
            url = request.getfixturevalue("postgres_dsn")
            sink = PostgresSink(url, dead_letter_path=dead, timeout=5)
        else:
            url = request.getfixturevalue("supabase_dsn")
            double = stack.enter_context(PostgrestDouble(url))
            sink = SupabaseSink(double.url, make_key("service_role"), dead_letter_path=dead, timeout=5)
        await sink.open()
        try:
            yield Target(request.param, sink, url, dead, double)
        finally:
            await sink.aclose()
