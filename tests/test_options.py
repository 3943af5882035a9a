"""Options: window selection from the chain, quote validation, and the whole path against the
simulator (real schwab-py client, real Postgres): window, snapshots equal to the simulator's
ground truth, rolling with ADD/UNSUBS, bad option frames skipped."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from harness import running_service, simulator_client
from polling import wait_until
from structlog.testing import capture_logs

from streaming_service.models import OptionContract, OptionRow, Tick
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.simulator.options import OptionBook
from streaming_service.simulator.server import OPTION_SERVICE
from streaming_service.sources.clock import use_exchange_clock
from streaming_service.sources.options import (
    OPTION_KEYS,
    BadOptionItem,
    OptionQuotes,
    OptionsTracker,
    select_window,
)

NEW_YORK = ZoneInfo("America/New_York")

Tracked = tuple[OptionsTracker, list[set[str]]]

SESSION = date(2026, 11, 24)  # a Tuesday
OPEN_MS = int(datetime(2026, 11, 24, 14, 30, tzinfo=UTC).timestamp() * 1000)


def book_chain(price: float = 500.3, **query: str) -> dict[str, Any]:
    book = OptionBook("QQQ", SESSION, 500.0)
    return book.chain(price, OPEN_MS, {"contractType": "ALL", "strikeCount": "40", **query})


# --- window selection ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "below", "above"),
    [(500.3, [498, 499, 500], [501, 502, 503]), (500.0, [497, 498, 499], [500, 501, 502])],
)
def test_window_is_n_strikes_each_side_for_the_next_expirations(
    price: float, below: list[float], above: list[float]
) -> None:
    window = select_window(book_chain(price), price, expirations=2, strikes=3)
    contracts = list(window.contracts.values())
    assert len(contracts) == 2 * 2 * 6
    assert sorted({c.expiration for c in contracts}) == [SESSION, SESSION + timedelta(days=1)]  # 0DTE first
    for expiration in (SESSION, SESSION + timedelta(days=1)):
        for kind in ("CALL", "PUT"):
            strikes = sorted(
                c.strike for c in contracts if c.expiration == expiration and c.option_type == kind
            )
            assert strikes == below + above
    call = window.contracts["QQQ   261124C00500000"]
    assert (call.underlying, call.option_type, call.strike) == ("QQQ", "CALL", 500.0)
    assert window.centre == price and window.step == 1.0


def test_window_goes_stale_on_a_move_beyond_a_strike_or_an_expiry() -> None:
    window = select_window(book_chain(), 500.3, expirations=2, strikes=3)
    assert not window.stale(501.2, SESSION)
    assert window.stale(501.4, SESSION)
    assert window.stale(499.2, SESSION)
    assert window.stale(500.3, SESSION + timedelta(days=1))  # today's contracts expired


def test_a_chain_without_contracts_is_refused() -> None:
    with pytest.raises(ValueError, match="lists no contract"):
        select_window(
            {"symbol": "XYZ", "callExpDateMap": {}, "putExpDateMap": {}}, 10.0, expirations=2, strikes=3
        )


# --- the simulated volatility surface ---------------------------------------------------------------


def chain_vols(seed: int) -> dict[date, dict[float, float]]:
    """The simulator's chain at the open: IV (a fraction) by expiration and strike, as it is sent."""
    chain = OptionBook("QQQ", SESSION, 500.0, seed=seed).chain(500.0, OPEN_MS, {"contractType": "PUT"})
    vols: dict[date, dict[float, float]] = {}
    for key, strikes in chain["putExpDateMap"].items():
        expiration = date.fromisoformat(key.split(":")[0])
        vols[expiration] = {float(k): entries[0]["volatility"] / 100 for k, entries in strikes.items()}
    return vols


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_simulated_iv_is_skewed_and_differs_by_expiration(seed: int) -> None:
    """Equity-style skew (a strike below the open has a higher IV than the strike as far above) on
    every expiration, and no two expirations share a smile; the nearest two differ at the money."""
    vols = chain_vols(seed)
    expirations = sorted(vols)
    assert len(expirations) >= 5
    for expiration in expirations:
        for offset in (1, 5, 10, 25, 50):
            low, high = vols[expiration][500.0 - offset], vols[expiration][500.0 + offset]
            assert low > high, (expiration, offset, low, high)
    for i, first in enumerate(expirations):
        for second in expirations[i + 1 :]:
            apart = max(abs(vols[first][k] - vols[second][k]) for k in vols[first])
            assert apart > 0.002, (first, second, apart)  # over 0.2 vol points somewhere
    front, next_ = expirations[:2]
    assert abs(vols[front][500.0] - vols[next_][500.0]) > 0.004, (vols[front][500.0], vols[next_][500.0])


