"""The supervisor: wires source → pipeline → batcher → sink and runs them until asked to stop.

Shutdown order (SIGTERM, Ctrl-C, `--duration`, or a fatal error in the stream): stop reading the
stream, close the open rows, write everything pending, close the sink and the Schwab client's HTTP
session (the service owns both once `run` starts). A fatal error is re-raised
after that flush, so accepted rows are written whenever the database allows it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from streaming_service.batcher import Batcher
from streaming_service.config import Settings
from streaming_service.market_hours import MarketHours
from streaming_service.models import Tick
from streaming_service.pipeline import Pipeline
from streaming_service.sinks.base import Sink
from streaming_service.sources.options import OptionsTracker
from streaming_service.sources.schwab import SchwabStream

__all__ = ["Service", "Status"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the counters, for the status line."""

    ticks: int
    ticks_per_s: float
    rows_written: int
    option_rows: int
    batches: int
    pending_rows: int
    last_price: float | None
    sma: float | None
    vwap: float | None
    bad_frames: int
    write_errors: int
    connects: int

    def line(self) -> str:
        """One human-readable line."""

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        return (
            f"ticks={self.ticks} ({self.ticks_per_s:.1f}/s) rows_written={self.rows_written} "
            f"option_rows={self.option_rows} "
            f"batches={self.batches} pending={self.pending_rows} last={fmt(self.last_price)} "
            f"sma={fmt(self.sma)} vwap={fmt(self.vwap)} "
            f"errors={self.bad_frames + self.write_errors} connects={self.connects}"
        )


class Service:
    """One ticker set, one Schwab client, one sink. Call `run(stop)` once."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        sink: Sink,
        *,
        market_hours: Callable[[], MarketHours] | None = None,
        grace_s: float = 20.0,
    ) -> None:
        """`market_hours`: returns the schedule (called again when it runs out); None streams 24/7."""
        self.sink = sink
        self._client = client
        self._market_hours = market_hours
        self._grace_s = grace_s
        self.batcher = Batcher(
            sink,
            size=settings.batch_size,
            interval=settings.batch_interval,
            drain=lambda: self.pipeline.drain(),
        )
        self.pipeline = Pipeline(
            settings.stream_ticker,
            self.batcher.add,
            resolution_s=settings.row_resolution,
            sma_period=settings.sma_period,
            sma_bar_seconds=settings.sma_bar_seconds,
        )
        self.options: OptionsTracker | None = None
        if settings.options_enabled:
            self.options = OptionsTracker(
                client,
                settings.stream_ticker,
                self.batcher.add_options,
                expirations=settings.options_expirations,
                strikes=settings.options_strikes,
                interval_s=settings.options_interval,
            )
        self.stream = SchwabStream(
            client,
            settings.stream_ticker,
            self._on_tick,
            on_option=self.options.on_item if self.options else None,
        )
        self._rate_mark = (time.monotonic(), 0)

    def _on_tick(self, tick: Tick) -> None:
        self.pipeline.on_tick(tick)
        if self.options is not None:
            self.options.on_tick(tick)

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until `stop` is set, then flush and return. Raises `SinkError`, `AuthError`."""
        await self.sink.open()
        log.info("sink open", sink=self.sink.name)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.batcher.run(), name="batcher")
                group.create_task(self._stream_until(stop), name="stream")
        finally:
            await self.sink.aclose()
            await self._client.close_async_session()

    async def _stream_until(self, stop: asyncio.Event) -> None:
        streaming = asyncio.create_task(self._sources(), name="schwab-stream")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({streaming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, stopping):
                task.cancel()
            await asyncio.gather(streaming, stopping, return_exceptions=True)
            log.info("stream stopped; flushing", pending_rows=self.batcher.pending)
            await self.batcher.close(self._grace_s)
        if not streaming.cancelled() and streaming.exception() is not None:
            raise streaming.exception()  # type: ignore[misc]

    async def _sources(self) -> None:
        """The stream (gated by market hours if configured) and, with options, the window keeper."""
        async with asyncio.TaskGroup() as group:
            source = self.stream.run() if self._market_hours is None else self._stream_in_sessions()
            group.create_task(source, name="stream")
            if self.options is not None:
                group.create_task(self.options.run(self.stream.set_option_symbols), name="options")

    async def _stream_in_sessions(self) -> None:
        """Stream during regular sessions only; between them, stay disconnected."""
        assert self._market_hours is not None
        hours = await asyncio.to_thread(self._market_hours)
        while True:
            now = time.time()
            session = hours.session_for(now)
            if session is None or hours.covers_until() - now < 86_400:
                hours = await asyncio.to_thread(self._market_hours)
                session = hours.session_for(now)
            if session is None:
                raise RuntimeError("the market calendar has no future session")
            opens, closes = session
            if now < opens:
                log.info("market closed; waiting for the open", opens_at=_iso(opens))
                await asyncio.sleep(min(opens - now, 3600.0))  # re-check hourly: clocks drift, hosts sleep
                continue
            log.info("market open; streaming", closes_at=_iso(closes))
            try:
                async with asyncio.timeout(closes - now):
                    await self.stream.run()
            except TimeoutError:
                log.info("market closed; stream stopped", closed_at=_iso(closes))

    def status(self) -> Status:
        """Counters now; ticks/s is measured since the previous call."""
        now, ticks = time.monotonic(), self.pipeline.ticks
        then, ticks_then = self._rate_mark
        self._rate_mark = (now, ticks)
        last = self.pipeline.last_tick
        sma, vwap = (
            self.pipeline.builders[last.symbol].last_indicators if last else (None, None)
        )
        return Status(
            ticks=ticks,
            ticks_per_s=(ticks - ticks_then) / (now - then) if now > then else 0.0,
            rows_written=self.batcher.stats.rows_written,
            option_rows=self.batcher.stats.option_rows_written,
            batches=self.batcher.stats.batches,
            pending_rows=self.batcher.pending,
            last_price=last.price if last else None,
            sma=sma,
            vwap=vwap,
            bad_frames=self.stream.stats.bad_frames,
            write_errors=self.batcher.stats.write_errors,
            connects=self.stream.stats.connects,
        )


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()
