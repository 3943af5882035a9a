"""Restarts and disconnects leave no hole and no wrong number (simulator over the WebSocket, real
schwab-py, real SQLite/Postgres): the record after them is compared with the simulator's ground truth.

Reference: the trades the simulator generated, except that a minute the service could not stream
(a gap crossing whole minutes) is one trade at its minute's start, at the minute's last price, with
the minute's volume: exactly what price history can tell. SMA9 and VWAP are recomputed over that.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from harness import running_service
from polling import wait_until
from structlog.testing import capture_logs

from streaming_service.simulator import SchwabSimulator, SimulatedMarket

SPEED = 60.0  # one simulated minute per second
SESSION_S = 1500.0
MINUTE_MS = 60_000


def open_db(target: str, tmp_path: Path) -> dict[str, Any]:
    if target == "sqlite":
        return {"database_url": f"sqlite:///{tmp_path / 'record.db'}"}
    return {"database_url": target}


def read_table(url: str, query: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(query).fetchall()
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def _ms(ts: Any) -> int:
    moment = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    return int(moment.timestamp() * 1000 + 0.5)


def read_rows(url: str) -> pd.DataFrame:
    rows = read_table(
        url,
        "SELECT e.timestamp, e.price, e.volume, i.sma9, i.vwap FROM equity_data e JOIN indicators i "
        "ON i.ticker = e.ticker AND i.timestamp = e.timestamp ORDER BY e.timestamp",
    )
    frame = pd.DataFrame(rows, columns=["ts", "price", "volume", "sma9", "vwap"])
    frame["ms"] = [_ms(ts) for ts in frame.ts]
    for column in ("price", "sma9", "vwap"):
        frame[column] = frame[column].astype(float)
    return frame


def read_gaps(url: str) -> list[tuple[int, int, str, int, int | None, bool]]:
    rows = read_table(
        url,
        "SELECT started_at, ended_at, cause, equity_backfilled_rows, volume_missing, options_missed "
        "FROM stream_gaps ORDER BY started_at",
    )
    return [(_ms(a), _ms(b), cause, n, missing, bool(opt)) for a, b, cause, n, missing, opt in rows]


Gap = tuple[int, int, int]  # (last trade seen, ended_at, first minute counted in the first live row)


def reference(
    market: SimulatedMarket, gaps: list[Gap], *, period: int = 9, bar_ms: int = MINUTE_MS
) -> pd.DataFrame:
    """The trades as the service can know them, with VWAP and SMA9 after each (see the module
    docstring): a trade inside a gap (seen, ended] is not seen one by one. Each minute of it before
    `lumped_from` is one trade of the minute's unseen volume at the minute's last price (price
    history); the unseen trades from `lumped_from` on are one trade at the last of them (the first
    TOTAL_VOLUME after the gap). `period` and `bar_ms` (a multiple of a minute): SMA_PERIOD and
    SMA_BAR_SECONDS, computed afresh over the whole day (the column keeps its name, sma9)."""
    df = pd.DataFrame(
        [(t.timestamp_ms, t.price, t.size) for t in market.trades], columns=["ms", "price", "size"]
    )
    df["group"] = df.ms - df.ms % MINUTE_MS
    unseen = pd.Series(False, index=df.index)
    for seen, ended, lumped_from in gaps:
        inside = (df.ms > seen) & (df.ms <= ended)
        unseen |= inside
        df.loc[inside & (df.group >= lumped_from), "group"] = lumped_from
    by_group = df[unseen].groupby("group")
    minutes = by_group.agg(ms=("ms", "last"), price=("price", "last"), size=("size", "sum"))
    df = (
        pd.concat([df[~unseen], minutes.reset_index()])
        .sort_values("ms", kind="stable")
        .reset_index(drop=True)
    )
    df["vwap"] = (df.price * df["size"]).cumsum() / df["size"].cumsum()
    df["bar"] = df.ms // bar_ms
    closes = df.groupby("bar").price.last()
    df["sma9"] = (df.bar.map(closes.shift(1).rolling(period - 1).sum()) + df.price) / period
    return df


def as_filled(market: SimulatedMarket, seen: int, ended: int, backfilled: int) -> Gap:
    """The gap as the service filled it: its `backfilled` rows are the first traded minutes after
    the last seen trade's; the unseen trades after them are counted in the first live row (the
    minute in which streaming resumed, and also the one before when the subscription straddled a
    minute boundary after the price history was read)."""
    after = sorted({m for t in market.trades if (m := t.timestamp_ms - t.timestamp_ms % MINUTE_MS) > seen})
    lumped_from = after[backfilled - 1] + MINUTE_MS if backfilled else seen - seen % MINUTE_MS + MINUTE_MS
    return seen, ended, min(lumped_from, ended - ended % MINUTE_MS)


def seen_until(rows: pd.DataFrame, started: int) -> int:
    """When the last trade streamed before a gap was (rows at ROW_RESOLUTION=0 are per trade time;
    the gap's ledger start is the last data frame, a little later): trades after it were unseen."""
    live = rows.ms[(rows.ms <= started) & (rows.ms % MINUTE_MS != 0)]  # backfilled rows start minutes
    return int(live.max())


def backfilled_minutes(market: SimulatedMarket, seen: int, ended: int) -> set[int]:
    """The minutes a gap must have as backfilled rows: traded, after the last seen trade's minute
    and before the minute in which streaming resumed."""
    first, last = seen - seen % MINUTE_MS + MINUTE_MS, ended - ended % MINUTE_MS
    return {m for t in market.trades if first <= (m := t.timestamp_ms - t.timestamp_ms % MINUTE_MS) < last}


def assert_indicators_match(
    rows: pd.DataFrame, market: SimulatedMarket, gaps: list[Gap], *, period: int = 9, bar_ms: int = MINUTE_MS
) -> None:
    """Each row's indicators equal the reference's just before the next row (its last trade),
    within 0.01 (the columns round to 0.005)."""
    ref = reference(market, gaps, period=period, bar_ms=bar_ms)
    ends = [*rows.ms[1:], int(ref.ms.max()) + 1]
    expected = ref.iloc[ref.ms.searchsorted(ends, side="left") - 1].reset_index(drop=True)
    rows = rows.reset_index(drop=True)
    vwap_error = (rows.vwap - expected.vwap).abs()
    formed = expected.sma9.notna() & rows.sma9.notna()
    sma_error = (rows.sma9[formed] - expected.sma9[formed]).abs()
    null_mismatch = int((rows.sma9.isna() != expected.sma9.isna()).sum())
    print(f"rows={len(rows)} max |vwap error|={vwap_error.max():.4f} max |sma9 error|={sma_error.max():.4f} "
          f"sma9 NULL where it should not be or the reverse: {null_mismatch}")  # fmt: skip
    assert vwap_error.max() <= 0.01
    assert sma_error.max() <= 0.01
    assert list(rows.sma9.isna()) == list(expected.sma9.isna())  # SMA9 forms when it should


async def run_until(
    sim: SchwabSimulator,
    tmp_path: Path,
    settings: dict[str, Any],
    clock_s: float,
    *,
    then_speed: float | None = None,
) -> Any:
    """Run a service until the simulator's clock passes `clock_s` seconds after the open; stop it
    (with the market at `then_speed` from then on, if given: a restart takes a few real seconds)."""
    async with running_service(sim, tmp_path, **settings) as service:
        await wait_until(lambda: sim.clock() - sim.market.open_ms / 1000 >= clock_s, within=60)
        await wait_until(lambda: service.pipeline.ticks > 0)
        if then_speed is not None:
            sim.set_speed(then_speed)
    return service


async def run_to_end(
    sim: SchwabSimulator, tmp_path: Path, settings: dict[str, Any], *, speed: float | None = None
) -> Any:
    """Run a service until the session's last trade is in; the market at `speed` once subscribed."""
    async with running_service(sim, tmp_path, **settings) as service:
        if speed is not None:
            await wait_until(service.stream.subscribed.is_set)
            sim.set_speed(speed)
        await asyncio.wait_for(sim.session_finished.wait(), timeout=90)
        total = sim.market.total_volume("QQQ")
        await wait_until(lambda: service.stream.merger.state("QQQ")["total_volume"] == total)  # type: ignore[index]
    return service


@pytest.mark.parametrize(
    ("resolution", "database"), [(1, "sqlite"), (60, "sqlite"), (0, "sqlite"), (60, "postgres")]
)
async def test_a_restart_inside_an_open_row_continues_it_exactly(
    resolution: int, database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = open_db(database if database == "sqlite" else request.getfixturevalue("postgres_dsn"), tmp_path)
    settings = {**db, "row_resolution": resolution, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=21, trades_per_second=3.0, session_seconds=840.0)
    async with SchwabSimulator(market, speed=2 * SPEED, heartbeat_seconds=0.2) as sim:
        # stopped 20 s into a minute, SMA9 forming; the restart takes a few simulated seconds
        first = await run_until(sim, tmp_path, settings, 6 * 60 + 20, then_speed=SPEED / 10)
        before = read_rows(db["database_url"])
        second = await run_to_end(sim, tmp_path, settings, speed=2 * SPEED)
    rows = read_rows(db["database_url"])
    gaps = read_gaps(db["database_url"])
    print(
        f"resolution={resolution}: before restart {len(before)} rows / {before.volume.sum()} shares; "
        f"after {len(rows)} rows / {rows.volume.sum()} shares; truth {market.total_volume('QQQ')}"
        f"; gaps {gaps}"
    )
    assert rows.volume.sum() == market.total_volume("QQQ")
    merged = before.merge(rows, on="ms", suffixes=("_before", "_after"))
    assert len(merged) == len(before)  # no row of the first run vanished…
    assert (merged.volume_after >= merged.volume_before).all()  # …and none lost shares
    assert first.continuity.gaps == [] and len(second.continuity.gaps) == 1
    assert [cause for _, _, cause, *_ in gaps] == ["restart"]
    seen = first.pipeline.builders["QQQ"].last_ms  # the last trade the first run streamed
    ((_, ended, _, backfilled, _, _),) = gaps
    assert_indicators_match(rows, market, [as_filled(market, seen, ended, backfilled)])


async def test_five_minutes_down_are_backfilled_from_price_history(tmp_path: Path) -> None:
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 0, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=8, trades_per_second=3.0, session_seconds=SESSION_S)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        await run_until(sim, tmp_path, settings, 10 * 60 + 30)
        down_from = sim.clock()
        await wait_until(lambda: sim.clock() - down_from >= 5 * 60, within=30)  # the market goes on
        second = await run_to_end(sim, tmp_path, settings)
    rows = read_rows(f"sqlite:///{tmp_path / 'record.db'}")
    (started, ended, cause, backfilled, missing, options_missed), *others = read_gaps(
        settings["database_url"]
    )
    assert others == [] and cause == "restart"
    assert options_missed == second.settings.options_enabled  # option quotes have no history
    assert started <= down_from * 1000 < ended and ended - started >= 5 * MINUTE_MS
    seen = seen_until(rows, started)
    inside = backfilled_minutes(market, seen, ended)
    assert len(inside) >= backfilled >= max(4, len(inside) - 1)  # see `as_filled`
    assert sorted(inside)[:backfilled] == sorted(inside & set(rows.ms))  # each filled minute has its row
    assert rows.volume.sum() == market.total_volume("QQQ")
    print(
        f"gap {(ended - started) / 1000:.0f} s: {backfilled} minute rows backfilled, "
        f"{missing} shares counted in the first live row; Σ {rows.volume.sum()} = truth"
    )
    assert missing is not None and missing >= 0
    assert second.continuity.gaps[0].equity_backfilled_rows == backfilled
    assert_indicators_match(rows, market, [as_filled(market, seen, ended, backfilled)])


async def test_first_start_mid_session_backfills_from_the_open(tmp_path: Path) -> None:
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 60, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=3, trades_per_second=3.0, session_seconds=90 * 60 + 300)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        sim.start_clock(at_offset_s=90 * 60)  # 11:00: the session is under way
        await run_to_end(sim, tmp_path, settings)
    rows = read_rows(settings["database_url"])
    gaps = read_gaps(settings["database_url"])
    assert rows.ms.min() == market.open_ms  # rows from 09:30
    assert rows.volume.sum() == market.total_volume("QQQ")
    ((started, ended, cause, backfilled, missing, _),) = gaps
    # the minutes before the first live one; 90 if the service subscribed at 11:00 sharp, more if
    # the market clock (at SPEED x) ran on while a loaded machine started it
    assert (started, cause) == (market.open_ms, "restart") and backfilled == (ended - started) // 60_000
    assert 90 <= backfilled <= 95
    print(f"first start at 11:00: {backfilled} minutes backfilled, {missing} shares in the first live row")
    assert_indicators_match(rows, market, [as_filled(market, started - 1, ended, backfilled)])


