"""Run the real service against the simulator, as `streaming-service run` would, for tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from streaming_service.config import load_settings
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, write_token_file
from streaming_service.sinks import sink_for
from streaming_service.sources.schwab_client import build_schwab_client


def simulator_client(sim: SchwabSimulator, tmp_path: Path, *, expires_in_s: int = 86_400) -> Any:
    """A real schwab-py AsyncClient pointed at `sim`, with a token file in `tmp_path` the simulator
    accepts (access token valid `expires_in_s`). The caller closes its HTTP session."""
    token = tmp_path / "token.json"
    write_token_file(token, expires_in_s=expires_in_s)
    return build_schwab_client(token, "key", "secret", api_base_url=sim.api_base_url)


@asynccontextmanager
async def running_service(sim: SchwabSimulator, tmp_path: Path, **settings: Any) -> AsyncIterator[Service]:
    """The service streaming from `sim` with `settings` (over test defaults: QQQ, batches of 50 or
    every 0.5 s, a row per trade); on exit it is stopped and has flushed everything."""
    defaults: dict[str, Any] = {
        "stream_ticker": "QQQ",
        "batch_size": 50,
        "batch_interval": 0.5,
        "row_resolution": 0,
        "spool_path": tmp_path / "spool.db",
        "dead_letter_path": tmp_path / "dead_letters.jsonl",
        "health_port": 0,
    }
    config = load_settings(**{**defaults, **settings})
    client = simulator_client(sim, tmp_path)
    service = Service(config, client, sink_for(config))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
