"""The service between sessions: disconnected, no option-chain requests, healthy (waiting_for_open);
at the close it stops streaming by itself."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

from harness import running_service, simulator_client
from memory_sink import MemorySink
from polling import wait_until

from streaming_service.config import load_settings
from streaming_service.market_hours import MarketHours
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, SimulatedMarket


def market_data_requests(sim: SchwabSimulator) -> int:
    return sum(1 for _, path in sim.rest_requests if path.startswith("/marketdata/"))


async def test_closed_market_asks_schwab_nothing_and_the_close_ends_the_stream(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=8, trades_per_second=2.0, session_seconds=3600.0)
    settings = load_settings(
        stream_ticker="QQQ", options_enabled=True, spool_path=tmp_path / "spool.db", health_port=0
    )
    async with SchwabSimulator(market, speed=10, heartbeat_seconds=0.2) as sim:
        now = sim.clock()
        closed = MarketHours(((now + 3600, now + 7200),))
        client = simulator_client(sim, tmp_path)
        service = Service(settings, client, MemorySink(), market_hours=lambda: closed)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await wait_until(lambda: service.state() == "waiting_for_open")
        assert service.health()[0] == 200
        assert sim.rest_requests == [] and sim.stream_requests == []  # not even a login
        stop.set()
        await asyncio.wait_for(task, timeout=30)

        now = sim.clock()
        closing_soon = MarketHours(((now - 60, now + 4), (now + 3600, now + 7200)))
        service = Service(
            settings, simulator_client(sim, tmp_path), MemorySink(), market_hours=lambda: closing_soon
        )
        task = asyncio.create_task(service.run(stop := asyncio.Event()))
        await wait_until(lambda: service.state() == "streaming" and market_data_requests(sim) > 0)
        await wait_until(lambda: service.state() == "waiting_for_open", within=15)
        assert not service.stream.subscribed.is_set()
        asked = market_data_requests(sim)
        ticks = service.pipeline.ticks
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    print(f"session: {ticks} ticks and {asked} market-data requests, none before the open")
    assert market_data_requests(sim) == asked


async def test_health_turns_503_when_no_data_comes_in_market_hours_and_back_to_200(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=9, trades_per_second=4.0, session_seconds=3600.0)
    async with SchwabSimulator(market, speed=10, heartbeat_seconds=0.2) as sim:
        async with running_service(sim, tmp_path, stale_seconds=5, options_enabled=False) as service:
            await wait_until(lambda: service.pipeline.ticks > 5)
            assert service.health()[0] == 200
            sim.pause()  # heartbeats go on, data stops
            await wait_until(lambda: service.health()[0] == 503, within=20)
            body = service.health()[1]
            assert body["stale"] and body["tickers"]["QQQ"]["last_data_age_s"] > 5
            sim.resume()
            await wait_until(lambda: service.health()[0] == 200, within=20)
        reconnects = service.stream.stats.stale_reconnects
    print(f"no data for 5 s: /healthz 503, {reconnects} stale reconnect(s); data again: 200")
    assert reconnects >= 1


# --- SKIP_MARKET_HOURS=true: streaming around the clock, quiet when nothing trades ----------------------

NEW_YORK = ZoneInfo("America/New_York")
FRIDAY, SATURDAY, MONDAY = date(2026, 12, 4), date(2026, 12, 5), date(2026, 12, 7)


def at(day: date, hour: int, minute: int = 0, second: int = 0) -> float:
    """Epoch seconds of `day` at that New York time."""
    return datetime.combine(day, clock_time(hour, minute, second), NEW_YORK).timestamp()


def offset(market: SimulatedMarket, moment: float) -> float:
    """`moment` as the simulator's clock offset (seconds after the session's open)."""
    return moment - market.open_ms / 1000


def stored_gaps(url: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        return conn.execute("SELECT started_at, ended_at, cause FROM stream_gaps").fetchall()


async def test_a_quiet_night_and_weekend_are_no_stale_gap_and_healthz_stays_200(tmp_path: Path) -> None:
    """Friday's after-hours end at 20:00; the feed then sends heartbeats only until Monday. With
    SKIP_MARKET_HOURS=true that is normal: no stale reconnect, /healthz 200 all along, and a
    connection dropped on Saturday morning records no gap."""
    market = SimulatedMarket(["QQQ"], seed=41, session_date=FRIDAY, extended_hours=True)
    url = f"sqlite:///{tmp_path / 'record.db'}"
    statuses: list[tuple[float, int]] = []

    def health_now() -> bool:
        statuses.append((sim.clock(), service.health()[0]))
        return True

    async with SchwabSimulator(market, speed=0.0, heartbeat_seconds=0.2) as sim:
        sim.start_clock(at_offset_s=offset(market, at(FRIDAY, 19, 59)))  # held there until subscribed
        async with running_service(sim, tmp_path, skip_market_hours=True, stale_seconds=5,
                                   options_enabled=False, database_url=url) as service:  # fmt: skip
            await wait_until(service.stream.subscribed.is_set)
            sim.set_speed(60.0)  # (running from the start, a loaded machine subscribed after 20:00)
            await wait_until(lambda: service.pipeline.ticks > 0)
            sim.set_speed(7_200.0)  # two hours a second: the night and Saturday morning in 8 s
            await wait_until(lambda: health_now() and sim.clock() >= at(SATURDAY, 11), within=60)
            connects = service.stream.stats.connects
            await sim.disconnect_all()
            stream = service.stream
            await wait_until(lambda: stream.stats.connects > connects and stream.subscribed.is_set())
            stale = service.stream.stats.stale_reconnects
            gaps = list(service.continuity.gaps)
    quiet = [status for moment, status in statuses if moment >= at(FRIDAY, 20)]
    print(f"Friday 20:00 to Saturday 11:00: /healthz {sorted(set(quiet))} over {len(quiet)} samples, "
          f"{stale} stale reconnects, gaps {[(g.started_at.isoformat(), g.cause) for g in gaps[:3]]} "
          f"({len(gaps)})")  # fmt: skip
    assert quiet and set(quiet) == {200}
    assert stale == 0
    # the one gap: Friday's session before this cold start at 19:59 (the day so far was not recorded)
    assert [(g.started_at.timestamp(), g.cause) for g in gaps] == [(at(FRIDAY, 9, 30), "restart")]
    assert len(stored_gaps(url)) == 1


async def test_data_is_expected_again_from_0400_on_a_trading_day(tmp_path: Path) -> None:
    """Monday 03:59:50: the feed is quiet and that is normal; from 04:00 (the pre-market) no data
    for STALE_SECONDS is stale again: /healthz turns 503 five seconds after 04:00, not before."""
    market = SimulatedMarket(["QQQ"], seed=42, session_date=MONDAY)  # it trades from 09:30
    statuses: list[tuple[float, int]] = []

    def health_now() -> int:
        statuses.append((sim.clock(), service.health()[0]))
        return statuses[-1][1]

    async with SchwabSimulator(market, speed=1.0, heartbeat_seconds=0.2) as sim:
        sim.start_clock(at_offset_s=offset(market, at(MONDAY, 3, 59, 50)))
        async with running_service(sim, tmp_path, skip_market_hours=True, stale_seconds=5,
                                   options_enabled=False) as service:  # fmt: skip
            await wait_until(service.stream.subscribed.is_set)
            await wait_until(lambda: health_now() == 503 or sim.clock() > at(MONDAY, 4, 0, 40), within=60)
    first_503 = min((moment for moment, status in statuses if status == 503), default=None)
    print(f"/healthz first 503 at {first_503 and datetime.fromtimestamp(first_503, NEW_YORK).time()}")
    assert {status for moment, status in statuses if moment < at(MONDAY, 4)} == {200}
    assert first_503 is not None and at(MONDAY, 4, 0, 4) <= first_503 <= at(MONDAY, 4, 0, 20)  # 5 s, + load


async def test_a_start_after_midnight_takes_no_baseline_and_records_no_gap(tmp_path: Path) -> None:
    """A cold start at 00:30: yesterday's session is over, today's has not begun. No gap is filled
    from today's (empty) price history, so TOTAL_VOLUME is not expected to be 0 (yesterday's
    whole volume would become this morning's first trade)."""
    tuesday = date(2026, 12, 8)
    market = SimulatedMarket(["QQQ"], seed=43, trades_per_second=0.5, session_date=tuesday,
                             extended_hours=True)  # fmt: skip
    url = f"sqlite:///{tmp_path / 'record.db'}"
    async with SchwabSimulator(market, speed=1.0, heartbeat_seconds=0.2) as sim:
        sim.start_clock(at_offset_s=offset(market, at(tuesday + timedelta(days=1), 0, 30)))
        async with running_service(sim, tmp_path, skip_market_hours=True, stale_seconds=5,
                                   options_enabled=False, database_url=url) as service:  # fmt: skip
            await wait_until(lambda: service.stream.subscribed.is_set() and service.stream.stats.frames > 3)
            believed = service.stream.merger.state("QQQ")
            gaps = list(service.continuity.gaps)
    print(f"cold start at 00:30: gaps {[(g.started_at.isoformat(), g.ended_at.isoformat()) for g in gaps]}, "
          f"merger state {believed}")  # fmt: skip
    assert gaps == [] and stored_gaps(url) == []
    assert believed is None or believed["total_volume"] != 0
