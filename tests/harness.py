"""Run the real service against the simulator, as `streaming-service run` would, for tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming_service.config import load_settings
from streaming_service.models import Tick
from streaming_service.service import Service
from streaming_service.simulator import SchwabSimulator, write_token_file
from streaming_service.sinks import sink_for
from streaming_service.sources.schwab import SchwabStream
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
    async with serving(Service(config, client, sink_for(config))) as service:
        yield service


@asynccontextmanager
async def serving(service: Service) -> AsyncIterator[Service]:
    """`service.run()` as a task; on exit it is stopped and awaited (30 s at most)."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@dataclass
class Received:
    """What a stream under test delivered: trades and option items."""

    ticks: list[Tick] = field(default_factory=list)
    options: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def volume(self) -> int:
        return sum(t.volume for t in self.ticks)


def alive(task: asyncio.Task[None]) -> bool:
    """True while `task` runs; fails the test with the task's exception once it stopped."""
    if task.done():
        raise AssertionError(f"the stream stopped: {task.exception()!r}")
    return True


@asynccontextmanager
async def streaming(
    sim: SchwabSimulator,
    tmp_path: Path,
    *,
    on_tick: Callable[[Tick], None] | None = None,
    on_option: Callable[[Mapping[str, Any]], None] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[SchwabStream, Received, asyncio.Task[None]]]:
    """`SchwabStream.run()` for QQQ on the real schwab-py client against `sim`, as a task (backoff
    capped at 50 ms, `options` passed on); what it delivers is recorded in `Received`, then handed
    to `on_tick` / `on_option` if given. On exit the task is cancelled and the client closed."""
    client = simulator_client(sim, tmp_path)
    got = Received()

    def ticks(tick: Tick) -> None:
        got.ticks.append(tick)
        if on_tick is not None:
            on_tick(tick)

    def items(item: Mapping[str, Any]) -> None:
        got.options.append(item)
        if on_option is not None:
            on_option(item)

    stream = SchwabStream(client, ("QQQ",), ticks, on_option=items, max_backoff_s=0.05, **options)
    task = asyncio.create_task(stream.run())
    try:
        yield stream, got, task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await client.close_async_session()


def command_env(**values: str) -> dict[str, str]:
    """This process's environment (none of our variables: conftest removed them), so a clean shell
    for a `streaming-service` subprocess, with JSON logs, plus `values`."""
    return {**os.environ, "LOG_FORMAT": "json", **values}