def test_simulated_iv_is_deterministic_per_seed() -> None:
    assert chain_vols(3) == chain_vols(3)
    assert chain_vols(3) != chain_vols(4)


# --- quote merging and validation ------------------------------------------------------------------

CONTRACT = OptionContract("QQQ   261124C00500000", "QQQ", "CALL", 500.0, SESSION)
FIRST = {"key": CONTRACT.symbol, "STRIKE_TYPE": 500.0, "CONTRACT_TYPE": "C", "EXPIRATION_YEAR": 2026,
         "EXPIRATION_MONTH": 11, "EXPIRATION_DAY": 24, "BID_PRICE": 1.1, "ASK_PRICE": 1.2, "TOTAL_VOLUME": 5,
         "OPEN_INTEREST": 900, "VOLATILITY": 18.25, "DELTA": 0.51234, "GAMMA": 0.16, "THETA": -1.83,
         "VEGA": 0.054}  # fmt: skip


KEYS = {name: key for key, name in OPTION_KEYS.items()}


def wire(item: dict[str, Any]) -> dict[str, Any]:
    """`item` with schwab-py's field names written as the wire keys `OptionQuotes` reads."""
    return {KEYS.get(name, name): value for name, value in item.items()}


def quotes() -> OptionQuotes:
    """Quotes of `CONTRACT`, received on its expiration day (2026-11-24 09:30 New York)."""
    book = OptionQuotes(now=lambda: OPEN_MS / 1000)
    book.set_contracts({CONTRACT.symbol: CONTRACT})
    return book


def test_partial_updates_merge_and_rows_are_rounded() -> None:
    book = quotes()
    book.apply(wire(FIRST))
    book.apply(wire({"key": CONTRACT.symbol, "BID_PRICE": 1.15, "LAST_PRICE": 1.17}))
    book.apply(wire({"key": "SPY   261124C00600000", "BID_PRICE": 3.0}))  # not tracked: ignored
    (row,) = book.snapshot(datetime(2026, 11, 24, 14, 31, tzinfo=UTC))
    assert row == OptionRow(
        "QQQ", datetime(2026, 11, 24, 14, 31, tzinfo=UTC), "CALL", 500.0, SESSION,
        last_price=1.17, bid=1.15, ask=1.2, volume=5, open_interest=900, implied_volatility=0.1825,
        delta=0.5123, gamma=0.16, theta=-1.83, vega=0.054, option_symbol=CONTRACT.symbol,
    )  # fmt: skip


def test_contracts_without_a_quote_are_not_written() -> None:
    book = quotes()
    assert book.snapshot(datetime(2026, 11, 24, 14, 31, tzinfo=UTC)) == []


def test_schwabs_not_computed_greeks_are_stored_as_null() -> None:
    book = quotes()
    book.apply(wire({**FIRST, "DELTA": -999.0, "VOLATILITY": -999.0}))
    (row,) = book.snapshot(datetime(2026, 11, 24, 14, 31, tzinfo=UTC))
    assert row.delta is None and row.implied_volatility is None and row.gamma == 0.16
    book.apply(wire({"key": CONTRACT.symbol, "DELTA": 0.5, "VOLATILITY": 20.0}))
    (row,) = book.snapshot(datetime(2026, 11, 24, 14, 32, tzinfo=UTC))
    assert row.delta == 0.5 and row.implied_volatility == 0.2


