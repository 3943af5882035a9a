"""Issue 21's fault soak: a whole simulated day, 04:00 to 20:00, recorded by `streaming-service run`
as a real process (tests/service_process.py: around the clock, into a real Postgres) through a
random schedule of faults, then compared minute by minute with the simulator's own trade list
(tests/day_truth.py): the regular session's volume per ticker exact to the share (candles are
exact), every minute's cumulative volume within one minute's volume of the truth.

Faults, at random simulated times (each kind at least once per seed, drawn from the seed):
kill -9 and SIGTERM (a new process is started at once, with the same spool), Postgres stopped for
a while and started again, the socket dropped, a stale stream (the socket silent, not even
heartbeats), refused logins (a drop, then logins denied), price-history 500s (a drop, then the
next market-data requests fail). The service's own timers run on the wall clock, the market
`SPEED` times faster: a restart or a backoff of a second is about an hour of the market, which the
service must credit from price history.

Budget: the default (3 seeds, `SPEED` 3000: a day in ~20 s each, ~25 s with settling) takes about
75 s on 2 cores when the record is right; a wrong one waits 30 s per seed for it to settle first.
Longer runs: `TEST_SOAK_SEEDS=20` (seeds 1..N), `TEST_SOAK_SPEED=600` (slower market: shorter gaps,
more trades streamed live), `TEST_SOAK_TPS=1` (trades per second per ticker in the session).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from day_truth import at, compare, read_equity, settle, whole_day
from harness import command_env
from pg_cluster import PgCluster
from polling import wait_until

from streaming_service.simulator import SchwabSimulator, write_token_file

SEEDS = int(os.environ.get("TEST_SOAK_SEEDS", "3"))
SPEED = float(os.environ.get("TEST_SOAK_SPEED", "3000"))
TRADES_PER_SECOND = float(os.environ.get("TEST_SOAK_TPS", "0.1"))
DAY = date(2026, 3, 10)  # a Tuesday
RESOLUTION = 1
RUNNER = Path(__file__).with_name("service_process.py")
KINDS = (
    "kill -9",
    "SIGTERM",
    "database down",
    "socket drop",
    "stale stream",
    "logins refused",
    "history 500s",
)
#: Kinds drawn again for the extra faults: not refused logins, whose denials add up while no
#: connection has lasted long enough (wall seconds) to count as healthy, which at this speed is the
#: whole day; five in a row are an expired login, which ends a process without a token watcher.
EXTRA_KINDS = tuple(kind for kind in KINDS if kind != "logins refused")
EXTRA_FAULTS = 4


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


class Recorder:
    """`streaming-service run` recording the simulator's symbols into `dsn` around the clock; one
    process at a time, each on the simulator's clock, sharing one spool, token and log file."""

    def __init__(self, sim: SchwabSimulator, tmp_path: Path, dsn: str) -> None:
        self._sim = sim
        self._tmp_path = tmp_path
        self._token = tmp_path / "token.json"
        write_token_file(self._token)
        self.log_path = tmp_path / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._logins_before = 0
        self._env = command_env(
            STREAM_TICKER=",".join(sim.market.symbols), DATABASE_URL=dsn, ROW_RESOLUTION=str(RESOLUTION),
            OPTIONS_ENABLED="false", SKIP_MARKET_HOURS="true", HEALTH_PORT="0", STALE_SECONDS="5",
            BATCH_SIZE="200", BATCH_INTERVAL="0.2", SHUTDOWN_GRACE="1", SINK_TIMEOUT="2",
            SPOOL_PATH=str(tmp_path / "spool.db"), DEAD_LETTER_PATH=str(tmp_path / "dead.jsonl"),
            LOG_LEVEL="INFO",
        )  # fmt: skip

    def start(self) -> None:
        self._logins_before = self._logins()
        clock = [str(value) for value in (*self._sim.start_clock(), self._sim.speed)]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), self._sim.api_base_url, str(self._token), *clock],
                cwd=self._tmp_path, env=self._env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        _STARTED.append(self.proc)

    def _logins(self) -> int:
        return sum(1 for request in self._sim.stream_requests if request[:2] == ("ADMIN", "LOGIN"))

    async def logged_in(self) -> None:
        """Wait until the current process has tried to log in to the streamer: it is up (its
        signal handlers are installed before it connects)."""
        await wait_until(lambda: self.alive() and self._logins() > self._logins_before, within=30)

    async def stop(self, sig: int) -> int:
        """Send `sig` and wait for the process to end; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return await asyncio.to_thread(self.proc.wait, 30)

    def alive(self) -> bool:
        """True; raises if the process ended by itself."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}; see {self.log_path}")
        return True


