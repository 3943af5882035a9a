"""`python tests/service_process.py API_BASE_URL TOKEN_PATH WALL MARKET SPEED`: what
`streaming-service run` does (settings from the environment, signals, /healthz, shutdown), with the
Schwab client pointed at a simulator in another process, whose market clock read MARKET (epoch s)
at wall time WALL and runs SPEED times faster (`SchwabSimulator.start_clock()`): trade times are
checked against that clock, as in-process services do. Exit codes as `streaming-service`'s."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from streaming_service import cli
from streaming_service.config import load_settings
from streaming_service.logs import configure_logging
from streaming_service.service import Service
from streaming_service.sinks import sink_for
from streaming_service.sources.clock import use_exchange_clock
from streaming_service.sources.schwab_client import build_schwab_client


async def _main(api_base_url: str, token_path: Path, wall: float, market: float, speed: float) -> None:
    use_exchange_clock(lambda: market + (time.time() - wall) * speed)
    settings = load_settings()
    configure_logging("json", settings.log_level)
    client = build_schwab_client(token_path, "key", "secret", api_base_url=api_base_url)
    service = Service(settings, client, sink_for(settings), token_path=token_path)
    print("service: started", flush=True)
    await cli._serve(service, stop_when=None, status_every=60.0, print_status=False)


if __name__ == "__main__":
    url, token, wall, market, speed = sys.argv[1:]
    sys.exit(cli.run_command(_main(url, Path(token), float(wall), float(market), float(speed))))
