"""Delivery across faults, with `streaming-service run` as a real process (tests/service_process.py)
against the simulator and a real Postgres that the tests stop and start:

- the database down for a while mid-stream: nothing lost, no duplicate, no hole, RSS flat;
- SIGTERM while the database is down: exit 0 within SHUTDOWN_GRACE + 2 s; a restart writes the rest;
- kill -9 with BATCH_INTERVAL=60: what was received more than a group-commit window before the kill
  is written after a restart.

`SOAK=1` makes the outage 30 s (default 8 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_cluster import PgCluster, free_port
from polling import wait_until

from streaming_service.simulator import SchwabSimulator, SimulatedMarket, write_token_file

OUTAGE_S = 30.0 if os.environ.get("SOAK") else 8.0
GRACE_S = 3.0
RUNNER = Path(__file__).with_name("service_process.py")


#: Every `run` process a test started: killed after the test if it is still running (a failed test).
_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class ServiceProcess:
    """One `run` process; its JSON log goes to a file."""

    def __init__(self, sim: SchwabSimulator, tmp_path: Path, dsn: str, **settings: Any) -> None:
        token = tmp_path / "token.json"
        if not token.exists():
            write_token_file(token)
        env = dict(os.environ)  # conftest removed our variables
        env.update(
            STREAM_TICKER="QQQ", DATABASE_URL=dsn, ROW_RESOLUTION="0", OPTIONS_ENABLED="false",
            SKIP_MARKET_HOURS="true", HEALTH_PORT="0", SPOOL_PATH=str(tmp_path / "spool.db"),
            DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"), SHUTDOWN_GRACE=str(GRACE_S), LOG_LEVEL="INFO",
        )  # fmt: skip
        env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log_path = tmp_path / f"service-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        clock = [str(value) for value in (*sim.start_clock(), sim.speed)]
        self.proc = subprocess.Popen(
            [sys.executable, str(RUNNER), sim.api_base_url, str(token), *clock],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=self._log,
        )  # fmt: skip
        _STARTED.append(self.proc)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    async def stop(self, sig: int = signal.SIGTERM, within: float = 30.0) -> tuple[int, float]:
        """Send `sig`; return (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = await asyncio.to_thread(self.proc.wait, within)
        self._log.close()
        return code, time.monotonic() - started

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def written(dsn: str) -> tuple[int, int]:
    """(rows, Σ volume) in equity_data; (0, 0) before the table exists or while the server is down."""
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            row = conn.execute("SELECT count(*), coalesce(sum(volume), 0) FROM equity_data").fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return 0, 0
    assert row is not None
    return int(row[0]), int(row[1])


def row_times(dsn: str) -> set[int]:
    """The timestamps (epoch ms) of equity_data's rows."""
    with psycopg.connect(dsn) as conn:
        stamps = conn.execute("SELECT timestamp FROM equity_data").fetchall()
    return {int(ts.timestamp() * 1000 + 0.5) for (ts,) in stamps}


async def until_written(dsn: str, volume: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while (await asyncio.to_thread(written, dsn))[1] != volume:
        if time.monotonic() > deadline:
            raise TimeoutError(f"equity_data holds {written(dsn)} (rows, volume); expected volume {volume}")
        await asyncio.sleep(0.1)


def sent(sim: SchwabSimulator) -> tuple[set[int], int]:
    """(the timestamps of the trades the simulator delivered, Σ shares the market traded): with
    ROW_RESOLUTION=0 each delivered trade has its row, and the record holds every share traded (a
    service started after the open backfills the minutes before it from price history)."""
    return {t.timestamp_ms for t in sim.sent_trades}, sim.market.total_volume("QQQ")


def assert_recorded(dsn: str, delivered: set[int], volume: int) -> None:
    """No share lost or counted twice, no delivered trade without its row."""
    assert written(dsn)[1] == volume
    assert delivered <= row_times(dsn)


async def test_database_outage_mid_stream_loses_nothing_and_keeps_rss_flat(
    durable_cluster: PgCluster, durable_dsn: str, tmp_path: Path
) -> None:
    market = SimulatedMarket(["QQQ"], seed=21, trades_per_second=20.0, session_seconds=23_400.0)
    async with SchwabSimulator(market, speed=60, heartbeat_seconds=0.2) as sim:
        service = ServiceProcess(sim, tmp_path, durable_dsn, batch_interval=0.5)
        await wait_until(lambda: written(durable_dsn)[0] > 100, within=30)
        rss_before = service.rss_mib()
        durable_cluster.stop()
        down_at, trades_before = time.monotonic(), len(sim.sent_trades)
        await wait_until(lambda: time.monotonic() - down_at >= OUTAGE_S, within=OUTAGE_S + 5)
        rss_during = service.rss_mib()
        during = len(sim.sent_trades) - trades_before
        durable_cluster.start()
        sim.pause()
        rows, volume = sent(sim)
        await until_written(durable_dsn, volume)
        rss_after = service.rss_mib()
        code, _ = await service.stop()
    assert code == 0
    assert_recorded(durable_dsn, rows, volume)  # no share lost, no row twice, no hole
    retries = [e for e in service.events() if e["event"] == "write failed, retrying"]
    print(
        f"outage {OUTAGE_S:.0f}s: {during} trades arrived while the database was down; "
        f"{len(rows)} trades delivered, {volume} shares written, exact; {len(retries)} retries; "
        f"RSS before {rss_before:.1f} MiB, end of outage {rss_during:.1f} MiB, "
        f"after catch-up {rss_after:.1f} MiB"
    )
    assert retries


async def test_sigterm_while_the_database_is_down_exits_in_time_and_a_restart_writes_the_rest(
    durable_cluster: PgCluster, durable_dsn: str, tmp_path: Path
) -> None:
    market = SimulatedMarket(["QQQ"], seed=22, trades_per_second=5.0, session_seconds=23_400.0)
    async with SchwabSimulator(market, speed=60, heartbeat_seconds=0.2) as sim:
        first = ServiceProcess(sim, tmp_path, durable_dsn, batch_interval=0.5)
        await wait_until(lambda: written(durable_dsn)[0] > 20, within=30)
        durable_cluster.stop()
        trades_before = len(sim.sent_trades)
        await wait_until(lambda: len(sim.sent_trades) > trades_before + 200, within=30)
        sim.pause()
        await asyncio.sleep(1.0)  # the scenario: the last trades arrived a second before SIGTERM
        code, took = await first.stop()
        stopped = [e for e in first.events() if e["event"] == "stopped"]
        print(f"SIGTERM with the database down: exit {code} after {took:.2f}s (grace {GRACE_S}s); "
              f"left in the spool: {stopped[-1]['rows_left_in_spool'] if stopped else '?'} rows")  # fmt: skip
        assert code == 0
        assert took <= GRACE_S + 2
        assert stopped and stopped[-1]["rows_left_in_spool"] > 0

        durable_cluster.start()
        second = ServiceProcess(sim, tmp_path, durable_dsn, batch_interval=0.5)
        rows, volume = sent(sim)
        await until_written(durable_dsn, volume)
        code, _ = await second.stop()
    assert code == 0
    assert_recorded(durable_dsn, rows, volume)


async def test_kill_9_loses_at_most_the_last_commit_window(durable_dsn: str, tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=23, trades_per_second=5.0, session_seconds=23_400.0)
    async with SchwabSimulator(market, speed=60, heartbeat_seconds=0.2) as sim:
        port = free_port()
        first = ServiceProcess(
            sim, tmp_path, durable_dsn, batch_interval=60, batch_size=10_000, health_port=port
        )
        await wait_until(lambda: len(sim.sent_trades) > 300, within=30)
        sim.pause()
        await wait_until(lambda: ticks_received(port) >= len(sim.sent_trades), within=30)  # all taken in
        await asyncio.sleep(1.0)  # the guarantee: rows received more than 1 s before the kill
        assert written(durable_dsn) == (0, 0)  # BATCH_INTERVAL=60: nothing written yet
        code, _ = await first.stop(signal.SIGKILL)
        assert code == -signal.SIGKILL

        second = ServiceProcess(sim, tmp_path, durable_dsn, batch_interval=0.5)
        rows, volume = sent(sim)
        await until_written(durable_dsn, volume)
        code, _ = await second.stop()
    print(f"kill -9 with BATCH_INTERVAL=60: {len(rows)} trades / {volume} shares received before it, "
          "all written after the restart")  # fmt: skip
    assert code == 0
    assert_recorded(durable_dsn, rows, volume)


def ticks_received(port: int) -> int:
    """The trades a `run` process has taken in so far, from its /healthz (-1 while it cannot answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503 still carries the body
        body = error.read()
    except OSError:
        return -1
    return int(json.loads(body)["stream"]["ticks"])


def status_command(port: int) -> subprocess.CompletedProcess[str]:
    """`streaming-service status` as a person runs it, against HEALTH_PORT=`port`."""
    env = dict(os.environ)  # conftest removed our variables
    env["HEALTH_PORT"] = str(port)
    command = [sys.executable, "-m", "streaming_service", "status"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=False)


async def test_status_reports_sink_down_and_a_second_signal_stops_at_once(
    durable_cluster: PgCluster, durable_dsn: str, tmp_path: Path
) -> None:
    market = SimulatedMarket(["QQQ"], seed=24, trades_per_second=5.0, session_seconds=23_400.0)
    port = free_port()
    async with SchwabSimulator(market, speed=60, heartbeat_seconds=0.2) as sim:
        first = ServiceProcess(
            sim, tmp_path, durable_dsn, batch_interval=0.5, shutdown_grace=60, sink_down_alert_s=1,
            health_port=port,
        )  # fmt: skip
        await wait_until(lambda: written(durable_dsn)[0] > 20, within=30)
        healthy = await asyncio.to_thread(status_command, port)
        assert healthy.returncode == 0, healthy.stderr
        assert "streaming" in healthy.stdout
        assert "refresh token expires" in healthy.stdout

        durable_cluster.stop()
        await wait_until(lambda: "sink_down" in status_command(port).stdout, within=30)
        down = await asyncio.to_thread(status_command, port)
        print(down.stdout)
        assert down.returncode == 1

        sim.pause()  # what is sent after the first process stops reading is a gap (not this test)
        await asyncio.sleep(1.0)
        first.proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: any(e["event"].startswith("stopping") for e in first.events()))
        code, took = await first.stop(signal.SIGTERM)  # the second signal, during a 60 s grace
        print(f"second signal: exit {code} after {took:.2f}s of a 60 s grace")
        assert code == 0
        assert took < 5

        durable_cluster.start()
        second = ServiceProcess(sim, tmp_path, durable_dsn, batch_interval=0.5)
        rows, volume = sent(sim)
        await until_written(durable_dsn, volume)
        code, _ = await second.stop()
    assert code == 0
    assert_recorded(durable_dsn, rows, volume)
