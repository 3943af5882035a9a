"""An in-memory `Sink` for unit tests of the stages above the database (like httpx's MockTransport)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from streaming_service.errors import SinkUnavailable
from streaming_service.models import Batch
from streaming_service.sinks.base import RecordedRow


class MemorySink:
    """Records every batch; `fail_next(n)` makes the next n writes raise `SinkUnavailable`."""

    name = "memory"

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.attempts = 0
        self.probes = 0
        self.written = asyncio.Event()
        self._failures = 0

    def fail_next(self, count: int) -> None:
        self._failures = count

    async def open(self) -> None:
        return None

    async def write(self, batch: Batch) -> None:
        self.attempts += 1
        if self._failures:
            self._failures -= 1
            raise SinkUnavailable("simulated outage")
        self.batches.append(batch)
        self.written.set()

    async def recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]:
        """The latest version of each equity row of `ticker` in [since, until), with its indicators."""
        equity = {r.key: r for b in self.batches for r in b.equity if since <= r.timestamp < until}
        indicators = {r.key: r for b in self.batches for r in b.indicators}
        return [(row, indicators.get(key)) for key, row in sorted(equity.items()) if key[0] == ticker]

    async def probe(self) -> bool:
        """True unless writes are set to fail."""
        self.probes += 1
        return not self._failures

    async def aclose(self) -> None:
        return None

    async def wait_for_batches(self, count: int, within: float = 5.0) -> None:
        """Return once `count` batches were written; raise TimeoutError after `within` seconds."""
        async with asyncio.timeout(within):
            while len(self.batches) < count:
                self.written.clear()
                await self.written.wait()
