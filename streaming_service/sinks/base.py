"""The contract every sink fulfils."""

from __future__ import annotations

from typing import Protocol

from streaming_service.models import Batch

__all__ = ["Sink"]


class Sink(Protocol):
    """Somewhere rows are stored.

    - `open()` connects and makes sure the three tables exist (creating them only where the sink owns
      the schema); raises `SinkUnavailable` if the database cannot be reached, `SinkRejected` if it can
      be reached but not used (bad credentials, wrong schema).
    - `write(batch)` stores every row of the batch in one transaction, as an upsert on each table's
      UNIQUE key: replaying a batch changes nothing. Raises `SinkUnavailable` when the same batch may be
      retried, `SinkRejected` otherwise; after either, nothing of the batch is committed.
    - `aclose()` releases connections; idempotent.
    - `name` is a short label for logs and the status line; it never contains credentials.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> None: ...

    async def aclose(self) -> None: ...
