"""One streamer connection of the simulator: what it subscribed, what it was sent, its outbox.

`Connection.queue` is where a connection's fault mode applies: a silent connection sends nothing
at all (no replies, data or heartbeats), a heartbeats-only one sends everything but data.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from streaming_service.simulator.market import Event

__all__ = ["EQUITY_SERVICE", "OPTION_SERVICE", "Connection", "Frame", "Kind", "root", "wire_fields"]

EQUITY_SERVICE = "LEVELONE_EQUITIES"
OPTION_SERVICE = "LEVELONE_OPTIONS"
Frame = str | bytes  # a text or binary WebSocket message
Kind = Literal["reply", "data", "heartbeat", "raw"]
_CLOSE = object()  # queued by LOGOUT: Schwab closes the socket after answering


@dataclass(eq=False)
class Connection:
    """A connected client: `fields` is service → symbol → wire keys subscribed; `sent` is symbol →
    values sent so far (the next frame carries only what changed); `mode` its fault mode."""

    socket: ServerConnection
    outbox: asyncio.Queue[Frame | object] = field(default_factory=asyncio.Queue)
    mode: Literal["normal", "silent", "heartbeats"] = "normal"
    fields: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: {EQUITY_SERVICE: {}, OPTION_SERVICE: {}}
    )
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)

    def holds_back(self, kind: Kind) -> bool:
        """Whether this connection's mode holds back frames of `kind`."""
        return self.mode == "silent" or (self.mode == "heartbeats" and kind == "data")

    def queue(self, frame: Frame, kind: Kind) -> bool:
        """Queue `frame` unless this connection's mode holds back frames of `kind`; return whether queued."""
        if self.holds_back(kind):
            return False
        self.outbox.put_nowait(frame)
        return True

    def close_after_queued(self) -> None:
        """Close the socket once everything queued so far is sent (LOGOUT)."""
        self.outbox.put_nowait(_CLOSE)

    async def write(self) -> None:
        """Send the outbox in order until the socket closes; run as this connection's writer task."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await self.outbox.get()
                if not isinstance(frame, str | bytes):  # _CLOSE
                    await self.socket.close()
                    return
                await self.socket.send(frame)


def wire_fields(event: Event) -> dict[str, Any]:
    """The LEVELONE_EQUITIES fields the simulator knows, keyed as on the wire."""
    trade_ms = event.timestamp_ms if event.kind == "trade" else None
    fields: dict[str, Any] = {
        "1": event.bid,
        "2": event.ask,
        "3": event.price,
        "8": event.total_volume,
        "9": event.size or None,
        "34": event.timestamp_ms,
        "35": trade_ms,
    }
    return {k: v for k, v in fields.items() if v is not None}


def root(option_symbol: str) -> str:
    """The underlying of an OCC-style streaming key ("QQQ   261124C00500000" → "QQQ")."""
    return option_symbol[:6].rstrip()
