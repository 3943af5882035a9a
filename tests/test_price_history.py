"""`GET /marketdata/v1/pricehistory` of the simulator, asked by the real schwab-py client over HTTP:
candles are the ground-truth trades (`market.trades`) regrouped, recomputed here independently."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from harness import simulator_client
from polling import wait_until
from reference import candles_of

from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.simulator.market import Event

MINUTE_MS = 60_000


@asynccontextmanager
async def market_run(
    tmp_path: Path, *, minutes: float, trades_per_second: float = 20.0
) -> AsyncIterator[tuple[SchwabSimulator, Any]]:
    """A simulator of QQQ and SPY (`trades_per_second` each) whose market has generated trades
    `minutes` simulated minutes into the session, then paused (no more trades); and a schwab-py
    client for it."""
    market = SimulatedMarket(["QQQ", "SPY"], seed=11, trades_per_second=trades_per_second)
    async with SchwabSimulator(market) as sim:
        client = simulator_client(sim, tmp_path)
        try:
            # every trade up to exactly `minutes` in, at once, then frozen: waiting for the running
            # clock instead overshot by whole minutes whenever the loop was late (under load)
            sim.start_clock(at_offset_s=minutes * 60)
            sim.pause()
            yield sim, client
        finally:
            await client.close_async_session()


def of(trades: list[Event], symbol: str) -> list[Event]:
    return [t for t in trades if t.symbol == symbol]


def at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def test_minute_candles_are_the_ground_truth_trades(tmp_path: Path) -> None:
    async with market_run(tmp_path, minutes=8) as (sim, client):
        market = sim.market
        began = time.perf_counter()
        response = await client.get_price_history_every_minute("QQQ", need_previous_close=True)
        elapsed = time.perf_counter() - began
        body = response.json()
        assert response.status_code == 200, body
        shares = market.total_volume("QQQ")
        truth = candles_of(of(market.trades, "QQQ"), market.open_ms)
    candles = body["candles"]
    print(
        f"\n{len(candles)} one-minute candles, {shares:,} shares "
        f"(of {len(market.trades):,} trades) in {elapsed * 1000:.1f} ms"
    )
    assert len(candles) == 8 and body["symbol"] == "QQQ" and body["empty"] is False  # 09:30 to 09:37
    assert candles == truth  # OHLC, volume, datetime, order
    assert sum(c["volume"] for c in candles) == shares
    assert all(isinstance(c["volume"], int) for c in candles)
    assert [c["datetime"] for c in candles] == sorted({c["datetime"] for c in candles})
    assert all((c["datetime"] - market.open_ms) % MINUTE_MS == 0 for c in candles)
    assert body["previousClose"] == 500.0  # QQQ's opening reference price
    previous_day = datetime.fromtimestamp(body["previousCloseDate"] / 1000, ZoneInfo("America/Chicago"))
    assert previous_day.time().hour == 0 and previous_day.weekday() < 5
    assert previous_day.date() < market.session_date


async def test_start_and_end_select_candles_by_their_start(tmp_path: Path) -> None:
    async with market_run(tmp_path, minutes=12) as (sim, client):
        market = sim.market
        open_ms = market.open_ms
        start_ms, end_ms = open_ms + 90_000, open_ms + 180_000  # 09:31:30 .. 09:33:00
        response = await client.get_price_history_every_minute(
            "QQQ", start_datetime=at(start_ms), end_datetime=at(end_ms)
        )
        five = await client.get_price_history_every_five_minutes(
            "QQQ", start_datetime=at(open_ms + 60_000), end_datetime=at(open_ms + 600_000)
        )
    candles = response.json()["candles"]
    # 09:31 starts before startDate: out, though half of it is after; 09:33 starts at endDate: in
    assert [c["datetime"] - open_ms for c in candles] == [120_000, 180_000]
    assert candles == candles_of(of(market.trades, "QQQ"), open_ms, start_ms=start_ms, end_ms=end_ms)
    in_window = sum(
        t.size
        for t in market.trades
        if t.symbol == "QQQ" and open_ms + 120_000 <= t.timestamp_ms < open_ms + 240_000
    )
    assert sum(c["volume"] for c in candles) == in_window
    fives = five.json()["candles"]
    assert [c["datetime"] - open_ms for c in fives] == [300_000, 600_000]  # 09:35 and 09:40
    print(
        f"\n09:31:30-09:33:00: {len(candles)} candles, {in_window:,} shares; "
        f"09:31-09:40 by 5 min: {len(fives)} candles"
    )


@pytest.mark.parametrize("minutes", [5, 10, 15, 30])
async def test_longer_candles_regroup_the_same_trades(tmp_path: Path, minutes: int) -> None:
    async with market_run(tmp_path, minutes=2 * minutes + 1, trades_per_second=2.0) as (
        sim,
        client,
    ):
        market = sim.market
        response = await client.get_price_history(
            "SPY", period_type="day", period=1, frequency_type="minute", frequency=minutes
        )
        shares = market.total_volume("SPY")
    candles = response.json()["candles"]
    print(f"\n{minutes}-minute: {len(candles)} candles, {shares:,} shares")
    assert len(candles) == 3
    assert candles == candles_of(of(market.trades, "SPY"), market.open_ms, minutes=minutes)
    assert sum(c["volume"] for c in candles) == shares


async def test_daily_candle_is_the_whole_session_so_far(tmp_path: Path) -> None:
    async with market_run(tmp_path, minutes=3) as (sim, client):
        market = sim.market
        response = await client.get_price_history_every_day("QQQ")
        trades = [t for t in market.trades if t.symbol == "QQQ"]
    [candle] = response.json()["candles"]
    midnight = datetime.fromtimestamp(candle["datetime"] / 1000, ZoneInfo("America/Chicago"))
    assert (midnight.date(), midnight.time().hour, midnight.time().minute) == (market.session_date, 0, 0)
    assert candle["volume"] == sum(t.size for t in trades) == market.total_volume("QQQ")
    assert (candle["open"], candle["close"]) == (trades[0].price, trades[-1].price)
    assert (candle["high"], candle["low"]) == (max(t.price for t in trades), min(t.price for t in trades))


async def test_unknown_symbol_is_empty_and_bad_requests_are_400(tmp_path: Path) -> None:
    async with market_run(tmp_path, minutes=1) as (sim, client):
        unknown = await client.get_price_history_every_minute("NOPE", need_previous_close=True)
        missing = await client.get_price_history("", frequency_type="minute", frequency=1)
        refused = {
            "day with daily": await client.get_price_history(
                "QQQ", period_type="day", frequency_type="daily"
            ),
            "7 minutes": await client.get_price_history("QQQ", frequency_type="minute", frequency=7),
            "daily 5": await client.get_price_history(
                "QQQ", period_type="year", frequency_type="daily", frequency=5
            ),
            "weekly": await client.get_price_history("QQQ", period_type="month", frequency_type="weekly"),
            "hour": await client.get_price_history("QQQ", period_type="hour"),
        }
        async with httpx.AsyncClient(base_url=sim.api_base_url) as raw:
            not_ms = await raw.get(
                "/marketdata/v1/pricehistory", params={"symbol": "QQQ", "startDate": "today"}
            )
    assert unknown.status_code == 200
    assert unknown.json() == {"candles": [], "symbol": "NOPE", "empty": True}
    for name, response in {**refused, "missing symbol": missing, "startDate": not_ms}.items():
        assert response.status_code == 400, name
        [error] = response.json()["errors"]
        assert error["status"] == 400 and error["title"], name
        print(f"\n{name}: {error['title']}", end="")


async def test_injected_fault_answers_the_price_history_request(tmp_path: Path) -> None:
    async with market_run(tmp_path, minutes=1) as (sim, client):
        sim.fail_next_market_data(1, 503)
        failed = await client.get_price_history_every_minute("QQQ")
        then = await client.get_price_history_every_minute("QQQ")
    assert failed.status_code == 503
    assert failed.json() == {"errors": [{"status": 503, "title": "simulated fault"}]}
    assert then.status_code == 200 and then.json()["candles"]


async def test_the_minute_under_way_is_a_partial_candle(tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=20.0)
    open_ms = market.open_ms

    def into_minute() -> int:
        return (int(sim.clock() * 1000) - open_ms) % MINUTE_MS

    async with SchwabSimulator(market, speed=60.0) as sim:
        client = simulator_client(sim, tmp_path)
        try:
            sim.start_clock()
            # pause 20-40 s into a minute (one simulated minute is one wall second here)
            await wait_until(
                lambda: sim.clock() * 1000 >= open_ms + MINUTE_MS and 20_000 <= into_minute() <= 40_000
            )
            sim.pause()
            paused_ms, generated = int(sim.clock() * 1000), len(market.trades)
            first = (await client.get_price_history_every_minute("QQQ")).json()["candles"]
            sim.resume()
            minute_end = open_ms + ((paused_ms - open_ms) // MINUTE_MS + 1) * MINUTE_MS
            await wait_until(lambda: market.trades[-1].timestamp_ms >= minute_end)
            sim.pause()
            second = (await client.get_price_history_every_minute("QQQ")).json()["candles"]
        finally:
            await client.close_async_session()
    current = first[-1]
    assert current["datetime"] <= paused_ms < current["datetime"] + MINUTE_MS  # its minute had not ended
    so_far = [t for t in market.trades[:generated] if t.timestamp_ms >= current["datetime"]]
    assert current["volume"] == sum(t.size for t in so_far) and current["close"] == so_far[-1].price
    completed = next(c for c in second if c["datetime"] == current["datetime"])
    assert completed["volume"] > current["volume"]  # the rest of the minute's trades came later
    print(
        f"\npaused {(paused_ms - current['datetime']) / 1000:.1f} s into the minute: "
        f"{current['volume']:,} shares, {completed['volume']:,} once the minute was over"
    )
