"""Trade → committed row latency on a local Postgres (fsync on), through the real service.

The simulator (speed 1: market time is wall time) streams QQQ at 20 trades/s over a real WebSocket
to the real `Service` (in this process, `tests/harness.running_service`), which writes into a
throwaway crash-safe Postgres. Timestamps, both on this machine's wall clock:

- trade time: when the simulator queued the trade's frame on the WebSocket (a recording
  `sent_trades` list; the simulator's own 10 ms market step is not counted);
- commit time: an AFTER INSERT OR UPDATE trigger on equity_data NOTIFYs (row timestamp, volume);
  Postgres delivers it when the transaction commits, to a LISTEN connection here that stamps its
  arrival (so ~0.1 ms of delivery is included).

A trade's latency is the first notification of its row with a volume that includes the trade,
minus its trade time. Trades whose row was committed only by the shutdown are left out (counted).

Modes: low latency (BATCH_SIZE=1, BATCH_INTERVAL=0.1, ROW_RESOLUTION=1) and the defaults (10, 60, 1).
Baseline, same run: the low-latency settings with the new path off (`changed()` ignored, 250 ms
group commit), i.e. the code before issue 12. The defaults are compared with the low-latency mode.
Usage: python bench/latency.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from _rows import Row, percentile, print_table, row  # first: it puts tests/ on sys.path

# isort: split

import psycopg
from harness import running_service
from pg_cluster import PgCluster, fresh_database

from streaming_service.simulator import SchwabSimulator, SimulatedMarket
from streaming_service.sinks.postgres import PostgresSink

_TRIGGER = """
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rows', (extract(epoch FROM NEW.timestamp) * 1000)::bigint || ' ' || NEW.volume);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE ON equity_data
    FOR EACH ROW EXECUTE FUNCTION bench_notify();
"""


class Scale(NamedTuple):
    """How much one run does."""

    short_s: float  # the window of each low-latency run (before, after)
    long_s: float  # the window of the defaults run: some BATCH_SIZE-row batches must fill in it
    batch_size: int  # the defaults run's BATCH_SIZE


FULL = Scale(short_s=30.0, long_s=60.0, batch_size=10)
#: CI: the same runs, figures not meaningful; 2 one-second rows fill a batch within its window
QUICK = Scale(short_s=1.5, long_s=4.0, batch_size=2)


class _Stamped(list[Any]):
    """`sent_trades` that also records when each trade was queued (wall clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Any) -> None:
        self.times.append(time.time())
        super().append(item)


async def _measure(dsn: str, seconds: float, *, old: bool, **settings: Any) -> dict[str, float]:
    """One run of `seconds`; returns p50/p99 (ms), measured trades, writes/min."""
    resolution_ms = int(settings["row_resolution"]) * 1000
    commits: dict[int, list[tuple[int, float]]] = {}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute("TRUNCATE equity_data, indicators")
        await listener.execute("LISTEN rows")

        async def listen() -> None:
            async for note in listener.notifies():
                bucket, volume = note.payload.split()
                commits.setdefault(int(bucket), []).append((int(volume), time.time()))

        listening = asyncio.create_task(listen())
        market = SimulatedMarket(["QQQ"], seed=5, trades_per_second=20.0, session_seconds=23_400.0)
        with tempfile.TemporaryDirectory() as tmp:
            async with SchwabSimulator(market, speed=1, heartbeat_seconds=1) as sim:
                stamped = _Stamped()
                sim.sent_trades = stamped
                async with running_service(
                    sim, Path(tmp), database_url=dsn, options_enabled=False, **settings
                ) as service:
                    if old:  # the code before issue 12: open rows wait for the 250 ms group commit
                        setattr(service.batcher, "changed", lambda: None)  # noqa: B010
                        service.batcher._commit_every = 0.25
                    await asyncio.sleep(seconds)  # the measurement window
                    sim.pause()
                    stopped_at = time.time()
                    writes = service.batcher.stats.batches
        listening.cancel()
    latencies: list[float] = []
    cumulative: dict[int, int] = {}
    for trade, sent_at in zip(list(stamped), stamped.times, strict=True):
        ts = trade.timestamp_ms
        bucket = ts - ts % resolution_ms if resolution_ms else ts
        cumulative[bucket] = cumulative.get(bucket, 0) + trade.size
        seen = [t for volume, t in commits.get(bucket, []) if volume >= cumulative[bucket]]
        if seen and seen[0] < stopped_at:
            latencies.append((seen[0] - sent_at) * 1000)
    return {
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "trades": len(latencies),
        "sent": len(stamped),
        "writes_per_min": writes / seconds * 60,
    }


async def _run(scale: Scale) -> list[Row]:
    low = {"batch_size": 1, "batch_interval": 0.1, "row_resolution": 1}
    defaults = {"batch_size": scale.batch_size, "batch_interval": 60, "row_resolution": 1}
    short, long = scale.short_s, scale.long_s
    with PgCluster(durable=True) as cluster, fresh_database(cluster) as dsn:
        sink = PostgresSink(dsn)
        await sink.open()  # the tables, then the trigger on them
        await sink.aclose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(_TRIGGER.encode())
        before = await _measure(dsn, short, old=True, **low)
        after = await _measure(dsn, short, old=False, **low)
        default = await _measure(dsn, long, old=False, **defaults)
    for name, r in (("before", before), ("low latency", after), ("defaults", default)):
        print(f"{name}: {r['trades']:.0f} of {r['sent']:.0f} trades measured, "
              f"{r['writes_per_min']:.0f} writes/min")  # fmt: skip
    named = f"defaults ({scale.batch_size}, 60 s, 1 s rows)"
    return [
        row("latency p50, BATCH_SIZE=1 BATCH_INTERVAL=0.1", after["p50"], "ms", before["p50"]),
        row("latency p99, BATCH_SIZE=1 BATCH_INTERVAL=0.1", after["p99"], "ms", before["p99"]),
        row("writes/min, BATCH_SIZE=1", after["writes_per_min"], "1/min", before["writes_per_min"]),
        row(f"latency p50, {named}", default["p50"], "ms", after["p50"]),
        row("latency p99, defaults", default["p99"], "ms", after["p99"]),
        row("writes/min, defaults", default["writes_per_min"], "1/min", after["writes_per_min"]),
    ]


def run(quick: bool) -> list[Row]:
    """The result rows (see the module docstring); `quick`: seconds instead of ~2.5 min."""
    return asyncio.run(_run(QUICK if quick else FULL))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for CI")
    print_table(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
