"""CPU cost per tick of the pipeline (row building, SMA, VWAP), against a baseline in the same run.

Usage: python bench/pipeline.py [--ticks 200000]
Baseline: creating the `Tick` objects alone. Prints ticks/s for both and the pipeline's overhead.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from streaming_service.models import Tick
from streaming_service.pipeline import Pipeline
from streaming_service.simulator import SimulatedMarket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200_000)
    args = parser.parse_args()

    market = SimulatedMarket(["QQQ"], seed=1, trades_per_second=args.ticks / 23_400)
    market.events_until(23_400.0)
    trades = [(t.timestamp_ms, t.price, t.size) for t in market.trades]

    start = time.perf_counter()
    for ms, price, size in trades:
        Tick("QQQ", datetime.fromtimestamp(ms / 1000, UTC), price, size)
    baseline = time.perf_counter() - start

    rows: list[object] = []
    for resolution in (0, 1, 60):
        pipeline = Pipeline(("QQQ",), rows.append, resolution_s=resolution)
        start = time.perf_counter()
        for ms, price, size in trades:
            pipeline.on_tick(Tick("QQQ", datetime.fromtimestamp(ms / 1000, UTC), price, size))
        elapsed = time.perf_counter() - start
        print(
            f"ROW_RESOLUTION={resolution:<3} {len(trades) / elapsed:>10,.0f} ticks/s "
            f"({elapsed / baseline:.1f}x the baseline's time)"
        )
        rows.clear()
    print(f"baseline (Tick only) {len(trades) / baseline:>10,.0f} ticks/s over {len(trades):,} trades")


if __name__ == "__main__":
    main()