def schedule(seed: int) -> list[tuple[float, str]]:
    """(market time, fault) for the seed's day, in time order: every kind once and `EXTRA_FAULTS`
    more of `EXTRA_KINDS`, between 04:30 and 19:30, at least 10 simulated minutes apart."""
    rng = random.Random(f"soak:{seed}")
    kinds = [*KINDS, *rng.choices(EXTRA_KINDS, k=EXTRA_FAULTS)]
    slots = rng.sample(range(int(at(DAY, 4, 30)), int(at(DAY, 19, 30)), 600), len(kinds))
    return sorted(zip(sorted(slots), rng.sample(kinds, len(kinds)), strict=True))


async def until(sim: SchwabSimulator, recorder: Recorder, moment_s: float) -> None:
    wall = max(0.0, moment_s - sim.clock()) / sim.speed
    await wait_until(lambda: recorder.alive() and sim.clock() >= moment_s, within=3 * wall + 30)


async def inflict(
    kind: str, moment: float, sim: SchwabSimulator, recorder: Recorder, cluster: PgCluster
) -> None:
    """Do one fault (scheduled at `moment`) to the running service; return when it is over (the
    service then recovers)."""
    if kind in ("kill -9", "SIGTERM"):
        if kind == "SIGTERM":  # (one that comes while Python starts is a kill: no handler yet)
            await recorder.logged_in()
        code = await recorder.stop(signal.SIGKILL if kind == "kill -9" else signal.SIGTERM)
        assert code == (-signal.SIGKILL if kind == "kill -9" else 0), f"{kind}: exit {code}"
        recorder.start()
    elif kind == "database down":
        await asyncio.to_thread(cluster.stop)
        await until(sim, recorder, sim.clock() + random.Random(moment).uniform(5, 60) * 60)
        await asyncio.to_thread(cluster.start)
    elif kind == "socket drop":
        await sim.disconnect_all()
    elif kind == "stale stream":
        sim.silence()
    elif kind == "logins refused":
        sim.reject_logins(2)
        await sim.disconnect_all()
    elif kind == "history 500s":
        sim.fail_next_market_data(6, 500)
        await sim.disconnect_all()
    else:
        raise AssertionError(f"unknown fault {kind!r}")


@pytest.mark.parametrize("seed", range(1, SEEDS + 1))
async def test_a_whole_day_of_faults_is_recorded_exactly(
    seed: int, durable_cluster: PgCluster, durable_dsn: str, tmp_path: Path
) -> None:
    market = whole_day(DAY, seed=seed, session_seconds=23_400.0, trades_per_second=TRADES_PER_SECOND)
    faults = schedule(seed)
    done: list[str] = []
    started = time.monotonic()
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2, candle_lag_s=5.0) as sim:
        sim.start_clock(at_offset_s=market.day_start_ms / 1000 - market.open_ms / 1000)  # 04:00
        recorder = Recorder(sim, tmp_path, durable_dsn)
        recorder.start()
        for moment, kind in faults:
            await until(sim, recorder, moment)
            await inflict(kind, moment, sim, recorder, durable_cluster)
            done.append(f"{kind} at {time.strftime('%H:%M', time.gmtime(moment - at(DAY, 0)))}")
        await until(sim, recorder, market.day_end_ms / 1000 + 60)  # 20:01: every candle is served
        settled = await settle(market, lambda: read_equity(durable_dsn), resolution=RESOLUTION)
        await recorder.logged_in()
        code = await recorder.stop(signal.SIGTERM)
    verdict = compare(market, read_equity(durable_dsn), resolution=RESOLUTION)
    print(
        f"\nseed {seed}: {time.monotonic() - started:.0f} s; {', '.join(done)}; "
        f"settled {settled.ok}; last exit {code}\n{verdict.report()}"
    )
    assert code == 0, f"the last process exited with {code}: see {recorder.log_path}"
    assert verdict.ok, verdict.report()
