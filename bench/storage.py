"""Bytes per row on disk (table + indexes + TOAST) for each table, and the storage a trading day costs.

Usage: python bench/storage.py [--duration 60] [--speed 240]
Starts a throwaway Postgres (initdb/pg_ctl, as the tests do), applies `supabase/migrations/` with
Supabase's roles, runs `python -m streaming_service demo` against it (simulated QQQ with options at the
default settings), then reads `pg_total_relation_size` per table. The baseline is `equity_data`'s
bytes per row, measured in the same run. Rows per day are the upper bounds for the defaults:
23,400 one-second rows (a trade in every second of the 6.5-hour session) and
OPTIONS_EXPIRATIONS x OPTIONS_STRIKES x 2 sides x 2 types contracts x 390 one-minute snapshots.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg_cluster import PgCluster  # noqa: E402
from supabase_db import bootstrap_roles, prepare_database  # noqa: E402

from streaming_service.config import Settings  # noqa: E402

SESSION_SECONDS = 23_400
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
SNAPSHOTS_PER_DAY = SESSION_SECONDS // DEFAULTS["options_interval"]
OPTION_CONTRACTS = DEFAULTS["options_expirations"] * 2 * DEFAULTS["options_strikes"] * 2  # x sides x C/P
ROWS_PER_DAY = {"equity_data": SESSION_SECONDS, "indicators": SESSION_SECONDS}
ROWS_PER_DAY["option_prices"] = OPTION_CONTRACTS * SNAPSHOTS_PER_DAY
MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="demo seconds (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=240.0, help="simulated s per s (default: %(default)s)")
    args = parser.parse_args()

    with PgCluster() as cluster:
        dsn = cluster.dsn()
        bootstrap_roles(dsn)
        prepare_database(dsn)
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("OPTIONS_", "DATABASE_", "SUPABASE_"))
        }
        command = [sys.executable, "-m", "streaming_service", "demo", "--database-url", dsn]
        command += ["--duration", str(args.duration), "--speed", str(args.speed), "--status-every", "3600"]
        demo = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if demo.returncode != 0:
            raise SystemExit(f"demo exited with {demo.returncode}:\n{demo.stderr[-2000:]}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            measured = {
                table: conn.execute(
                    f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}"
                ).fetchone()
                for table in ROWS_PER_DAY
            }

    baseline = None
    total_per_day = 0.0
    print(f"{'table':<14} {'rows':>7} {'bytes/row':>10} {'ratio':>6} {'rows/day':>9} {'MiB/day':>8}")
    for table, row in measured.items():
        assert row is not None
        rows, size = row
        if rows == 0:
            raise SystemExit(f"{table} is empty: the demo wrote nothing to it")
        per_row = size / rows
        baseline = baseline or per_row
        per_day = per_row * ROWS_PER_DAY[table] / MIB
        total_per_day += per_day
        print(
            f"{table:<14} {rows:>7} {per_row:>10.0f} {per_row / baseline:>5.2f}x "
            f"{ROWS_PER_DAY[table]:>9} {per_day:>8.1f}"
        )
    days = 500 * 1e6 / MIB / total_per_day
    print(
        f"total per trading day ≈ {total_per_day:.1f} MiB; "
        f"500 MB (Supabase free) lasts ≈ {days:.0f} trading days"
    )


if __name__ == "__main__":
    main()
