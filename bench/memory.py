"""Peak memory (max RSS) of the demo process, against a bare Python interpreter measured in the same run.

Usage: python bench/memory.py [--duration 30] [--rate 5] [--speed 10]  (options on, 80 contracts per ticker)
Runs `python -m streaming_service demo` (simulator + real schwab-py client + pipeline + SQLite sink in
one process, so this over-states the production `run` process, which has no simulator) and prints
peak RSS in MiB and the ratio to the baseline. The Lightsail nano has 512 MB; the container is
limited to 192 MB (docker-compose.yml, mem_limit).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def peak_rss_mib(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `argv` to completion; return (peak RSS in MiB, last line of its stdout)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    lines = proc.stdout.read().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} exited with {proc.returncode}")
    return usage.ru_maxrss / 1024, (lines[-1] if lines else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=5.0, help="simulated trades per second per symbol")
    parser.add_argument("--speed", type=float, default=10.0, help="simulated seconds per second")
    args = parser.parse_args()

    baseline, _ = peak_rss_mib([sys.executable, "-c", "pass"])
    imports, _ = peak_rss_mib(
        [sys.executable, "-c", "import streaming_service.cli, streaming_service.service, schwab.auth"]
    )
    with_supabase, _ = peak_rss_mib(
        [
            sys.executable, "-c",
            "import streaming_service.cli, streaming_service.service, schwab.auth, supabase, "
            "streaming_service.sinks.supabase",
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOG_LEVEL": "WARNING"}
        demo, summary = peak_rss_mib(
            [
                sys.executable, "-m", "streaming_service", "demo",
                "--duration", str(args.duration), "--rate", str(args.rate), "--speed", str(args.speed),
                "--ticker", "QQQ,SPY,AAPL", "--status-every", "3600",
                "--database-url", f"sqlite:///{Path(tmp) / 'bench.db'}",
            ],
            env=env,
        )
    print(f"bare python          {baseline:7.1f} MiB  (baseline)")
    print(f"imports only         {imports:7.1f} MiB  ({imports / baseline:.1f}x baseline)")
    print(f"  + supabase-py      {with_supabase:7.1f} MiB  ({with_supabase / baseline:.1f}x baseline)")
    print(f"demo {args.duration:.0f}s, 3 tickers {demo:7.1f} MiB  ({demo / baseline:.1f}x baseline)")
    print(f"  {summary}")


if __name__ == "__main__":
    main()
