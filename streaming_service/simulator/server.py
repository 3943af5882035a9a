"""A local Schwab: the REST endpoints schwab-py needs and the streamer WebSocket protocol.

REST (`rest.py`, a stdlib HTTP server in a thread): `GET /trader/v1/userPreference` (streamer URL and ids),
`POST /v1/oauth/token` (refresh), `GET /marketdata/v1/chains` and `/marketdata/v1/expirationchain`
(see `options.py`). Streamer (websockets, on the event loop): ADMIN LOGIN/LOGOUT and
LEVELONE_EQUITIES / LEVELONE_OPTIONS SUBS/ADD/UNSUBS answered once each with Schwab's response
envelope; heartbeats; one data frame per market event (options: one frame per re-pricing, at most
once per simulated second), a full snapshot per symbol first and then only changed fields.

The market clock starts at the first subscription: simulated offset = elapsed wall time * `speed`.
Fault injection: `disconnect_all()`, `drop_next_frames(n)`, `send_raw(text)`, `reject_login`,
`refresh_token_valid`, `fail_next_market_data(n, status)`. Ground truth: `market.trades` (all),
`sent_trades` (delivered), `option_truth` (every field of each option quote as last delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming_service.simulator.market import NEW_YORK, Event, SimulatedMarket
from streaming_service.simulator.options import OptionBook
from streaming_service.simulator.rest import rest_handler

__all__ = ["SchwabSimulator"]

EQUITY_SERVICE = "LEVELONE_EQUITIES"
OPTION_SERVICE = "LEVELONE_OPTIONS"
_OPTION_REPRICE_MS = 1000  # option quotes follow the underlying at most once per simulated second


def _wire_fields(event: Event) -> dict[str, Any]:
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


@dataclass(eq=False)
class _Client:
    socket: ServerConnection
    outbox: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    #: service → symbol → wire keys subscribed
    fields: dict[str, dict[str, set[str]]] = field(
        default_factory=lambda: {EQUITY_SERVICE: {}, OPTION_SERVICE: {}}
    )
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # symbol → values sent so far


class SchwabSimulator:
    """See the module docstring. Use as `async with SchwabSimulator(market) as sim:`."""

    def __init__(
        self,
        market: SimulatedMarket,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 1.0,
        heartbeat_seconds: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.market = market
        self.speed = speed
        self._host, self._port = host, port
        self._heartbeat_s = heartbeat_seconds
        self.reject_login = False
        self.refresh_token_valid = True
        self.rest_requests: list[tuple[str, str]] = []
        self.stream_requests: list[tuple[str, str, dict[str, Any]]] = []
        self.sent_trades: list[Event] = []
        self.session_finished = asyncio.Event()
        self._clients: set[_Client] = set()
        self._current: dict[str, Event] = {s: market.snapshot(s) for s in market.symbols}
        session_date = datetime.fromtimestamp(market.open_ms / 1000, NEW_YORK).date()
        self.books = {
            s: OptionBook(s, session_date, self._current[s].price, seed=seed) for s in market.symbols
        }
        self.option_truth: dict[str, dict[str, Any]] = {}  # option symbol → every field as last sent
        self._repriced_ms: dict[str, int] = {}
        self._drop = 0
        self._rest_faults: list[int] = []
        self.paused = False
        self._clock_started: float | None = None
        self._ws: Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def api_base_url(self) -> str:
        assert self._http is not None, "start() first"
        return f"http://{self._host}:{self._http.server_address[1]}"

    @property
    def streamer_url(self) -> str:
        assert self._ws is not None, "start() first"
        return f"ws://{self._host}:{next(iter(self._ws.sockets)).getsockname()[1]}/ws"

    async def start(self) -> None:
        """Listen on REST and streamer ports and start the market loop."""
        self._ws = await serve(self._serve_client, self._host, 0)
        self._http = ThreadingHTTPServer((self._host, self._port), rest_handler(self))
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="sim-rest", daemon=True).start()
        self._tasks.append(asyncio.create_task(self._run_market(), name="sim-market"))

    async def stop(self) -> None:
        """Close every connection and both servers; idempotent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._ws is not None:
            self._ws.close()
            await self._ws.wait_closed()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    async def __aenter__(self) -> SchwabSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def disconnect_all(self) -> None:
        """Close every streamer socket (the market keeps running)."""
        await asyncio.gather(*(c.socket.close() for c in list(self._clients)))

    def pause(self) -> None:
        """Freeze the market: no further trades or quotes (already queued frames are still sent)."""
        self.paused = True

    def drop_next_frames(self, count: int) -> None:
        """Do not send the next `count` market data frames (their trades still happen)."""
        self._drop += count

    def fail_next_market_data(self, count: int, status: int = 429) -> None:
        """Answer the next `count` market-data GETs (chains, expiration chain) with HTTP `status`."""
        self._rest_faults += [status] * count

    def take_market_data_fault(self) -> int | None:
        """The HTTP status the next market-data GET must fail with, if one was asked for."""
        return self._rest_faults.pop(0) if self._rest_faults else None

    def spot(self, symbol: str) -> Event:
        """The simulated market's current state of `symbol`."""
        return self._current[symbol]

    async def send_raw(self, text: str) -> None:
        """Send `text` as a frame to every connection, after what is already queued."""
        for client in self._clients:
            client.outbox.put_nowait(text)

    # --- streamer ---------------------------------------------------------------------------------

    async def _serve_client(self, socket: ServerConnection) -> None:
        client = _Client(socket)
        self._clients.add(client)
        writer = asyncio.create_task(self._write(client), name="sim-writer")
        beats = asyncio.create_task(self._heartbeats(client), name="sim-heartbeat")
        try:
            async for raw in socket:
                for request in json.loads(raw).get("requests", []):
                    self._handle(client, request)
        except (ConnectionClosed, ValueError, AttributeError):
            pass
        finally:
            self._clients.discard(client)
            for task in (writer, beats):
                task.cancel()
            await asyncio.gather(writer, beats, return_exceptions=True)

    async def _write(self, client: _Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await client.outbox.get()
                if not frame:  # queued by LOGOUT: Schwab closes the socket after answering
                    await client.socket.close()
                    return
                await client.socket.send(frame)

    async def _heartbeats(self, client: _Client) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            client.outbox.put_nowait(json.dumps({"notify": [{"heartbeat": str(_now_ms())}]}))

    def _handle(self, client: _Client, request: dict[str, Any]) -> None:
        service, command = request.get("service"), request.get("command")
        params = request.get("parameters") or {}
        self.stream_requests.append((str(service), str(command), params))
        code, message = 0, "success"
        if service == "ADMIN" and command == "LOGIN":
            if self.reject_login or not params.get("Authorization"):
                code, message = 3, "Login denied"
        elif service == "ADMIN" and command == "LOGOUT":
            message = "logged out"
        elif service in (EQUITY_SERVICE, OPTION_SERVICE) and command in ("SUBS", "ADD", "UNSUBS"):
            self._subscribe(client, str(service), str(command), params)
        else:
            code, message = 11, f"unsupported: {service} {command}"
        response = {
            "service": service,
            "command": command,
            "requestid": request.get("requestid"),
            "timestamp": _now_ms(),
            "content": {"code": code, "msg": message},
        }
        client.outbox.put_nowait(json.dumps({"response": [response]}))
        if command in ("SUBS", "ADD") and code == 0:
            keys = self._keys(params)
            if service == EQUITY_SERVICE:
                for symbol in keys:
                    if symbol in self._current:
                        self._send_event(client, self._current[symbol])
            else:
                self._send_options(client, self._option_quotes(set(keys), trade=False))
        if command == "LOGOUT":
            client.outbox.put_nowait("")  # marker: close after what is queued

    def _subscribe(self, client: _Client, service: str, command: str, params: dict[str, Any]) -> None:
        keys = self._keys(params)
        subscribed = client.fields[service]
        if command == "UNSUBS":
            for symbol in keys:
                subscribed.pop(symbol, None)
                client.sent.pop(symbol, None)
            return
        if command == "SUBS":
            subscribed.clear()
        wanted = {f for f in str(params.get("fields", "")).split(",") if f}
        for symbol in keys:
            subscribed[symbol] = wanted
            client.sent.pop(symbol, None)  # the next frame is a full snapshot
        if self._clock_started is None and keys and service == EQUITY_SERVICE:
            self._clock_started = asyncio.get_running_loop().time()

    @staticmethod
    def _keys(params: dict[str, Any]) -> list[str]:
        return [k for k in str(params.get("keys", "")).split(",") if k]

    def _send_event(self, client: _Client, event: Event) -> bool:
        """Queue `event` for `client` as changed fields only; return whether anything was queued."""
        return bool(self._send(client, EQUITY_SERVICE, {event.symbol: _wire_fields(event)}))

    def _send_options(self, client: _Client, quotes: dict[str, dict[str, Any]]) -> None:
        for symbol in self._send(client, OPTION_SERVICE, quotes):
            self.option_truth[symbol] = quotes[symbol]

    def _send(self, client: _Client, service: str, values: dict[str, dict[str, Any]]) -> list[str]:
        """Queue one frame with the changed subscribed fields of each symbol; return the symbols sent."""
        items, sent = [], []
        for symbol, fields in values.items():
            wanted = client.fields[service].get(symbol)
            if wanted is None:
                continue
            selected = {k: v for k, v in fields.items() if k in wanted}
            previous = client.sent.get(symbol)
            changed = (
                selected if previous is None else {k: v for k, v in selected.items() if previous.get(k) != v}
            )
            client.sent[symbol] = {**(previous or {}), **selected}  # fields persist until changed
            if previous is None or changed:
                items.append({"key": symbol, "delayed": False, **changed})
                sent.append(symbol)
        if items:
            frame = {"service": service, "timestamp": _now_ms(), "command": "SUBS", "content": items}
            client.outbox.put_nowait(json.dumps({"data": [frame]}))
        return sent

    def _option_quotes(self, symbols: set[str], *, trade: bool) -> dict[str, dict[str, Any]]:
        """Fresh wire fields for each listed contract in `symbols` (unlisted ones are skipped)."""
        quotes = {}
        for symbol in sorted(symbols):
            book = self.books.get(_root(symbol))
            contract = book.contract(symbol) if book else None
            if book is not None and contract is not None:
                spot = self._current[book.underlying]
                quotes[symbol] = book.quote(contract, spot.price, spot.timestamp_ms, trade=trade)
        return quotes

    def _reprice_options(self, moved: set[str]) -> None:
        """Send new option quotes for underlyings in `moved`, at most once per simulated second."""
        for underlying in moved:
            now = self._current[underlying].timestamp_ms
            if now - self._repriced_ms.get(underlying, 0) < _OPTION_REPRICE_MS:
                continue
            self._repriced_ms[underlying] = now
            wanted = {s for c in self._clients for s in c.fields[OPTION_SERVICE] if _root(s) == underlying}
            quotes = self._option_quotes(wanted, trade=True)
            for client in list(self._clients):
                self._send_options(client, quotes)

    async def _run_market(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.01)
            if self._clock_started is None or self.paused:
                continue
            moved = set()
            for event in self.market.events_until((loop.time() - self._clock_started) * self.speed):
                self._current[event.symbol] = event
                moved.add(event.symbol)
                if self._drop:
                    self._drop -= 1
                    continue
                delivered = [self._send_event(c, event) for c in list(self._clients)]
                if event.kind == "trade" and any(delivered):
                    self.sent_trades.append(event)
            self._reprice_options(moved)
            if self.market.finished and not any(c.outbox.qsize() for c in self._clients):
                self.session_finished.set()


def _root(option_symbol: str) -> str:
    """The underlying of an OCC-style streaming key ("QQQ   261124C00500000" → "QQQ")."""
    return option_symbol[:6].rstrip()


def _now_ms() -> int:
    return int(time.time() * 1000)