def test_expired_contracts_are_not_written() -> None:
    book = quotes()
    book.apply(wire(FIRST))  # expires 2026-11-24
    assert len(book.snapshot(datetime(2026, 11, 24, 21, 0, tzinfo=UTC))) == 1  # 16:00 New York
    assert book.snapshot(datetime(2026, 11, 25, 4, 59, tzinfo=UTC)) != []  # 23:59 New York, same day
    assert book.snapshot(datetime(2026, 11, 25, 14, 30, tzinfo=UTC)) == []  # next morning


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({k: v for k, v in FIRST.items() if k != "STRIKE_TYPE"}, "lacks the strike"),
        ({**FIRST, "STRIKE_TYPE": 505.0}, "does not match"),
        ({**FIRST, "CONTRACT_TYPE": "X"}, "contract type 'X'"),
        ({**FIRST, "DELTA": math.nan}, "DELTA is nan"),
        ({**FIRST, "GAMMA": math.inf}, "GAMMA is inf"),
        ({**FIRST, "BID_PRICE": "1.10"}, "BID_PRICE is '1.10'"),
        ({**FIRST, "TOTAL_VOLUME": -3}, "not a count"),
        ({**FIRST, "ASK_PRICE": -0.5}, "negative"),
        ({**FIRST, "THETA": -2e6}, "beyond the column's range"),
        ({**FIRST, "EXPIRATION_DAY": 25}, "EXPIRATION_DAY"),
    ],
)
def test_bad_items_are_refused_whole(item: dict[str, Any], reason: str) -> None:
    book = quotes()
    with pytest.raises(BadOptionItem, match=reason):
        book.apply(wire(item))
    assert book.snapshot(datetime(2026, 11, 24, 14, 31, tzinfo=UTC)) == []


def test_a_bad_update_leaves_the_last_good_quote() -> None:
    book = quotes()
    book.apply(wire(FIRST))
    with pytest.raises(BadOptionItem):
        book.apply(wire({"key": CONTRACT.symbol, "BID_PRICE": 9.9, "DELTA": math.nan}))
    (row,) = book.snapshot(datetime(2026, 11, 24, 14, 31, tzinfo=UTC))
    assert row.bid == 1.1 and row.delta == 0.5123


# --- the whole path against the simulator ------------------------------------------------------------


@asynccontextmanager
async def service_with_options(
    dsn: str, tmp_path: Path, *, seed: int, speed: float
) -> AsyncIterator[tuple[SchwabSimulator, Service, OptionsTracker]]:
    """The service writing to Postgres from a one-hour simulated QQQ session, with a 24-contract
    window (3 strikes each side, 2 expirations) and one-minute snapshots."""
    market = SimulatedMarket(["QQQ"], seed=seed, trades_per_second=2.0, session_seconds=3_600.0)
    settings = {"options_strikes": 3, "options_expirations": 2, "options_interval": 60}
    async with (
        SchwabSimulator(market, speed=speed, heartbeat_seconds=0.2) as sim,
        running_service(sim, tmp_path, database_url=dsn, **settings) as service,
    ):
        assert service.options is not None
        yield sim, service, service.options


def subscribed_options(sim: SchwabSimulator) -> set[str]:
    return {s for client in sim._clients for s in client.fields[OPTION_SERVICE]}


def caught_up(quotes: OptionQuotes, truth: dict[str, dict[str, Any]], symbols: Iterable[str]) -> bool:
    """Has every quote the simulator sent for `symbols` been merged?"""
    names = {"2": "BID_PRICE", "3": "ASK_PRICE", "8": "TOTAL_VOLUME", "28": "DELTA", "31": "VEGA"}
    state = quotes._state
    return all(state.get(s, {}).get(name) == truth[s][key] for s in symbols for key, name in names.items())


