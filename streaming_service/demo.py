"""The parts of `streaming-service demo` around the service it runs (cli.py runs that): its settings and
fresh start, the simulated clock (restart, freeze), and the closing summary: what the simulated
market traded, what the service received, what a restart (`--restart-at`) left and how it was
filled, and what the database holds, counted there (`SELECT count(*)`), so the numbers are the ones
a user finds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streaming_service.config import Settings, load_settings
from streaming_service.errors import ConfigError
from streaming_service.indicators import EXCHANGE_TZ
from streaming_service.models import GapRow
from streaming_service.sinks.base import TABLE_COLUMNS

if TYPE_CHECKING:
    from streaming_service.service import Service
    from streaming_service.simulator import SchwabSimulator, SimulatedMarket

__all__ = [
    "DEMO_DATABASE_URL", "DEMO_READS", "Stored", "check_restart_fits", "demo_settings", "first_of",
    "freeze_and_catch_up", "market_at", "print_summary", "restart_line", "session_offset", "start_fresh",
    "stored_line", "stored_rows",
]  # fmt: skip

#: The only settings the demo reads from the environment and .env; all others are the demo's own.
DEMO_READS = ("health_port", "health_host", "log_format", "log_level")
DEMO_DATABASE_URL = "sqlite:///data/demo.db"
DEMO_SPOOL = Path("data/demo_spool.db")


def demo_settings(args: argparse.Namespace) -> Settings:
    """The demo's settings: its flags, the defaults of every other setting, and only `DEMO_READS`
    from the environment and .env (so a half-filled .env cannot change or break the demo)."""
    fixed = {name: field.default for name, field in Settings.model_fields.items() if name not in DEMO_READS}
    fixed.update(
        stream_ticker=args.ticker,
        database_url=args.database_url,
        batch_interval=args.batch_interval,
        skip_market_hours=True,
        spool_path=DEMO_SPOOL,
        dead_letter_path=Path("data/demo_dead_letters.jsonl"),
    )
    flags = {"stream_ticker": "--ticker", "database_url": "--database-url"}
    flags["batch_interval"] = "--batch-interval"
    return load_settings(flags, check_unknown=False, **fixed)


def start_fresh(settings: Settings) -> None:
    """Remove the previous demo's spool (rows and checkpoint of its simulated day) and, for a SQLite
    database, its file: rows of the same simulated times would otherwise merge into the older
    run's. A Postgres database is never touched."""
    files = [DEMO_SPOOL]
    if settings.sink_url.startswith("sqlite:///"):
        files.append(Path(settings.sink_url.removeprefix("sqlite:///")))
    for path in files:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


#: Wall seconds the restarted service needs, at least, to subscribe and fill the gap.
RESTARTED_FOR_S = 2.0


def check_restart_fits(args: argparse.Namespace, restart_at: float) -> None:
    """Raise `ConfigError` unless --duration lasts until --restart-at's service has been running again
    for `RESTARTED_FOR_S` (the wall times follow from --speed)."""
    stop_s, down_s = restart_at / args.speed, args.down_for / args.speed
    needed = stop_s + down_s + RESTARTED_FOR_S
    if args.duration <= needed:
        raise ConfigError(
            f"config error: --duration {args.duration:g} ends the demo before the restart is done: at "
            f"--speed {args.speed:g}, --restart-at {args.restart_at:%H:%M} is {stop_s:.0f} s in, --down-for "
            f"{args.down_for:g} lasts {down_s:.0f} s more and the restarted service needs a few seconds; "
            f"give --duration more than {needed:.0f} (or an earlier --restart-at, or a higher --speed)"
        )


async def print_summary(
    args: argparse.Namespace,
    sim: SchwabSimulator,
    services: list[Service],
    seconds: float,
    *,
    earlier_runs: bool,
    down_at_end: bool,
) -> None:
    """Print what happened: the restart (if any), what was traded, sent and received, what the
    database holds (counted there) and what it did not take."""
    market_total = sum(sim.market.total_volume(s) for s in sim.market.symbols)
    sent_shares = sum(trade.size for trade in sim.sent_trades)
    last = services[-1]
    stored: Stored | str
    try:
        stored = await asyncio.to_thread(stored_rows, last.settings.sink_url)
    except Exception as exc:  # a database the demo could not use: the log and the lines below say so
        stored = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(services) > 1 and last.continuity.gaps:
        print(restart_line(last.continuity.gaps, not_sent=market_total - sent_shares), flush=True)
    elif down_at_end:
        recorded = sent_shares if isinstance(stored, str) or earlier_runs else stored.shares
        print(f"demo: it ended while the service was down (since {args.restart_at:%H:%M} simulated): the "
              f"last {market_total - recorded} shares the market traded are not recorded; a run that lasts "
              "until the service starts again backfills them", flush=True)  # fmt: skip
    elif args.restart_at is not None:
        print(f"demo: it ended before {args.restart_at:%H:%M} (simulated): no restart", flush=True)
    ticks = sum(service.pipeline.ticks for service in services)
    pending = last.batcher.pending
    missed = f"; {pending} rows were not written: the database did not take them (see the log)"
    missed *= bool(pending)
    print(
        f"demo: done. it ran {seconds:.1f} s; the market traded {market_total} shares; simulator sent "
        f"{len(sim.sent_trades)} trades ({sent_shares} shares); {ticks} ticks received{missed}",
        flush=True,
    )
    if isinstance(stored, str):
        print(f"demo: the rows in {last.sink.name} could not be counted ({stored})", flush=True)
        return
    writes = sum(service.batcher.stats.rows_written for service in services)
    print(stored_line(last.sink.name, stored, writes=writes, market_shares=market_total,
                      earlier_runs=earlier_runs), flush=True)  # fmt: skip