async def test_a_restart_overnight_leaks_nothing_into_the_next_day(tmp_path: Path) -> None:
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 60, "batch_interval": 0.2}
    days = []
    for session in (date(2026, 11, 23), date(2026, 11, 24)):
        market = SimulatedMarket(["QQQ"], seed=session.day, trades_per_second=3.0, session_seconds=900.0,
                                 session_date=session)  # fmt: skip
        async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
            service = await run_to_end(sim, tmp_path, settings)
        days.append((market, service))
    rows = read_rows(settings["database_url"])
    for market, service in days:
        day = rows[(rows.ms >= market.open_ms) & (rows.ms < market.open_ms + 86_400_000)]
        assert day.volume.sum() == market.total_volume("QQQ")
        assert_indicators_match(day, market, [])
        assert service.continuity.gaps == []
    assert read_gaps(settings["database_url"]) == []


async def test_reconnect_gaps_are_recorded_and_filled(tmp_path: Path) -> None:
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 0, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=13, trades_per_second=3.0, session_seconds=SESSION_S)
    async with (
        SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim,
        running_service(sim, tmp_path, **settings) as service,
    ):
        for cut in range(1, 4):  # the socket closed three times; each reconnect waits a backoff
            cut_at = market.open_ms / 1000 + cut * 4 * 60
            await wait_until(lambda: sim.clock() >= cut_at, within=60)  # noqa: B023 - awaited here
            await sim.disconnect_all()
            await wait_until(lambda: service.stream.stats.connects > cut, within=60)  # noqa: B023
        await asyncio.wait_for(sim.session_finished.wait(), timeout=90)
        total = market.total_volume("QQQ")
        await wait_until(lambda: service.stream.merger.state("QQQ")["total_volume"] == total)  # type: ignore[index]
    rows = read_rows(settings["database_url"])
    gaps = read_gaps(settings["database_url"])
    print("gaps (s, cause, backfilled rows, shares in the first live row):",
          [(round((e - s) / 1000, 1), cause, n, missing) for s, e, cause, n, missing, _ in gaps])  # fmt: skip
    assert [cause for _, _, cause, *_ in gaps] == ["disconnect"] * 3
    filled = []
    for started, ended, _, backfilled, missing, _ in gaps:
        seen = seen_until(rows, started)
        inside = backfilled_minutes(market, seen, ended)
        assert len(inside) >= backfilled >= len(inside) - 1  # see `as_filled`
        assert sorted(inside)[:backfilled] == sorted(inside & set(rows.ms))  # each filled minute has its row
        assert missing is not None and missing >= 0
        if ended - started < MINUTE_MS:
            assert backfilled == 0
        filled.append(as_filled(market, seen, ended, backfilled))
    assert rows.volume.sum() == market.total_volume("QQQ")
    assert_indicators_match(rows, market, filled)


