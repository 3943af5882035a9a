"""Run a command (the test suite) beside a poisoned configuration, then prove nothing used it.

    python .ci/hermetic.py ./scripts/test [args...]

Before the command: a PostgreSQL database `users_data` holding a marker row stands for the user's
database; a listener stands for their Supabase project and health port; a folder that must never be
created stands for their token, spool and dead-letter files. A `.env` in the checkout and this
process's environment both point every setting there. After it: the command's exit status is kept,
and this fails (exit 3) if any connection reached `users_data` or its marker changed, if the listener
got a request, if the folder appeared, or if the checkout holds files that were not there before
(other than the caches below). The `.env` is removed again either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from pg_cluster import PgCluster  # noqa: E402

#: What a test run may leave in the checkout: tool caches, the virtualenv, bytecode.
ALLOWED = (".venv/", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".hypothesis/", "__pycache__/")
MARKER = "the user's own row: no test may read or change it"


class _Trap(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def _record(self) -> None:
        _Trap.hits.append(f"{self.command} {self.path}")
        self.send_response(418)
        self.end_headers()

    do_GET = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _record

    def log_message(self, format: str, *args: object) -> None:
        pass


def _checkout_files() -> set[str]:
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".", ":!.venv"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    paths = {line[3:] for line in listed.splitlines()}
    return {p for p in paths if p != ".env" and not any(a in f"/{p}" for a in (f"/{a}" for a in ALLOWED))}


def _sessions(cluster: PgCluster) -> tuple[int, list[str], list[str]]:
    """Sessions ever opened on users_data (not counting this one), its tables, its marker rows."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = 'users_data'").fetchone()
    with psycopg.connect(cluster.dsn("users_data"), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        rows = [r[0] for r in conn.execute("SELECT note FROM marker ORDER BY note")]
    return (row[0] if row else 0), sorted(tables), rows


def main(command: list[str]) -> int:
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    dotenv = ROOT / ".env"
    if dotenv.exists():
        print(f"hermetic: {dotenv} exists; run this on a clean checkout (it writes its own)", file=sys.stderr)
        return 2
    before = _checkout_files()
    trap = ThreadingHTTPServer(("127.0.0.1", 0), _Trap)
    threading.Thread(target=trap.serve_forever, daemon=True).start()
    trap_url = f"http://127.0.0.1:{trap.server_address[1]}"
    with PgCluster() as cluster, tempfile.TemporaryDirectory() as scratch:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE users_data")
        with psycopg.connect(cluster.dsn("users_data"), autocommit=True) as conn:
            conn.execute("CREATE TABLE marker (note text)")
            conn.execute("INSERT INTO marker VALUES (%s)", (MARKER,))
        sessions_before, _, _ = _sessions(cluster)
        users_files = Path(scratch) / "users-files"  # must never be created
        poison = {
            "DATABASE_URL": cluster.dsn("users_data"),
            "SUPABASE_URL": trap_url,
            "SUPABASE_SERVICE_ROLE_KEY": "poisoned-service-role-key",
            "SUPABASE_ANON_KEY": "poisoned-anon-key",
            "SCHWAB_APP_KEY": "poisoned-app-key",
            "SCHWAB_APP_SECRET": "poisoned-app-secret",
            "SCHWAB_TOKEN_PATH": str(users_files / "token.json"),
            "SPOOL_PATH": str(users_files / "spool.db"),
            "DEAD_LETTER_PATH": str(users_files / "dead_letters.jsonl"),
            "HEALTH_PORT": str(trap.server_address[1]),
            "STREAM_TICKER": "POISON",
        }
        dotenv.write_text("".join(f"{k}={v}\n" for k, v in poison.items()))
        try:
            status = subprocess.run(command, cwd=ROOT, env={**os.environ, **poison}, check=False).returncode
        finally:
            dotenv.unlink()
        sessions_after, tables, rows = _sessions(cluster)
    trap.shutdown()
    problems = []
    if sessions_after - 1 != sessions_before:  # minus the session _sessions() itself opened
        problems.append(f"{sessions_after - 1 - sessions_before} connection(s) reached the user's database")
    if tables != ["marker"] or rows != [MARKER]:
        problems.append(f"the user's database changed: tables {tables}, marker rows {rows}")
    if _Trap.hits:
        problems.append(f"the user's Supabase URL / health port got requests: {_Trap.hits[:5]}")
    if users_files.exists():
        problems.append(f"the user's token/spool folder was created: {sorted(users_files.iterdir())}")
    if left := sorted(_checkout_files() - before):
        problems.append(f"files left in the checkout: {left[:20]}")
    for problem in problems:
        print(f"hermetic: FAIL: {problem}", file=sys.stderr)
    if not problems:
        print("hermetic: the poisoned .env and environment were neither read nor written")
    return status if status else (3 if problems else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
