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


@asynccontextmanager
async def running_service(sim: SchwabSimulator, tmp_path: Path, **settings: Any) -> AsyncIterator[Service]:
    """The service streaming from `sim` with `settings` (over test defaults: QQQ, batches of 50 or
    every 0.5 s, a row per trade); on exit it is stopped and has flushed everything."""
    token = tmp_path / "token.json"
    write_token_file(token)
    defaults: dict[str, Any] = {
        "stream_ticker": "QQQ",
        "batch_size": 50,
        "batch_interval": 0.5,
        "row_resolution": 0,
    }
    config = load_settings(**{**defaults, **settings})
    client = build_schwab_client(token, "key", "secret", api_base_url=sim.api_base_url)
    service = Service(config, client, sink_for(config))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