def test_the_demo_shows_a_restart_gap_being_backfilled(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streaming_service", "demo", "--restart-at", "09:40", "--down-for", "240",
         "--speed", "300", "--duration", "6", "--status-every", "1", "--database-url",
         f"sqlite:///{tmp_path / 'demo.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "LOG_FORMAT": "json"},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "service stopped at 09:40 (simulated)" in output
    logged = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert [e["cause"] for e in logged if e["event"] == "gap filled"] == ["restart"]
    traded = int(re.search(r"the market traded (\d+) shares", output).group(1))  # type: ignore[union-attr]
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    ((started, ended, cause, backfilled, missing, _),) = read_gaps(url)
    print(f"demo: gap of {(ended - started) / 1000:.0f} s, {backfilled} rows backfilled, {missing} shares "
          f"in the first live row; {traded} shares traded")  # fmt: skip
    assert cause == "restart" and backfilled >= 3 and ended - started >= 240_000
    assert int(read_rows(url).volume.sum()) == traded


async def test_a_new_machine_mid_session_continues_from_the_sinks_rows(tmp_path: Path) -> None:
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 60, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=17, trades_per_second=3.0, session_seconds=SESSION_S)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        first = await run_until(sim, tmp_path, settings, 10 * 60 + 30)
        seen = first.pipeline.builders["QQQ"].last_ms
        (tmp_path / "spool.db").unlink()  # a new machine: no spool, no checkpoint; same database
        down_from = sim.clock()
        await wait_until(lambda: sim.clock() - down_from >= 3 * 60, within=30)
        second = await run_to_end(sim, tmp_path, settings)
    assert second.spool.checkpoint is not None  # (the new machine's own, written as it streamed)
    rows = read_rows(settings["database_url"])
    ((started, ended, cause, backfilled, missing, _),) = read_gaps(settings["database_url"])
    print(f"new machine: gap from the last recorded row, {(ended - started) / 1000:.0f} s, {backfilled} rows "
          f"backfilled, {missing} shares in the first live row; Σ {rows.volume.sum()}")  # fmt: skip
    assert started == seen - seen % MINUTE_MS  # the gap starts at the last row the database had
    assert cause == "restart" and backfilled >= 2
    assert rows.volume.sum() == market.total_volume("QQQ")
    assert_indicators_match(rows, market, [as_filled(market, seen, ended, backfilled)])