def session_offset(market: SimulatedMarket, at: time) -> float:
    """Seconds from the simulated session's open (09:30 New York) to `at` that day."""
    opened = datetime.fromtimestamp(market.open_ms / 1000, EXCHANGE_TZ)
    return (datetime.combine(opened.date(), at, EXCHANGE_TZ) - opened).total_seconds()


async def market_at(sim: SchwabSimulator, offset_s: float) -> None:
    """Return once the simulated clock is `offset_s` seconds past the open (polls; bounded by it)."""
    while sim.clock() < sim.market.open_ms / 1000 + offset_s:  # noqa: ASYNC110 - the market's own clock
        await asyncio.sleep(0.05)


async def freeze_and_catch_up(sim: SchwabSimulator, service: Service) -> None:
    """Freeze the market and give the service up to 10 s to receive what was already sent, so the
    demo's totals can be compared."""
    sim.pause()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10

    def caught_up() -> bool:
        seen = (service.stream.merger.state(s) for s in sim.market.symbols)
        totals = [state["total_volume"] if state else None for state in seen]
        return totals == [sim.market.total_volume(s) for s in sim.market.symbols]

    while not caught_up() and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll
        await asyncio.sleep(0.05)


async def first_of(*waits: Awaitable[Any], within: float | None = None) -> None:
    """Return when the first of `waits` completes (the others are cancelled) or `within` seconds pass."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Stored:
    """Rows per table (those that exist) and Σ volume of `equity_data`, as the database has them."""

    rows: dict[str, int]
    shares: int


def stored_rows(url: str) -> Stored:
    """Count the rows of a `sqlite:///…` or `postgresql://…` database (blocking, 10 s at most).
    Raises `sqlite3.Error` / `psycopg.Error` as the driver does."""
    if url.startswith("sqlite:///"):
        uri = f"{Path(url.removeprefix('sqlite:///')).resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return _count(lambda sql: conn.execute(sql).fetchone()[0], tables)
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as pg:
        names = pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()

        def first(sql: str) -> Any:
            row = pg.execute(sql).fetchone()
            assert row is not None
            return row[0]

        return _count(first, {name for (name,) in names})


def _count(first: Callable[[str], Any], tables: set[str]) -> Stored:
    """Count with `first(sql)` (the first value of the query's first row) in those of our tables
    that are in `tables`."""
    recorded = [table for table in TABLE_COLUMNS if table in tables and table != "volume_checks"]  # not data
    rows = {table: int(first(f"SELECT count(*) FROM {table}")) for table in recorded}
    shares = int(first("SELECT coalesce(sum(volume), 0) FROM equity_data")) if "equity_data" in tables else 0
    return Stored(rows, shares)


def stored_line(where: str, stored: Stored, *, writes: int, market_shares: int, earlier_runs: bool) -> str:
    """'<where> holds N rows: equity_data n (s shares…), indicators n, …; W row writes …'."""
    shares = f"{stored.shares} shares"
    if stored.shares == market_shares and not earlier_runs:
        shares += ", every share the market traded"
    tables = [f"{table} {count}" + (f" ({shares})" if table == "equity_data" else "")
              for table, count in stored.rows.items()]  # fmt: skip
    earlier = " (including any from earlier runs)" if earlier_runs else ""
    return (
        f"demo: {where} holds {sum(stored.rows.values())} rows{earlier}: "
        f"{', '.join(tables)}; {writes} row writes (an open row is written again while it grows)"
    )


def restart_line(gaps: list[GapRow], *, not_sent: int) -> str:
    """What the restart left and how it was filled, from the `stream_gaps` rows the restarted service
    recorded: when it was down (New York time), the shares the market traded meanwhile (`not_sent`:
    nobody was connected to send them to), the rows backfilled."""
    started = min(gap.started_at for gap in gaps).astimezone(EXCHANGE_TZ)
    ended = max(gap.ended_at for gap in gaps).astimezone(EXCHANGE_TZ)
    backfilled = sum(gap.equity_backfilled_rows for gap in gaps)
    return (
        f"demo: the service was down from {_clock(started)} to {_clock(ended)} New York time "
        f"(--restart-at, --down-for), so the simulator could not send it the {not_sent} shares traded "
        f"meanwhile; on restart it credited {backfilled} minutes from price history (each minute's candle "
        "less what was already recorded in it) and recorded the gap in stream_gaps"
    )


def _clock(moment: datetime) -> str:
    return f"{moment:%H:%M:%S}"
