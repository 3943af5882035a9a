"""The service between sessions: disconnected, no option-chain requests, healthy (waiting_for_open);
at the close it stops streaming by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

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
        now = time.time()
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

        now = time.time()
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
