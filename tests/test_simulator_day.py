"""The simulator's whole day, opt-in (`SimulatedMarket(extended_hours=True)`, `candle_noise`,
`SchwabSimulator(candle_lag_s=...)`): pre-market and after-hours trades, the opening and closing
crosses and TOTAL_VOLUME from the morning reset over a real WebSocket to the real schwab-py
StreamClient; price history with and without `needExtendedHoursData`, served a lag after each
minute closed and with a bar vendor's bounded noise, asked by the real schwab-py client; and the
old behaviour, exactly, with every option off. Time is driven by the simulator's clock
(`start_clock`, `pause`, `set_speed`), never by sleeping."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import astuple
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from harness import simulator_client
from polling import wait_until
from reference import candles_of

from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.simulator.market import NEW_YORK, PRE_MARKET_S, Event
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.schwab import EQUITY_FIELDS

with quiet_library_warnings():
    from schwab.streaming import StreamClient

SESSION_DATE = date(2026, 3, 2)  # a Monday; never today
MINUTE_MS = 60_000
MEAN_TRADE_SIZE = 0.15 * 50 + 0.82 * 300 + 0.03 * 5_500  # of the simulator's trade sizes


def day_market(*, seed: int = 1, session_seconds: float = 1_200.0, **options: Any) -> SimulatedMarket:
    """QQQ over a whole (shortened) day: pre-market from 04:00, a session of `session_seconds`,
    4 hours of after-hours."""
    settings: dict[str, Any] = {"trades_per_second": 5.0, "extended_hours": True, **options}
    return SimulatedMarket(
        ["QQQ"], seed=seed, session_date=SESSION_DATE, session_seconds=session_seconds, **settings
    )


def shares(trades: Iterable[Event], start_ms: float = float("-inf"), stop_ms: float = float("inf")) -> int:
    return sum(t.size for t in trades if start_ms <= t.timestamp_ms < stop_ms)


def clock_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, NEW_YORK).strftime("%H:%M:%S.%f")[:-3]


@asynccontextmanager
async def equity_stream(
    sim: SchwabSimulator, tmp_path: Path
) -> AsyncIterator[tuple[Any, list[dict[str, Any]]]]:
    """A logged-in real schwab-py StreamClient subscribed to QQQ (our service's fields), and the
    LEVELONE_EQUITIES items it has handled so far (grown by `read_until`)."""
    client = simulator_client(sim, tmp_path)
    items: list[dict[str, Any]] = []
    stream = StreamClient(client)
    stream.add_level_one_equity_handler(lambda message: items.extend(message["content"]))
    try:
        await stream.login()
        await stream.level_one_equity_subs(["QQQ"], fields=EQUITY_FIELDS)
        yield stream, items
        await stream.logout()
    finally:
        await client.close_async_session()


async def read_until(stream: Any, condition: Callable[[], bool], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await stream.handle_message()


def trade_times(items: list[dict[str, Any]]) -> list[int]:
    return [i["TRADE_TIME_MILLIS"] for i in items if "TRADE_TIME_MILLIS" in i]


# --- the stream ------------------------------------------------------------------------------------


async def test_total_volume_at_the_open_is_the_pre_market_then_the_opening_cross_is_a_delta(
    tmp_path: Path,
) -> None:
    market = day_market(seed=2)
    open_ms = market.open_ms
    async with SchwabSimulator(market, speed=20.0) as sim:
        sim.start_clock(at_offset_s=-90.0)  # 09:28:30: 5.5 hours of pre-market have happened
        sim.pause()  # frozen while we connect, so the snapshot is exactly the market's state
        before = market.total_volume("QQQ")
        async with equity_stream(sim, tmp_path) as (stream, items):
            await read_until(stream, lambda: len(items) >= 1)
            sim.resume()
            # the first regular-session trade after the opening cross
            await read_until(stream, lambda: any(t > open_ms for t in trade_times(items)))
    first, *live = items
    pre_market = [t for t in market.trades if t.timestamp_ms < open_ms]
    [cross] = [t for t in market.trades if t.timestamp_ms == open_ms]
    volumes = [(i["TRADE_TIME_MILLIS"], i["TOTAL_VOLUME"]) for i in live if "TRADE_TIME_MILLIS" in i]
    at_the_open = max(v for t, v in volumes if t < open_ms)
    print(
        f"\nsnapshot at 09:28:30: TOTAL_VOLUME {first['TOTAL_VOLUME']:,} ({len(pre_market)} pre-market "
        f"trades in all); at 09:30: {at_the_open:,}; opening cross {cross.size:,} shares; "
        f"{len(volumes)} live trades to {clock_time(volumes[-1][0])}"
    )
    # the first frame is a baseline: the pre-market's shares so far, none of them sent as trades
    assert first["TOTAL_VOLUME"] == before == shares(market.trades, stop_ms=open_ms - 90_000) > 0
    assert first["TRADE_TIME_MILLIS"] == max(
        t.timestamp_ms for t in market.trades if t.timestamp_ms < open_ms - 90_000
    )
    assert sim.sent_trades[0].timestamp_ms > open_ms - 90_000
    # pre-market trades were streamed live, and TOTAL_VOLUME just before 09:30 is the pre-market
    assert any(t < open_ms for t, _ in volumes)
    assert at_the_open == shares(pre_market) == market.trades[market.trades.index(cross) - 1].total_volume
    # the opening cross: one print at exactly 09:30:00.000, the day's largest, a live delta
    assert (open_ms, at_the_open + cross.size) in volumes
    assert cross.size > max(t.size for t in market.trades if t is not cross)
    expected = 5.0 * market.session_seconds * MEAN_TRADE_SIZE
    assert 0.005 * expected - 1 <= cross.size <= 0.02 * expected + 1
    # every TOTAL_VOLUME the stream sent is the cumulative sum of the trades up to that trade
    for trade_ms, volume in volumes:
        assert volume == shares(market.trades, stop_ms=trade_ms + 1), clock_time(trade_ms)


async def test_closing_cross_and_after_hours_trades_keep_adding_to_total_volume(tmp_path: Path) -> None:
    market = day_market(seed=3, session_seconds=600.0)  # closes at 09:40
    close_ms = market.close_ms
    async with SchwabSimulator(market, speed=0.0) as sim:
        sim.start_clock(at_offset_s=600.0 - 20.0)  # 09:39:40, held there until subscribed
        async with equity_stream(sim, tmp_path) as (stream, items):
            sim.set_speed(40.0)  # (running from the start, a loaded machine subscribed after the close)
            await read_until(stream, lambda: sum(t > close_ms for t in trade_times(items)) >= 3)
    [cross] = [t for t in market.trades if t.timestamp_ms == close_ms]
    volumes = [(i["TRADE_TIME_MILLIS"], i["TOTAL_VOLUME"]) for i in items[1:] if "TRADE_TIME_MILLIS" in i]
    after = [(t, v) for t, v in volumes if t > close_ms]
    print(
        f"\nclosing cross {cross.size:,} shares at {clock_time(close_ms)}; after-hours trades streamed: "
        + ", ".join(f"{clock_time(t)} → {v:,}" for t, v in after)
    )
    assert (close_ms, shares(market.trades, stop_ms=close_ms) + cross.size) in volumes
    expected = 5.0 * market.session_seconds * MEAN_TRADE_SIZE
    assert 0.005 * expected - 1 <= cross.size <= 0.02 * expected + 1
    assert len(after) >= 3
    assert all(b[1] > a[1] for a, b in pairwise(volumes))  # still adding
    assert all(v == shares(market.trades, stop_ms=t + 1) for t, v in after)


async def test_a_client_connecting_mid_pre_market_gets_the_day_so_far_as_its_baseline(tmp_path: Path) -> None:
    market = day_market(seed=4)
    seven = market.open_ms - 9_000_000  # 07:00
    async with SchwabSimulator(market, speed=20.0) as sim:
        sim.start_clock(at_offset_s=-9_000.0)
        async with equity_stream(sim, tmp_path) as (stream, items):
            await read_until(stream, lambda: len(trade_times(items)) >= 4)  # the snapshot and 3 trades
    first, *live = items
    live_times = ", ".join(clock_time(t) for t in trade_times(live))
    print(f"\nsnapshot after 07:00: TOTAL_VOLUME {first['TOTAL_VOLUME']:,}; then trades at {live_times}")
    # whatever happened between the clock's start and the subscription is in the snapshot
    assert first["TOTAL_VOLUME"] == shares(market.trades, stop_ms=first["TRADE_TIME_MILLIS"] + 1)
    assert first["TOTAL_VOLUME"] >= shares(market.trades, stop_ms=seven) > 0
    assert all(seven <= t < market.open_ms for t in trade_times(live))  # pre-market trades, live
    assert all(
        i["TOTAL_VOLUME"] == shares(market.trades, stop_ms=i["TRADE_TIME_MILLIS"] + 1)
        for i in live
        if "TRADE_TIME_MILLIS" in i
    )


async def test_a_clock_started_by_the_first_subscription_opens_at_09_30_after_the_pre_market(
    tmp_path: Path,
) -> None:
    market = day_market(seed=10)
    # no start_clock: the first subscription starts the clock
    async with SchwabSimulator(market, speed=20.0) as sim, equity_stream(sim, tmp_path) as (stream, items):
        await read_until(stream, lambda: len(trade_times(items)) >= 4)
    first, *live = items
    pre_market = shares(market.trades, stop_ms=market.open_ms)
    print(
        f"\nsnapshot at 09:30: TOTAL_VOLUME {first['TOTAL_VOLUME']:,}; first live trade {sim.sent_trades[0]}"
    )
    # the 5.5 hours of pre-market happened before the clock started, unsent: the baseline
    assert first["TOTAL_VOLUME"] == pre_market > 0
    assert first["TRADE_TIME_MILLIS"] < market.open_ms
    # the opening cross, exactly at the clock's start, is the first trade sent
    assert sim.sent_trades[0].timestamp_ms == market.open_ms
    assert live[0]["TOTAL_VOLUME"] == pre_market + sim.sent_trades[0].size


# --- price history ---------------------------------------------------------------------------------


async def test_regular_candles_are_the_session_and_extended_candles_the_whole_day(tmp_path: Path) -> None:
    market = day_market(seed=5)
    open_ms, close_ms = market.open_ms, market.close_ms
    async with SchwabSimulator(market) as sim:
        sim.start_clock(at_offset_s=market.session_seconds + 900.0)  # 15 minutes into after-hours
        sim.pause()
        client = simulator_client(sim, tmp_path)
        try:
            absent = (await client.get_price_history_every_minute("QQQ")).json()
            regular = (
                await client.get_price_history_every_minute("QQQ", need_extended_hours_data=False)
            ).json()
            extended = (
                await client.get_price_history_every_minute("QQQ", need_extended_hours_data=True)
            ).json()
            fives = await client.get_price_history_every_five_minutes("QQQ", need_extended_hours_data=True)
        finally:
            await client.close_async_session()
    trades = market.trades
    session = [t for t in trades if open_ms <= t.timestamp_ms < close_ms]
    [opening] = [t for t in trades if t.timestamp_ms == open_ms]
    [closing] = [t for t in trades if t.timestamp_ms == close_ms]
    candles, day = regular["candles"], extended["candles"]
    print(
        f"\nregular: {len(candles)} candles, {shares(session):,} shares; extended: {len(day)} candles "
        f"{clock_time(day[0]['datetime'])}..{clock_time(day[-1]['datetime'])}, {shares(trades):,} shares; "
        f"crosses {opening.size:,} and {closing.size:,}"
    )
    assert absent == regular  # Schwab's default is the regular session
    assert candles == candles_of(session, open_ms)
    assert sum(c["volume"] for c in candles) == shares(session) == shares(trades, open_ms, close_ms)
    assert len(candles) == 20 and candles[-1]["datetime"] == close_ms - MINUTE_MS
    assert day == candles_of(trades, open_ms)
    assert sum(c["volume"] for c in day) == shares(trades) == market.total_volume("QQQ")
    assert open_ms - PRE_MARKET_S * 1000 <= day[0]["datetime"] < open_ms - 5 * 3_600_000  # from 04:00
    assert day[-1]["datetime"] >= close_ms + 10 * MINUTE_MS
    # the opening cross opens the 09:30 candle of both; the closing cross opens the after-hours
    # minute at the close, in no regular candle
    [nine_thirty] = [c for c in candles if c["datetime"] == open_ms]
    assert nine_thirty["open"] == opening.price and nine_thirty["volume"] >= opening.size
    [at_close] = [c for c in day if c["datetime"] == close_ms]
    assert at_close["open"] == closing.price and at_close["volume"] >= closing.size
    assert fives.json()["candles"] == candles_of(trades, open_ms, minutes=5)
    assert (fives.json()["candles"][0]["datetime"] - open_ms) % (5 * MINUTE_MS) == 0


@pytest.mark.parametrize("lag_s", [0.0, 3.0])
async def test_a_minute_candle_is_served_only_once_it_closed_plus_the_lag(
    tmp_path: Path, lag_s: float
) -> None:
    market = day_market(seed=6)
    open_ms = market.open_ms
    async with SchwabSimulator(market, candle_lag_s=lag_s) as sim:
        client = simulator_client(sim, tmp_path)

        async def served(minutes: int = 1) -> list[int]:
            response = await client.get_price_history("QQQ", frequency_type="minute", frequency=minutes)
            return [c["datetime"] - open_ms for c in response.json()["candles"]]

        try:
            sim.start_clock(at_offset_s=301.0)  # 09:35:01
            sim.set_speed(0.0)  # the clock stands still there
            at_09_35_01 = await served(), await served(5)
            sim.set_speed(1.0)
            await wait_until(lambda: sim.clock() * 1000 >= open_ms + 303_500)
            sim.set_speed(0.0)
            at_09_35_03 = await served(), await served(5)
            extended = await client.get_price_history_every_minute("QQQ", need_extended_hours_data=True)
        finally:
            await client.close_async_session()
    minute_of = {(t.timestamp_ms - open_ms) // MINUTE_MS for t in market.trades}
    print(
        f"\nlag {lag_s}s: at 09:35:01 the last minute candle is 09:3{at_09_35_01[0][-1] // MINUTE_MS}, "
        f"at 09:35:03.5 09:3{at_09_35_03[0][-1] // MINUTE_MS}"
    )
    assert {4, 5} <= minute_of  # trades in 09:34 and in 09:35, the minute under way
    # 09:34 closed at 09:35:00: served from 09:35:00 + the lag; 09:35, under way, never
    assert at_09_35_01[0] == [m * MINUTE_MS for m in range(4 if lag_s > 1 else 5)]
    assert at_09_35_01[1] == ([] if lag_s > 1 else [0])
    assert at_09_35_03[0] == [m * MINUTE_MS for m in range(5)]
    assert at_09_35_03[1] == [0]  # the 5-minute period 09:30-09:35 the same way
    candles = extended.json()["candles"]
    done = [t for t in market.trades if t.timestamp_ms < open_ms + 5 * MINUTE_MS]
    assert candles == candles_of(done, open_ms)  # the served candles are complete: all pre-market too


async def test_a_paused_market_serves_no_candle_for_minutes_still_to_happen(tmp_path: Path) -> None:
    market = day_market(seed=7)
    open_ms = market.open_ms
    async with SchwabSimulator(market, candle_lag_s=3.0) as sim:
        client = simulator_client(sim, tmp_path)

        async def last_served() -> int:
            response = await client.get_price_history_every_minute("QQQ")
            return int(response.json()["candles"][-1]["datetime"] - open_ms)

        try:
            sim.start_clock(at_offset_s=299.0)  # 09:34:59, then no more trades
            sim.pause()
            sim.set_speed(20.0)
            await wait_until(lambda: sim.clock() * 1000 >= open_ms + 305_000)
            sim.set_speed(0.0)
            paused = await last_served()
            sim.resume()  # the paused time's trades happen now
            resumed = await last_served()
        finally:
            await client.close_async_session()
    assert paused == 3 * MINUTE_MS  # 09:34 closed by the clock, but its last second has not traded
    assert resumed == 4 * MINUTE_MS


async def test_candle_noise_is_bounded_as_documented_and_fixed_per_seed(tmp_path: Path) -> None:
    noise = 0.002
    market = day_market(seed=8, session_seconds=600.0, trades_per_second=20.0, candle_noise=noise)
    open_ms = market.open_ms
    async with SchwabSimulator(market) as sim:
        sim.start_clock(at_offset_s=900.0)
        sim.pause()
        client = simulator_client(sim, tmp_path)
        try:
            first = (await client.get_price_history_every_minute("QQQ", need_extended_hours_data=True)).json()
            again = (await client.get_price_history_every_minute("QQQ", need_extended_hours_data=True)).json()
            daily = (await client.get_price_history_every_day("QQQ")).json()
        finally:
            await client.close_async_session()
    candles, truth = first["candles"], candles_of(market.trades, open_ms)
    errors = [c["volume"] - t["volume"] for c, t in zip(candles, truth, strict=True)]
    changed = sum(e != 0 for e in errors)
    print(
        f"\n{len(candles)} candles, {changed} off by up to {max(map(abs, errors))} shares; "
        f"Σ {sum(c['volume'] for c in candles):,} vs {shares(market.trades):,} traded"
    )
    assert again == first  # the same candle every time it is asked for
    for candle, exact in zip(candles, truth, strict=True):
        assert {**candle, "volume": 0} == {**exact, "volume": 0}  # OHLC and datetime untouched
        assert abs(candle["volume"] - exact["volume"]) <= int(noise * exact["volume"])
    assert changed >= 10  # the session's minutes (~500,000 shares each) disagree with the stream
    assert all(e == 0 for e, t in zip(errors, truth, strict=True) if t["volume"] < 1 / noise)
    assert abs(sum(errors)) <= noise * shares(market.trades)
    [day] = daily["candles"]
    assert abs(day["volume"] - shares(market.trades)) <= int(noise * shares(market.trades))
    # deterministic per seed: the same market again gives the same candles
    replay = day_market(seed=8, session_seconds=600.0, trades_per_second=20.0, candle_noise=noise)
    replay.events_until(900.0)
    assert [c.volume for c in replay.candles("QQQ", extended=True)] == [c["volume"] for c in candles]


# --- the defaults ----------------------------------------------------------------------------------

# sha256 of the events of the market below, as the simulator generated them before the whole-day
# options existed (commit 6355869): with the options off, the same seed gives the same events.
OLD_EVENTS_SHA256 = "082cb7c93660cffb5888f754635cc7899e841ea746dc624037897f662df59629"


async def test_with_the_options_off_the_simulator_is_the_regular_session_as_before(tmp_path: Path) -> None:
    old = SimulatedMarket(
        ["QQQ", "SPY"], seed=7, trades_per_second=5.0, session_date=SESSION_DATE, session_seconds=900.0
    )
    events = old.events_until(-5.0) + old.events_until(300.5) + old.events_until(10_000.0)
    assert hashlib.sha256(repr([astuple(e) for e in events]).encode()).hexdigest() == OLD_EVENTS_SHA256
    assert old.day_start_ms == old.open_ms and old.day_end_ms == old.close_ms and not old.extended_hours
    assert old.trades[0].timestamp_ms > old.open_ms and old.trades[0].total_volume == old.trades[0].size

    market = SimulatedMarket(["QQQ"], seed=9, trades_per_second=5.0, session_date=SESSION_DATE)
    async with SchwabSimulator(market) as sim:
        sim.start_clock(at_offset_s=150.0)  # 09:32:30
        sim.pause()
        client = simulator_client(sim, tmp_path)
        try:
            regular = (await client.get_price_history_every_minute("QQQ")).json()
            extended = (
                await client.get_price_history_every_minute("QQQ", need_extended_hours_data=True)
            ).json()
        finally:
            await client.close_async_session()
    assert regular == extended  # no extended hours: both are the session
    assert regular["candles"] == candles_of(market.trades, market.open_ms)
    assert regular["candles"][-1]["datetime"] == market.open_ms + 2 * MINUTE_MS  # 09:32, under way
    assert sum(c["volume"] for c in regular["candles"]) == market.total_volume("QQQ")