def stored_options(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT timestamp, option_symbol, option_type, strike_price, expiration_date, bid, ask, "
            "last_price, volume, open_interest, implied_volatility, delta, gamma, theta, vega "
            "FROM option_prices"
        ).fetchall()


def expected_from_truth(fields: dict[str, Any]) -> tuple[Any, ...]:
    """What a row must hold for the simulator's last delivered fields of a contract."""
    return (
        fields["2"], fields["3"], fields.get("4"), fields["8"], fields["9"], round(fields["10"] / 100, 4),
        fields["28"], fields["29"], fields["30"], fields["31"],
    )  # fmt: skip


async def test_window_snapshots_and_ground_truth(postgres_dsn: str, tmp_path: Path) -> None:
    async with service_with_options(postgres_dsn, tmp_path, seed=3, speed=120.0) as (sim, service, tracker):
        await wait_until(lambda: tracker.snapshots >= 3)
        window = tracker.windows["QQQ"]
        assert len(window.contracts) == 24
        assert subscribed_options(sim) == set(window.contracts)  # nothing outside the window

        # Freeze the market, let every sent quote arrive, then snapshot: rows = simulator's truth.
        sim.pause()
        truth = sim.option_truth
        await wait_until(lambda: caught_up(tracker.quotes, truth, window.contracts))
        # the quotes' own date (a snapshot of another date has none); not on a minute: no clash
        stamp = datetime.combine(sim.market.session_date, time(15, 0, 7), UTC)
        rows = tracker.quotes.snapshot(stamp)
        service.batcher.add_options(rows)
        await wait_until(lambda: any(r[0] == stamp for r in stored_options(postgres_dsn)))
        expected = {s: expected_from_truth(truth[s]) for s in window.contracts}
        assert service.stream.stats.bad_frames == 0

    stored = stored_options(postgres_dsn)
    snapshot = {r[1]: r for r in stored if r[0] == stamp}
    assert set(snapshot) == set(expected)  # one row per contract with a quote
    for symbol, row in snapshot.items():
        contract = window.contracts[symbol]
        assert row[2:5] == (contract.option_type, pytest.approx(contract.strike), contract.expiration)
        values = tuple(None if v is None else float(v) for v in row[5:])
        assert values == pytest.approx(expected[symbol], abs=1e-9), symbol
    per_snapshot: dict[datetime, int] = {}
    for row in stored:
        if row[0] == stamp:
            continue
        per_snapshot[row[0]] = per_snapshot.get(row[0], 0) + 1
    assert len(per_snapshot) >= 3 and set(per_snapshot.values()) == {24}
    assert all(ts.second == 0 for ts in per_snapshot)  # stamped at the interval's start


async def test_window_rolls_when_the_underlying_moves(postgres_dsn: str, tmp_path: Path) -> None:
    async with service_with_options(postgres_dsn, tmp_path, seed=4, speed=120.0) as (sim, service, tracker):
        await wait_until(lambda: tracker.snapshots >= 2 and "QQQ" in tracker.windows)
        before = set(tracker.windows["QQQ"].contracts)
        requests = len(sim.stream_requests)
        sim.market.move("QQQ", 510.0)
        await wait_until(lambda: tracker.windows["QQQ"].centre > 508 and subscribed_options(sim) != before)
        await wait_until(lambda: subscribed_options(sim) == set(tracker.windows["QQQ"].contracts))
        after = tracker.windows["QQQ"]
        commands = {c for s, c, _ in sim.stream_requests[requests:] if s == OPTION_SERVICE}
        assert {"ADD", "UNSUBS"} <= commands
        assert service.stream.stats.connects == 1  # the equity stream never dropped
        ticks = service.pipeline.ticks
        await wait_until(lambda: service.pipeline.ticks > ticks + 10)
    strikes = sorted({c.strike for c in after.contracts.values()})
    assert strikes[2] < after.centre <= strikes[3]  # three strikes each side of the new price
    assert not before & set(after.contracts)


