"""The clock trade times are checked against ("not in the future", "today").

In production it is the wall clock. A simulator in the same process runs a market on its own
clock: simulated time runs `speed` times faster, from 09:30 New York time. While it runs, it
installs that clock here (`use_exchange_clock`), for the code running in its context: the tasks
started inside `async with SchwabSimulator(...)` and what they construct, such as the demo's
service and the tests' services. A `SchwabStream` reads `exchange_clock` once, when it is
constructed, unless it is given `now=` explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token

__all__ = ["exchange_clock", "use_exchange_clock"]

#: Epoch seconds "now" on the exchange, as trade times must see it.
exchange_clock: ContextVar[Callable[[], float]] = ContextVar("exchange_clock", default=time.time)


def use_exchange_clock(clock: Callable[[], float]) -> Token[Callable[[], float]]:
    """Install `clock` for the current context. Pass the returned token to `exchange_clock.reset()`
    to go back to the previous clock."""
    return exchange_clock.set(clock)
