"""`WireStreamClient`: schwab-py's StreamClient for the protocol, our own dispatch for data frames.

Stock schwab-py 1.5.1 deep-copies every data entry and relabels each item's numeric field keys to
enum names before calling a handler; on LEVELONE that is most of the CPU a frame costs. This
client keeps everything schwab-py does for the protocol (login, SUBS/ADD/UNSUBS and their replies,
the request lock, the frames buffered while a reply was awaited, token refresh) and overrides only
`handle_message`: each data entry goes to the handler of its service as decoded, with Schwab's
wire keys ("key", "3", "8", ...; see `merge.py` and `options.py` for the ones we read).

Differences from the stock `handle_message`, on purpose: no per-frame debug logging; a notify of a
service (not a heartbeat) goes to no handler (it carries no items; stock passes it to the data
handler, which would take it for data); handlers must be synchronous.

Verified against schwab-py >=1.5.1,<1.6 (pinned in pyproject.toml): it relies on the private
`_lock`, `_socket` and `_overflow_items`. tests/test_wire_parity.py feeds the same recorded frames
through the stock path and through ours and requires identical ticks and option quotes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from streaming_service.sources import quiet_library_warnings

with quiet_library_warnings():
    from schwab.streaming import StreamClient, UnexpectedResponse

__all__ = ["DataHandler", "JsonDecoder", "WireStreamClient"]

#: Called with one data entry ({"service", "timestamp", "command", "content": [items]}). Must not raise.
DataHandler = Callable[[Mapping[str, Any]], None]


class JsonDecoder(Protocol):
    """schwab-py's decoder interface: `decode_json_string(raw)` returns the parsed frame."""

    def decode_json_string(self, raw: str | bytes) -> dict[str, Any]: ...


class WireStreamClient(StreamClient):  # type: ignore[misc]  # schwab-py is untyped
    """A StreamClient whose data frames go, undecorated, to `handlers[service]`; see the module docstring.

    `client`: a schwab-py client (as for StreamClient). `decoder` parses every frame, replies
    included. `handlers`: service name → handler; data of other services is dropped."""

    def __init__(self, client: Any, decoder: JsonDecoder, handlers: Mapping[str, DataHandler]) -> None:
        super().__init__(client)
        self.json_decoder = decoder
        self._data_handlers = dict(handlers)

    async def handle_message(self) -> None:
        """Read one frame (or take one buffered while a reply was awaited) and dispatch its data.

        Raises what the decoder raises, `UnexpectedResponse` for a reply nobody awaits, the
        socket's errors (websockets `ConnectionClosed`), and `ConnectionError` before `login()`."""
        async with self._lock:
            if self._overflow_items:
                message = self._overflow_items.pop()
            else:
                if self._socket is None:
                    raise ConnectionError("not logged in: no socket")
                message = self.json_decoder.decode_json_string(await self._socket.recv())
        if "response" in message:
            raise UnexpectedResponse(message, "a reply while no request awaits one")
        entries = message.get("data")
        if entries:
            handlers = self._data_handlers
            for entry in entries:
                handler = handlers.get(entry["service"])
                if handler is not None:
                    handler(entry)