async def test_bad_option_frames_are_counted_and_skipped(postgres_dsn: str, tmp_path: Path) -> None:
    async with service_with_options(postgres_dsn, tmp_path, seed=5, speed=60.0) as (sim, service, tracker):
        await wait_until(lambda: tracker.snapshots >= 1)
        symbol = sorted(tracker.windows["QQQ"].contracts)[0]
        sim.set_speed(0.0)  # the clock stands still too: a contract quoted again (a window roll's
        sim.pause()  # subscription) is priced at the same moment, theta included
        await wait_until(lambda: caught_up(tracker.quotes, sim.option_truth, [symbol]))
        good = dict(tracker.quotes._state[symbol])
        items = [{"key": symbol, "20": 1.0}, {"key": symbol, "21": "X"}, {"key": symbol, "28": "NaN-ish"}]
        frame = {"service": OPTION_SERVICE, "timestamp": 1, "command": "SUBS", "content": items}
        await sim.send_raw(json.dumps({"data": [frame]}))
        await sim.send_raw(json.dumps({"data": [frame]}).replace('"NaN-ish"', "NaN"))
        await wait_until(lambda: service.stream.stats.bad_frames >= 6)
        assert tracker.quotes._state[symbol] == good
        assert service.stream.stats.connects == 1


# --- chain errors -----------------------------------------------------------------------------------


@asynccontextmanager
async def running_tracker(sim: SchwabSimulator, tmp_path: Path, *underlyings: str) -> AsyncIterator[Tracked]:
    """An `OptionsTracker` on the real schwab-py client against `sim`, retrying chain errors at once."""
    client = simulator_client(sim, tmp_path)
    subscribed: list[set[str]] = []

    async def subscribe(symbols: set[str]) -> None:
        subscribed.append(symbols)

    tracker = OptionsTracker(
        client, underlyings, lambda rows: None, expirations=1, strikes=2, interval_s=60, max_backoff_s=0.01
    )
    task = asyncio.create_task(tracker.run(subscribe))
    try:
        yield tracker, subscribed
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await client.close_async_session()


def chain_requests(sim: SchwabSimulator, symbol: str) -> int:
    return sum(1 for _, path in sim.rest_requests if "/marketdata/" in path and f"symbol={symbol}" in path)


async def test_rate_limited_chain_requests_are_retried(tmp_path: Path) -> None:
    async with SchwabSimulator(SimulatedMarket(["QQQ"], seed=6)) as sim:
        sim.fail_next_market_data(3, status=429)
        with capture_logs() as logs:
            async with running_tracker(sim, tmp_path, "QQQ") as (tracker, subscribed):
                await wait_until(lambda: bool(subscribed))
    assert set(subscribed[-1]) == set(tracker.windows["QQQ"].contracts) and len(subscribed[-1]) == 8
    assert chain_requests(sim, "QQQ") == 3 + 2  # three refused, then expiration chain + chain
    retries = [e for e in logs if e["event"] == "option chain request failed, retrying"]
    assert len(retries) == 3 and "HTTP 429" in retries[0]["error"]


async def test_a_ticker_without_options_is_asked_again_the_next_day(tmp_path: Path) -> None:
    async with SchwabSimulator(SimulatedMarket(["QQQ"], seed=7)) as sim:
        with capture_logs() as logs:
            async with running_tracker(sim, tmp_path, "QQQ", "NOOPT") as (tracker, subscribed):
                await wait_until(lambda: bool(subscribed))
                assert set(tracker.windows) == {"QQQ"}  # the other ticker's options still stream
                assert chain_requests(sim, "NOOPT") == 1
                day = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
                tracker.on_tick(Tick("QQQ", day, 500.0, 100))
                tracker.on_tick(Tick("QQQ", day + timedelta(minutes=5), 530.0, 100))  # QQQ rolls
                await wait_until(lambda: tracker.windows["QQQ"].centre == 530.0)
                assert chain_requests(sim, "NOOPT") == 1  # the roll passed it over: not again today
                tracker.on_tick(Tick("QQQ", day + timedelta(days=1), 500.0, 100))
                await wait_until(lambda: chain_requests(sim, "NOOPT") == 2)
    refusals = [e for e in logs if e["event"] == "no options recorded for this ticker"]
    assert refusals and refusals[0]["underlying"] == "NOOPT" and "HTTP 400" in refusals[0]["reason"]
    assert "OPTIONS_ENABLED=false" in refusals[0]["fix"]