@pytest.mark.parametrize(
    ("setting", "before", "after"),
    [
        ("sma_period", 5, 9),
        ("sma_bar_seconds", 60, 120),
        ("row_resolution", 1, 60),
        ("row_resolution", 60, 1),
    ],
)
async def test_a_checkpoint_made_under_other_settings_is_not_resumed_blindly(
    setting: str, before: int, after: int, tmp_path: Path
) -> None:
    """Run, stop, change one setting, run again: the rows after the restart hold the indicators a
    fresh computation under the new settings gives, and every share exactly once."""
    settings = {**open_db("sqlite", tmp_path), "row_resolution": 1, "batch_interval": 0.2}
    market = SimulatedMarket(["QQQ"], seed=23, trades_per_second=3.0, session_seconds=1_200.0)
    async with SchwabSimulator(market, speed=SPEED, heartbeat_seconds=0.2) as sim:
        first = await run_until(sim, tmp_path, {**settings, setting: before}, 740, then_speed=SPEED / 10)
        recorded = read_rows(settings["database_url"])
        with capture_logs() as logs:
            second = await run_to_end(sim, tmp_path, {**settings, setting: after}, speed=SPEED)
    rows = read_rows(settings["database_url"])
    seen = first.pipeline.builders["QQQ"].last_ms  # the last trade the first run streamed
    ((_, ended, cause, backfilled, _, _),) = read_gaps(settings["database_url"])
    assert cause == "restart" and second.continuity.gaps[0].equity_backfilled_rows == backfilled
    new = {"sma_period": 9, "sma_bar_seconds": 60, setting: after}
    changed = [e for e in logs if e["event"].startswith("settings changed since the checkpoint")]
    print(f"{setting} {before} -> {after}: {[e['changed'] for e in changed]}; Σ {rows.volume.sum()} "
          f"= truth {market.total_volume('QQQ')}")  # fmt: skip
    assert len(changed) == 1 and changed[0]["changed"] == f"{setting.upper()} {before} -> {after}"
    assert rows.volume.sum() == market.total_volume("QQQ")
    kept = recorded.merge(rows, on="ms", suffixes=("_before", "_after"))
    assert len(kept) == len(recorded) and (kept.volume_after >= kept.volume_before).all()  # none lost
    assert_indicators_match(
        rows[rows.ms > seen], market, [as_filled(market, seen, ended, backfilled)],
        period=new["sma_period"], bar_ms=new["sma_bar_seconds"] * 1000,
    )  # fmt: skip
