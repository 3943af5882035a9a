"""A newcomer's first hour (issue 20): what the commands print when something is off, as a person
runs them (subprocesses with a clean environment, cwd a temporary directory)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from polling import wait_until

from streaming_service.check import CheckResult
from streaming_service.http import HealthServer
from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file


def command(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`streaming-service ARGS` in `tmp_path` with none of our variables but `env` (JSON logs)."""
    clean = dict(os.environ)  # conftest removed our variables
    return subprocess.run(
        [sys.executable, "-m", "streaming_service", *args],
        cwd=tmp_path, env={**clean, "LOG_FORMAT": "json", **env}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


class RunProcess:
    """What `streaming-service run` does (tests/service_process.py: the Schwab client pointed at `sim`),
    in `tmp_path` with a SQLite database, JSON logs on stderr kept in a file."""

    RUNNER = Path(__file__).with_name("service_process.py")

    def __init__(self, sim: SchwabSimulator, tmp_path: Path, **env: str) -> None:
        token = tmp_path / "token.json"
        write_token_file(token)
        clean = dict(os.environ)  # conftest removed our variables
        settings = {"DATABASE_URL": f"sqlite:///{tmp_path / 'rows.db'}", "SKIP_MARKET_HOURS": "true",
                    "OPTIONS_ENABLED": "false", "SHUTDOWN_GRACE": "3", "HEALTH_PORT": "0", **env}  # fmt: skip
        self.log_path = tmp_path / f"run-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        clock = [str(value) for value in (*sim.start_clock(), sim.speed)]
        self.proc = subprocess.Popen(
            [sys.executable, str(self.RUNNER), sim.api_base_url, str(token), *clock],
            cwd=tmp_path, env={**clean, **settings}, stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines() if line.startswith("{")]

    async def stop(self, within: float = 30.0) -> int:
        """SIGTERM (unless it ended); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, within)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._log.close()


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


# --- HEALTH_PORT taken: say by whom, and how to pick another -----------------------------------------

_HTML_404 = ("404 Not Found", "text/html", b"<h1>404</h1>")
_NOT_US = "a program that is not streaming-service (HTTP 404, text/html at /healthz)"
_SERVICE_BODY = {"state": "streaming", "ok": True, "version": "9.9.9"}


@asynccontextmanager
async def holding_a_port(ours: bool) -> AsyncIterator[int]:
    """A port of 127.0.0.1 held by another streaming-service (`ours`) or by a plain web server."""
    if ours:
        async with HealthServer("127.0.0.1", 0, lambda: (200, _SERVICE_BODY)) as service:
            yield service.port
    else:
        async with await asyncio.start_server(_answering(*_HTML_404), "127.0.0.1", 0) as other:
            yield other.sockets[0].getsockname()[1]


@pytest.mark.parametrize("ours", [True, False], ids=["another service", "another program"])
async def test_demo_says_who_holds_its_health_port_and_how_to_pick_another(
    tmp_path: Path, ours: bool
) -> None:
    async with holding_a_port(ours) as port:
        done = await asyncio.to_thread(
            command, tmp_path, "demo", "--duration", "2", "--speed", "300", HEALTH_PORT=str(port)
        )
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("dashboard:")]
    holder = f"another streaming-service (state streaming, version 9.9.9), whose dashboard is at " \
             f"http://127.0.0.1:{port}/" if ours else _NOT_US  # fmt: skip
    assert line == (
        f"dashboard: not started: port {port} of 127.0.0.1 is in use by {holder}. For this one's, "
        f"set HEALTH_PORT={port + 1} (or another free port) in .env or the environment"
    )


@pytest.mark.parametrize("ours", [True, False], ids=["another service", "another program"])
async def test_dashboard_says_who_holds_the_port_and_how_to_pick_another(tmp_path: Path, ours: bool) -> None:
    async with holding_a_port(ours) as port:
        done = await asyncio.to_thread(command, tmp_path, "dashboard", "--port", str(port))
    assert done.returncode == 2
    holder = _NOT_US
    if ours:
        holder = f"another streaming-service (state streaming, version 9.9.9), whose dashboard is already " \
                 f"at http://127.0.0.1:{port}/"  # fmt: skip
    assert done.stderr == (
        f"cannot listen on 127.0.0.1:{port}: it is in use by {holder}. For another dashboard, pick another "
        f"port: --port {port + 1}\n"
    )


async def test_run_says_who_holds_its_health_port_and_how_to_pick_another(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=3, trades_per_second=2.0)
    async with SchwabSimulator(market, speed=60) as sim, holding_a_port(ours=False) as port:
        service = RunProcess(sim, tmp_path, HEALTH_PORT=str(port))
        await wait_until(lambda: any(e["event"] == "subscribed" for e in service.events()), within=30)
        code = await service.stop()
    (event,) = [e for e in service.events() if e["event"] == "dashboard and /healthz not started"]
    assert event["level"] == "error"
    assert event["held_by"] == f"port {port} of 127.0.0.1 is in use by {_NOT_US}"
    assert event["fix"] == f"set HEALTH_PORT={port + 1} (or another free port) in .env, or 0 for none"
    assert code == 0


# --- run against a database it cannot use: say once what is wrong, "stopped" once at the end --------


def _mentions(lines: list[str], text: str) -> list[str]:
    return [line for line in lines if text in line]


async def test_run_against_an_unreachable_database_retries_says_so_once_and_stops_once(
    tmp_path: Path,
) -> None:
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=2.0)
    async with SchwabSimulator(market, speed=60) as sim:
        service = RunProcess(sim, tmp_path, DATABASE_URL="postgresql://u:p@127.0.0.1:1/db")

        def spooled_while_retrying() -> bool:  # retries logged, and rows waiting for the database
            retries = [e for e in service.events() if e["event"] == "sink unavailable, retrying"]
            return len(retries) >= 3 and retries[-1]["spooled"] > 0

        await wait_until(spooled_while_retrying, within=40)
        code = await service.stop()
    lines = service.lines()
    print("\n".join(lines))
    assert code == 0  # stopped as asked (README, exit codes); the rows wait in the spool
    assert len(_mentions(lines, "Connection refused")) == 1, "the error once, not at every retry"
    (stopped,) = _mentions(lines, "stopped")
    assert stopped == lines[-1]
    event = json.loads(stopped)
    assert event["event"] == "stopped" and event["rows_left_in_spool"] > 0
    assert event["sink_failing_for_s"] > 0


async def test_run_stops_once_with_exit_4_when_the_database_refuses_it(
    tmp_path: Path, postgres_dsn: str
) -> None:
    missing = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database"
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=2.0)
    async with SchwabSimulator(market, speed=60) as sim:
        service = RunProcess(sim, tmp_path, DATABASE_URL=missing)
        code = await asyncio.to_thread(service.proc.wait, 30)
        await service.stop()
    lines = service.lines()
    print("\n".join(lines))
    assert code == 4
    assert lines[-1].startswith("error: ") and 'database "no_such_database" does not exist' in lines[-1]
    (stopped,) = _mentions(lines, "stopped")
    assert json.loads(stopped)["event"] == "stopped"
    assert not _mentions(lines, "Traceback")


def test_the_demo_says_stopped_once_while_it_tries_an_unreachable_database_at_the_end(tmp_path: Path) -> None:
    done = command(
        tmp_path, "demo", "--duration", "1", "--status-every", "0.5", "--database-url",
        "postgresql://u:p@127.0.0.1:1/db", HEALTH_PORT="0",
    )  # fmt: skip
    print(done.stdout)
    assert done.returncode == 0, done.stderr
    assert not _mentions(done.stdout.splitlines(), "stopped"), "no status lines while it stops"
    (stopped,) = _mentions(done.stderr.splitlines(), "stopped")
    assert json.loads(stopped)["event"] == "stopped"
    assert "Connection refused" in done.stdout.splitlines()[-1]  # why the rows could not be counted


# --- the demo's simulator says nothing when a client hangs up ----------------------------------------


async def test_the_simulator_is_quiet_when_a_client_hangs_up(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service stopping while it connects (the demo against a database that refuses it) hangs up
    mid-handshake: neither the streamer nor the REST side may print a traceback for that."""
    async with SchwabSimulator(SimulatedMarket(["QQQ"], seed=1)) as sim:
        assert sim._ws is not None and sim._http is not None
        streamer = urlsplit(sim.streamer_url)
        _, writer = await asyncio.open_connection(streamer.hostname, streamer.port)
        await wait_until(lambda: bool(sim._ws and sim._ws.handlers), within=10)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: simulator\r\n")  # half a handshake, then gone
        await writer.drain()
        writer.close()
        await wait_until(lambda: not (sim._ws and sim._ws.handlers), within=10)
        try:  # what the REST server's thread meets when a client resets its connection
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        except ConnectionResetError:
            sim._http.handle_error(None, ("127.0.0.1", 1))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert capsys.readouterr().err == ""


# --- demo: --duration is the whole demo; the summary says what happened and what is stored -----------


def _stored(db: Path) -> dict[str, int]:
    """What a user sees with SELECT count(*) (and Σ volume as "shares") in the demo's database."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _TABLES}
        counts["shares"] = conn.execute("SELECT coalesce(sum(volume), 0) FROM equity_data").fetchone()[0]
    return counts


_TABLES = ("equity_data", "indicators", "option_prices", "stream_gaps")
_HOLDS = re.compile(
    r"^demo: sqlite:data/demo\.db holds (\d+) rows: equity_data (\d+) \((\d+) shares[^)]*\), "
    r"indicators (\d+), option_prices (\d+), stream_gaps (\d+); (\d+) row writes",
    re.MULTILINE,
)
_DONE = re.compile(r"traded (\d+) shares; simulator sent (\d+) trades \((\d+) shares\); (\d+) ticks received")


def _timed_demo(tmp_path: Path, *args: str) -> tuple[str, float]:
    """Run the demo; its stdout and the seconds from its first line to its exit."""
    clean = dict(os.environ)  # conftest removed our variables
    with subprocess.Popen(
        [sys.executable, "-m", "streaming_service", "demo", *args], cwd=tmp_path,
        env={**clean, "HEALTH_PORT": "0", "LOG_FORMAT": "json"}, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    ) as demo:  # fmt: skip
        assert demo.stdout is not None
        first = demo.stdout.readline()
        started = time.monotonic()
        rest = demo.stdout.read()
        demo.wait(120)
        took = time.monotonic() - started
    assert demo.returncode == 0, first + rest
    return first + rest, took


def test_demo_duration_is_the_whole_demo_and_the_restart_summary_says_what_happened(tmp_path: Path) -> None:
    # at --speed 300 the service stops 4 s in (09:50) and is down 1 s (300 simulated seconds), longer
    # in simulated time when the machine is slow to start it again
    output, took = _timed_demo(
        tmp_path, "--speed", "300", "--duration", "9", "--restart-at", "09:50", "--down-for", "300"
    )
    print(f"{took:.1f} s:\n{output}")
    assert took < 9 + 3, "--duration counts from the start, not from the restart"
    market, _, sent_shares, _ = map(int, _DONE.search(output).groups())  # type: ignore[union-attr]
    restart = re.search(
        r"^demo: the service was down from (09:5\d:\d\d) to (\d\d:\d\d:\d\d) New York time \(--restart-at, "
        r"--down-for\), so the simulator could not send it the (\d+) shares traded meanwhile; on restart it "
        r"credited (\d+) minutes from price history \(each minute's candle less what was already recorded "
        r"in it\) and recorded the gap in stream_gaps$",
        output, re.MULTILINE,
    )  # fmt: skip
    assert restart, output
    assert int(restart[3]) == market - sent_shares > 0 and int(restart[4]) > 0
    stored = _stored(tmp_path / "data" / "demo.db")
    holds = _HOLDS.search(output)
    assert holds, output
    total, equity, shares, indicators, options, gaps, writes = map(int, holds.groups())
    assert (equity, indicators, options, gaps) == tuple(stored[t] for t in _TABLES)
    # the restart's gap, and the start at 09:30:00.000 (its first frame came a few ms later: the
    # 09:30 minute is reconciled with its candle like any span's)
    assert total == sum(stored[t] for t in _TABLES) and gaps == 2
    assert shares == stored["shares"] == market, "every share the market traded is in equity_data"
    assert writes >= total
    assert "rows written" not in output.splitlines()[-1]


def test_the_rows_the_demo_reports_are_the_rows_in_a_postgres_database(
    tmp_path: Path, postgres_dsn: str
) -> None:
    done = command(tmp_path, "demo", "--speed", "300", "--duration", "2", "--database-url", postgres_dsn,
                   HEALTH_PORT="0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    holds = re.search(
        r"holds (\d+) rows \(including any from earlier runs\): equity_data (\d+) \((\d+) shares", done.stdout
    )
    assert holds, done.stdout
    with psycopg.connect(postgres_dsn) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _TABLES]  # type: ignore[index]
        shares = conn.execute("SELECT sum(volume) FROM equity_data").fetchone()[0]  # type: ignore[index]
    assert (int(holds[1]), int(holds[2]), int(holds[3])) == (sum(counts), counts[0], shares)


def test_a_duration_that_ends_before_the_restart_is_refused(tmp_path: Path) -> None:
    done = command(tmp_path, "demo", "--duration", "36", "--restart-at", "10:00")
    assert done.returncode == 2
    assert done.stderr == (
        "config error: --duration 36 ends the demo before the restart is done: at --speed 60, --restart-at "
        "10:00 is 30 s in, --down-for 300 lasts 5 s more and the restarted service needs a few seconds; give "
        "--duration more than 37 (or an earlier --restart-at, or a higher --speed)\n"
    )