# --- a new trading day -------------------------------------------------------------------------------


def option_rows_by_day(url: str) -> dict[date, set[str]]:
    """The option symbols of the stored snapshot rows, by their New York date."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT timestamp, option_symbol FROM option_prices").fetchall()
    by_day: dict[date, set[str]] = {}
    for stamp, symbol in rows:
        day = datetime.fromisoformat(stamp).astimezone(NEW_YORK).date()
        by_day.setdefault(day, set()).add(symbol)
    return by_day


async def test_the_first_snapshot_of_a_new_day_holds_only_quotes_received_that_day(tmp_path: Path) -> None:
    """One process from Monday's session into Tuesday's (a new connection in the morning, as after
    the close or any overnight drop). Tuesday's market lists none of Monday's window (QQQ opened
    20 % higher), so Monday's contracts that are still alive get no quote on Tuesday: no Tuesday
    snapshot may carry them."""
    monday = SimulatedMarket(["QQQ"], seed=11, trades_per_second=2.0, session_seconds=3_600.0,
                             session_date=date(2026, 11, 23))  # fmt: skip
    tuesday = SimulatedMarket(["QQQ"], seed=12, trades_per_second=2.0, session_seconds=3_600.0,
                              session_date=date(2026, 11, 24), start_prices={"QQQ": 600.0})  # fmt: skip
    url = f"sqlite:///{tmp_path / 'record.db'}"
    settings = {"database_url": url, "options_strikes": 3, "options_expirations": 2, "options_interval": 60}
    async with (
        SchwabSimulator(monday, speed=60.0, heartbeat_seconds=0.2) as first,
        SchwabSimulator(tuesday, speed=60.0, heartbeat_seconds=0.2) as second,
    ):
        market = [first]
        use_exchange_clock(lambda: market[0].clock())  # the exchange clock goes from one day to the next
        async with running_service(first, tmp_path, **settings) as service:
            tracker = service.options
            assert tracker is not None
            await wait_until(lambda: tracker.snapshots >= 2)
            mondays = set(tracker.windows["QQQ"].contracts)
            window = tracker.windows["QQQ"].contracts.values()
            assert any(c.expiration >= tuesday.session_date for c in window)  # alive on Tuesday too
            client = simulator_client(second, tmp_path)  # the next morning's connection goes to Tuesday
            service.stream.use_client(client)
            tracker.use_client(client)
            connects = service.stream.stats.connects
            await first.disconnect_all()
            # the day changes once Monday's connection is gone: none of its items is still on its
            # way (flipped before, a loaded machine applied Monday's last items on Tuesday's date)
            await wait_until(lambda: service.stream.stats.connects > connects)
            market[0] = second
            await wait_until(lambda: bool(option_rows_by_day(url).get(tuesday.session_date, set()) - mondays))
        await client.close_async_session()
    by_day = option_rows_by_day(url)
    stale = by_day[tuesday.session_date] & mondays
    print(f"Tuesday's snapshots: {len(by_day[tuesday.session_date])} contracts, {len(stale)} of them "
          f"with Monday's quotes")  # fmt: skip
    assert mondays <= by_day[monday.session_date]
    assert stale == set()
    assert by_day[tuesday.session_date] <= set(second.option_truth)  # every one quoted on Tuesday
