"""Simulator → real schwab-py client → pipeline → real SQLite/Postgres, compared with ground truth."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from harness import running_service
from polling import wait_until
from postgrest_double import PostgrestDouble, make_key
from reference import reference_rows

from streaming_service.simulator import SchwabSimulator, SimulatedMarket

SESSION_S = 900.0  # fifteen simulated minutes: enough for SMA9 to form
SPEED = 300.0


@dataclass(frozen=True)
class Target:
    """Where the service writes (settings overrides) and where the test reads the rows back."""

    settings: dict[str, Any]
    read_url: str


@pytest.fixture(params=["sqlite", "postgres", "supabase"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'e2e.db'}"
        yield Target({"database_url": url}, url)
    elif request.param == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")
        yield Target({"database_url": dsn}, dsn)
    else:  # the production path: supabase-py → PostgREST double → Postgres with Supabase's roles
        dsn = request.getfixturevalue("supabase_dsn")
        with PostgrestDouble(dsn) as double:
            key = make_key("service_role")
            yield Target({"supabase_url": double.url, "supabase_service_role_key": key}, dsn)


def read_rows(database_url: str) -> pd.DataFrame:
    tables = ("equity_data", "indicators")
    query = (
        "SELECT e.timestamp, e.price, e.volume, i.sma9, i.vwap FROM equity_data e "
        "JOIN indicators i ON i.ticker = e.ticker AND i.timestamp = e.timestamp ORDER BY e.timestamp"
    )
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(query).fetchall()
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]
        frame = pd.DataFrame(rows, columns=["ts", "price", "volume", "sma9", "vwap"])
        frame["ms"] = [int(datetime.fromisoformat(ts).timestamp() * 1000) for ts in frame.ts]
    else:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query).fetchall()
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables]  # type: ignore[index]
        frame = pd.DataFrame(rows, columns=["ts", "price", "volume", "sma9", "vwap"])
        frame["ms"] = [int(ts.timestamp() * 1000) for ts in frame.ts]
        for column in ("price", "sma9", "vwap"):
            frame[column] = frame[column].astype(float)
    assert counts == [len(frame), len(frame)]  # every equity row has its indicators row
    return frame


def traded(sim: SchwabSimulator) -> pd.DataFrame:
    return pd.DataFrame(
        [(t.timestamp_ms, t.price, t.size) for t in sim.market.trades], columns=["ms", "price", "size"]
    )


async def test_whole_session_lands_with_exact_volume_and_indicators(target: Target, tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=11, trades_per_second=2.0, session_seconds=SESSION_S)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        async with running_service(sim, tmp_path, **target.settings) as service:
            await asyncio.wait_for(sim.session_finished.wait(), timeout=60)
            total = sum(t.size for t in sim.sent_trades)
            await wait_until(lambda: service.pipeline.volume == total)
        assert service.stream.stats.bad_frames == 0

    rows = read_rows(target.read_url)
    trades = traded(sim)
    expected = reference_rows(trades, 0)
    assert len(trades) > 1000
    assert len(rows) == len(expected)
    assert rows.volume.sum() == trades["size"].sum() == market.total_volume("QQQ")
    assert list(rows.ms) == list(expected.bucket)
    assert (rows.price - expected.price).abs().max() <= 0.005 + 1e-9
    assert (rows.vwap - expected.vwap).abs().max() <= 0.005 + 1e-9
    formed = expected.sma9.notna()
    assert list(rows.sma9.isna()) == list(~formed)
    assert (rows.sma9[formed] - expected.sma9[formed]).abs().max() <= 0.005 + 1e-9

    # A restart that replays the same session writes the same rows again: no duplicates, same totals.
    replay = SimulatedMarket(["QQQ"], seed=11, trades_per_second=2.0, session_seconds=SESSION_S)
    async with (
        SchwabSimulator(replay, speed=SPEED, heartbeat_seconds=0.2) as sim2,
        running_service(sim2, tmp_path, **target.settings) as service2,
    ):
        await asyncio.wait_for(sim2.session_finished.wait(), timeout=60)
        total2 = sum(t.size for t in sim2.sent_trades)
        await wait_until(lambda: service2.pipeline.volume == total2)
    again = read_rows(target.read_url)
    assert len(again) == len(rows)
    assert again.volume.sum() == rows.volume.sum()


async def test_disconnect_reconnects_and_keeps_every_share(target: Target, tmp_path: Path) -> None:
    market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=2.0, session_seconds=SESSION_S)
    async with (
        SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim,
        running_service(sim, tmp_path, **target.settings) as service,
    ):
        await wait_until(lambda: service.pipeline.ticks > 50)
        await sim.disconnect_all()
        await wait_until(lambda: service.stream.stats.connects >= 2)
        sim.drop_next_frames(5)
        await asyncio.wait_for(sim.session_finished.wait(), timeout=60)
        total = market.total_volume("QQQ")
        await wait_until(lambda: service.stream.merger.state("QQQ")["total_volume"] == total)  # type: ignore[index]
        # the disconnect's minutes are credited from price history once their candles are final
        await wait_until(lambda: not service.continuity.unsettled(), within=60)
    rows = read_rows(target.read_url)
    assert rows.volume.sum() == market.total_volume("QQQ")
    assert len(sim.sent_trades) < len(market.trades)  # some trades were never delivered...
    assert rows.volume.sum() == sum(t.size for t in market.trades)  # ...yet no share is missing


async def test_malformed_frames_are_counted_and_skipped(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'bad.db'}"
    target = Target({"database_url": database_url}, database_url)
    market = SimulatedMarket(["QQQ"], seed=2, trades_per_second=2.0, session_seconds=300.0)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        async with running_service(sim, tmp_path, **target.settings) as service:
            await wait_until(lambda: service.pipeline.ticks > 10)
            await sim.send_raw("this is not json")
            await sim.send_raw(
                '{"data":[{"service":"LEVELONE_EQUITIES","timestamp":1,"command":"SUBS",'
                '"content":[{"key":"QQQ","3":"NaN-ish","8":-4}]}]}'
            )
            await sim.send_raw('{"data":[{"service":"LEVELONE_EQUITIES","content":"oops"}]}')
            await wait_until(lambda: service.stream.stats.bad_frames >= 3)
            await asyncio.wait_for(sim.session_finished.wait(), timeout=60)
            await wait_until(lambda: service.pipeline.volume == market.total_volume("QQQ"))
        assert service.stream.stats.connects == 1  # bad frames never force a reconnect
    assert read_rows(target.read_url).volume.sum() == market.total_volume("QQQ")
