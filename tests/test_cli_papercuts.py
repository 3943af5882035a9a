"""A newcomer's first hour (issue 20): what the commands print when something is off, as a person
runs them (subprocesses with a clean environment, cwd a temporary directory)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from streaming_service.check import CheckResult

#: Prefixes of the service's variables: none of the user's may leak into a test's subprocess.
_OURS = ("STREAM_", "BATCH_", "ROW_", "SMA_", "OPTIONS_", "SCHWAB_", "SUPABASE_", "DEAD_LETTER", "DATABASE_",
         "SKIP_", "LOG_", "SPOOL_", "SHUTDOWN_", "SINK_", "STALE_", "HEALTH_", "MAX_VOLUME")  # fmt: skip


def command(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`streaming-service ARGS` in `tmp_path` with none of our variables but `env` (JSON logs)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(_OURS)}
    return subprocess.run(
        [sys.executable, "-m", "streaming_service", *args],
        cwd=tmp_path, env={**clean, "LOG_FORMAT": "json", **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


# --- check: every ✗ has a fix that says what to change ---------------------------------------------


@pytest.mark.parametrize(
    ("env", "dotenv", "fixes"),
    [
        ({"BATCH_SIZE": "abc"}, "",
         ["set BATCH_SIZE in the environment (it overrides .env) to an integer from 1 to 10000, "
          "or remove it for the default (10)"]),
        ({}, "HEALTH_PORT=99999\n",
         ["set HEALTH_PORT in .env to a TCP port, 0 = no health server, "
          "or remove it for the default (8787)"]),
        ({"STREAM_TICKERS": "SPY"}, "", ["rename STREAM_TICKERS to STREAM_TICKER in the environment"]),
        ({"SUPABASE_URL": "https://p.supabase.co"}, "",
         ["set SUPABASE_SERVICE_ROLE_KEY too (Supabase dashboard: Project Settings > API keys), "
          "or remove SUPABASE_URL"]),
        ({"BATCH_SIZE": "0", "DATABASE_URL": "mysql://x"}, "STREAM_TICKERX=1\n",
         ["set BATCH_SIZE in the environment (it overrides .env) to an integer from 1 to 10000, "
          "or remove it for the default (10)",
          "set DATABASE_URL in the environment (it overrides .env) to sqlite:///path.db or "
          "postgresql://user:pass@host:port/db, or remove it",
          "rename STREAM_TICKERX to STREAM_TICKER in .env"]),
    ],
)  # fmt: skip
def test_check_says_what_to_change_for_each_configuration_error(
    tmp_path: Path, env: dict[str, str], dotenv: str, fixes: list[str]
) -> None:
    if dotenv:
        (tmp_path / ".env").write_text(dotenv)
    done = command(tmp_path, "check", **env)
    print(done.stdout)
    assert done.returncode == 2 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if re.fullmatch(r"\s*fix:\s*", line)], "an empty fix line"
    failed = [i for i, line in enumerate(lines) if line.startswith("✗ ")]
    assert len(failed) == len(fixes)
    for i, fix in zip(failed, fixes, strict=True):
        assert lines[i].startswith("✗ configuration: ") and "config error" not in lines[i]
        assert lines[i + 1] == f"    fix: {fix}"


def test_a_result_without_a_fix_has_no_fix_line() -> None:
    assert CheckResult("database", False, "no check for 'x'").line() == "✗ database: no check for 'x'"


# --- status: something else on HEALTH_PORT is not called ok ---------------------------------------


def _answering(status: str, content_type: str, body: bytes) -> Callable[..., Awaitable[None]]:
    """A one-answer HTTP server's connection handler: `status` with `body`, whatever was asked."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    return answer


@pytest.mark.parametrize(
    ("status", "content_type", "body", "seen"),
    [
        ("200 OK", "text/html", b"<html>Directory listing</html>", "HTTP 200, text/html"),
        ("404 Not Found", "text/html", b"<h1>404</h1>", "HTTP 404, text/html"),
        ("404 Not Found", "application/json", b'{"ok": false, "error": "no route"}', "HTTP 404, JSON"),
        ("200 OK", "application/json", b'{"ok": true}', "HTTP 200, JSON"),
    ],
)
async def test_status_says_when_what_answers_on_the_port_is_not_this_service(
    tmp_path: Path, status: str, content_type: str, body: bytes, seen: str
) -> None:
    async with await asyncio.start_server(_answering(status, content_type, body), "127.0.0.1", 0) as other:
        port = other.sockets[0].getsockname()[1]
        done = await asyncio.to_thread(command, tmp_path, "status", HEALTH_PORT=str(port))
    print(done.stdout + done.stderr)
    assert done.returncode == 1
    assert done.stdout == "" and not re.search(r"\bok\b", done.stderr, re.IGNORECASE)
    assert done.stderr.startswith(
        f"error: what answers on port {port} is not streaming-service ({seen} at /healthz): "
    ), done.stderr
    assert "HEALTH_PORT" in done.stderr
