"""Waiting for a condition in async tests, bounded: the test fails instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll `condition()` until true; raise TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a bounded condition poll
            await asyncio.sleep(0.02)
