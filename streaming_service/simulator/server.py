"""A local Schwab: the REST endpoints schwab-py needs and the streamer WebSocket protocol.

REST (`rest.py`, a stdlib HTTP server in a thread): `GET /trader/v1/userPreference` (streamer URL
and ids), `POST /v1/oauth/token` (refresh), `GET /marketdata/v1/chains` and
`/marketdata/v1/expirationchain` (see `options.py`), `GET /marketdata/v1/pricehistory` (candles of
`market.trades` so far: the current period's partial candle included, or with `candle_lag_s` only
periods that ended at least `candle_lag_s` ago by `clock()`, as Schwab serves a minute's candle a
few seconds after it closed). Streamer (websockets, on the event loop): ADMIN LOGIN/LOGOUT and
LEVELONE_EQUITIES / LEVELONE_OPTIONS SUBS/ADD/UNSUBS answered once each with Schwab's response
envelope; heartbeats; one data frame per market event (options: one frame per re-pricing, at most
once per simulated second), a full snapshot per symbol first and then only changed fields.

The market clock starts at the first subscription at 09:30, or where `start_clock(at_offset_s)`
puts it (negative: in the pre-market of a market with extended hours); simulated offset = that
start + elapsed wall time * `speed`. The market's events before the clock's start happen at once,
to nobody: the first snapshot of a connection carries the TOTAL_VOLUME of the day so far (the
pre-market's shares too), and with extended hours pre-market and after-hours trades are streamed
while the clock is in those spans. `clock()` is that market time; every timestamp the simulator
sends (trade times, frame timestamps, heartbeats, replies) is on it, as a real server's are on the
wall clock. While it runs, the simulator installs `clock()` as the exchange clock of its context
(`sources.clock`), so a service started inside `async with SchwabSimulator(...)` checks trade
times against the same clock.

Fault injection: `pause()`/`resume()`, `disconnect_all()`, `drop_next_frames(n)`, `send_raw(frame)`,
`reject_login`, `reject_logins(n)`, `refresh_token_valid`, `fail_next_market_data(n, status)`,
`replace_next_reply(frame)`, `precede_next_reply(frame)`, `silence()`, `heartbeats_only()`,
`interleave(frames)`.
Ground truth: `market.trades` (all), `sent_trades` (delivered), `option_truth` (every field of
each option quote as last delivered), `stream_requests` (every request received).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streaming_service.simulator.connection import (
    EQUITY_SERVICE,
    OPTION_SERVICE,
    Connection,
    Frame,
    root,
    wire_fields,
)
from streaming_service.simulator.faults import StreamFaults
from streaming_service.simulator.market import NEW_YORK, Event, SimulatedMarket
from streaming_service.simulator.options import OptionBook
from streaming_service.simulator.rest import rest_handler
from streaming_service.sources.clock import exchange_clock, use_exchange_clock

__all__ = ["EQUITY_SERVICE", "OPTION_SERVICE", "SchwabSimulator"]

_OPTION_REPRICE_MS = 1000  # option quotes follow the underlying at most once per simulated second

#: The streamer's log (websockets'): a client that hangs up before its handshake is done (a service
#: stopped while it connects) is no error of the simulator's, so it is not logged with a traceback;
#: a failing connection handler (a bug here) still is.
_WS_LOG = logging.getLogger("streaming_service.simulator.streamer")
_WS_LOG.addFilter(lambda record: record.getMessage() != "opening handshake failed")


class _RestServer(ThreadingHTTPServer):
    """The REST side's server: a client that resets or drops its connection gets no traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


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
        candle_lag_s: float | None = None,
    ) -> None:
        if candle_lag_s is not None and candle_lag_s < 0:
            raise ValueError(
                f"candle_lag_s must be >= 0 seconds (None: serve the minute under way), not {candle_lag_s}"
            )
        self.market = market
        self.candle_lag_s = candle_lag_s
        self.speed = speed
        self._host, self._port = host, port
        self._heartbeat_s = heartbeat_seconds
        self.reject_login = False
        self.refresh_token_valid = True
        self._faults = StreamFaults()
        self.rest_requests: list[tuple[str, str]] = []
        self.stream_requests: list[tuple[str, str, dict[str, Any]]] = []
        self.sent_trades: list[Event] = []
        self.session_finished = asyncio.Event()
        self._clients: set[Connection] = set()
        self._current: dict[str, Event] = {s: market.snapshot(s) for s in market.symbols}
        session_date = datetime.fromtimestamp(market.open_ms / 1000, NEW_YORK).date()
        self.books = {
            s: OptionBook(s, session_date, self._current[s].price, seed=seed) for s in market.symbols
        }
        self.option_truth: dict[str, dict[str, Any]] = {}  # option symbol → every field as last sent
        self._repriced_ms: dict[str, int] = {}
        self._last_trade_ms: dict[str, int] = {}
        self._drop = 0
        self._rest_faults: list[int] = []
        self.paused = False
        self._clock_started: float | None = None  # loop time at which the offset was `_offset_base`
        self._offset_base = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clock_token: Any = None
        self._ws: Server | None = None
        self._http: _RestServer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def api_base_url(self) -> str:
        assert self._http is not None, "start() first"
        return f"http://{self._host}:{self._http.server_address[1]}"

    @property
    def streamer_url(self) -> str:
        assert self._ws is not None, "start() first"
        return f"ws://{self._host}:{next(iter(self._ws.sockets)).getsockname()[1]}/ws"

    def clock(self) -> float:
        """The market's time now, epoch seconds: the session's open (09:30 New York) plus the
        clock's starting offset plus `speed` times the wall time elapsed since it started."""
        return self.market.open_ms / 1000 + self._offset()

    def _offset(self) -> float:
        """Simulated seconds since the open (0 until the clock starts)."""
        if self._clock_started is None or self._loop is None:
            return 0.0
        return self._offset_base + (self._loop.time() - self._clock_started) * self.speed

    def set_speed(self, speed: float) -> None:
        """Run the market clock `speed` times faster than the wall clock from now on (it does not jump)."""
        if self._clock_started is not None and self._loop is not None:
            self._offset_base, self._clock_started = self._offset(), self._loop.time()
        self.speed = speed

    def start_clock(self, at_offset_s: float = 0.0) -> tuple[float, float]:
        """Start the market clock now if no subscription has yet, `at_offset_s` simulated seconds
        after the open (negative: before it). The market's events before that happen at once, to
        nobody: a service started then finds a session (or a pre-market) under way. Return (wall
        time, market time) of that moment, epoch seconds, so another process can follow the same
        clock."""
        assert self._loop is not None, "start() first"
        self._start_clock_at(at_offset_s)
        return time.time(), self.clock()

    def _start_clock_at(self, offset_s: float) -> None:
        """Start the clock at `offset_s` unless it runs; the events strictly before it happen now,
        unsent (one exactly at it, such as the opening cross at 0, is sent live)."""
        if self._clock_started is not None or self._loop is None:
            return
        self._clock_started, self._offset_base = self._loop.time(), offset_s
        for event in self.market.events_until(math.nextafter(offset_s, -math.inf)):
            self._current[event.symbol] = event
            if event.kind == "trade":
                self._last_trade_ms[event.symbol] = event.timestamp_ms

    def candles_complete_by_ms(self) -> int | None:
        """With `candle_lag_s`: the time (epoch ms) by which a candle's period must have ended to be
        served, i.e. `candle_lag_s` before `clock()` and no later than the market has generated
        (a paused market's next events are still to come); None without it (the minute under way
        is served too)."""
        if self.candle_lag_s is None:
            return None
        lagged = self._clock_ms() - round(self.candle_lag_s * 1000)
        return min(lagged, self.market.generated_until_ms)

    def _clock_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        """Listen on REST and streamer ports, start the market loop, install `clock()` as the
        exchange clock of the current context (see the module docstring)."""
        self._loop = asyncio.get_running_loop()
        self._clock_token = use_exchange_clock(self.clock)
        self._ws = await serve(self._serve_client, self._host, 0, logger=_WS_LOG)
        self._http = _RestServer((self._host, self._port), rest_handler(self))
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
        if self._clock_token is not None:
            with contextlib.suppress(ValueError):  # stopped from another context: nothing to undo there
                exchange_clock.reset(self._clock_token)
            self._clock_token = None

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

    def resume(self) -> None:
        """Let the market run again. Its clock never stopped: the events of the paused time all
        happen now, one frame each."""
        self.paused = False

    def drop_next_frames(self, count: int) -> None:
        """Do not send the next `count` market data frames (their trades still happen)."""
        self._drop += count

    def fail_next_market_data(self, count: int, status: int = 429) -> None:
        """Answer the next `count` market-data GETs (chains, expiration chain, price history) with
        HTTP `status`."""
        self._rest_faults += [status] * count

    def take_market_data_fault(self) -> int | None:
        """The HTTP status the next market-data GET must fail with, if one was asked for."""
        return self._rest_faults.pop(0) if self._rest_faults else None

    def spot(self, symbol: str) -> Event:
        """The simulated market's current state of `symbol`."""
        return self._current[symbol]

    async def send_raw(self, frame: Frame) -> None:
        """Send `frame` (text, or bytes as a binary message) to every connection, after what is
        already queued."""
        for client in self._clients:
            client.queue(frame, "raw")

    def reject_logins(self, count: int) -> None:
        """Deny the next `count` logins (response code 3, LOGIN_DENIED), then accept again."""
        self._faults.logins_to_deny += count

    def replace_next_reply(
        self, frame: Frame, *, service: str | None = None, command: str | None = None
    ) -> None:
        """Send `frame` instead of the reply to the next request (of `service`/`command`, if given).
        The request itself still takes effect, as when a reply is garbled on its way."""
        self._faults.add_reply_fault(frame, service, command, replace=True)

    def precede_next_reply(
        self, frame: Frame, *, service: str | None = None, command: str | None = None
    ) -> None:
        """Send `frame` just before the reply to the next request (of `service`/`command`, if
        given), so that it arrives while the client awaits that reply."""
        self._faults.add_reply_fault(frame, service, command, replace=False)

    def silence(self) -> None:
        """Make every open connection silent: no replies, data or heartbeats, socket left open
        (a half-dead connection). New connections are normal."""
        for client in self._clients:
            client.mode = "silent"

    def heartbeats_only(self) -> None:
        """Make every open connection send replies and heartbeats but no data (a stuck stream).
        New connections are normal."""
        for client in self._clients:
            client.mode = "heartbeats"

    def interleave(self, frames: Iterable[Frame], *, per_data_frame: int = 1) -> None:
        """Send `frames` between real LEVELONE_EQUITIES data frames: after each data frame a
        connection is sent, up to `per_data_frame` of them follow it. `interleaved_sent` counts
        those queued so far; `interleave_pending` those still waiting."""
        self._faults.interleave(frames, per_data_frame)

    @property
    def interleaved_sent(self) -> int:
        """Frames given to `interleave` that were sent."""
        return self._faults.interleaved_sent

    @property
    def interleave_pending(self) -> int:
        """Frames given to `interleave` that are not sent yet."""
        return self._faults.interleave_pending

    # --- streamer ---------------------------------------------------------------------------------

    async def _serve_client(self, socket: ServerConnection) -> None:
        client = Connection(socket)
        self._clients.add(client)
        writer = asyncio.create_task(client.write(), name="sim-writer")
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

    async def _heartbeats(self, client: Connection) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            heartbeat = {"notify": [{"heartbeat": str(self._clock_ms())}]}
            client.queue(json.dumps(heartbeat), "heartbeat")

    def _handle(self, client: Connection, request: dict[str, Any]) -> None:
        service, command = request.get("service"), request.get("command")
        params = request.get("parameters") or {}
        self.stream_requests.append((str(service), str(command), params))
        code, message = 0, "success"
        if service == "ADMIN" and command == "LOGIN":
            if self.reject_login or self._faults.deny_login() or not params.get("Authorization"):
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
            "timestamp": self._clock_ms(),
            "content": {"code": code, "msg": message},
        }
        for frame in self._faults.reply_frames(service, command, json.dumps({"response": [response]})):
            client.queue(frame, "reply")
        if command in ("SUBS", "ADD") and code == 0:
            keys = self._keys(params)
            if service == EQUITY_SERVICE:
                for symbol in keys:
                    if symbol in self._current:
                        self._send_event(client, self._current[symbol], snapshot=True)
            else:
                self._send_options(client, self._option_quotes(set(keys), trade=False))
        if command == "LOGOUT":
            client.close_after_queued()

    def _subscribe(self, client: Connection, service: str, command: str, params: dict[str, Any]) -> None:
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
        if keys and service == EQUITY_SERVICE:
            self._start_clock_at(0.0)

    @staticmethod
    def _keys(params: dict[str, Any]) -> list[str]:
        return [k for k in str(params.get("keys", "")).split(",") if k]

    def _send_event(self, client: Connection, event: Event, *, snapshot: bool = False) -> bool:
        """Queue `event` for `client` as changed fields only, then any frames to `interleave`;
        return whether the event was queued. A `snapshot` (the first item of a subscription) also
        carries the last trade's time, as Schwab's full items do, when the event is a quote."""
        fields = wire_fields(event)
        if snapshot and "35" not in fields and (trade_ms := self._last_trade_ms.get(event.symbol)):
            fields["35"] = trade_ms
        sent = bool(self._send(client, EQUITY_SERVICE, {event.symbol: fields}))
        for frame in self._faults.after_data_frame() if sent else ():
            client.queue(frame, "raw")
        return sent

    def _send_options(self, client: Connection, quotes: dict[str, dict[str, Any]]) -> None:
        for symbol in self._send(client, OPTION_SERVICE, quotes):
            self.option_truth[symbol] = quotes[symbol]

    def _send(self, client: Connection, service: str, values: dict[str, dict[str, Any]]) -> list[str]:
        """Queue one frame with the changed subscribed fields of each symbol; return the symbols sent."""
        if client.holds_back("data"):  # sends nothing, so nothing counts as sent
            return []
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
            frame = {"service": service, "timestamp": self._clock_ms(), "command": "SUBS", "content": items}
            client.queue(json.dumps({"data": [frame]}), "data")
        return sent

    def _option_quotes(self, symbols: set[str], *, trade: bool) -> dict[str, dict[str, Any]]:
        """Fresh wire fields for each listed contract in `symbols` (unlisted ones are skipped)."""
        quotes = {}
        for symbol in sorted(symbols):
            book = self.books.get(root(symbol))
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
            wanted = {s for c in self._clients for s in c.fields[OPTION_SERVICE] if root(s) == underlying}
            quotes = self._option_quotes(wanted, trade=True)
            for client in list(self._clients):
                self._send_options(client, quotes)

    async def _run_market(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._step()

    def _step(self) -> None:
        """Let the market happen up to the clock: send its events, reprice options."""
        if self._clock_started is None or self.paused:
            return
        moved = set()
        for event in self.market.events_until(self._offset()):
            self._current[event.symbol] = event
            if event.kind == "trade":
                self._last_trade_ms[event.symbol] = event.timestamp_ms
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

    def catch_up(self) -> None:
        """From another thread (the REST server's): let the market happen up to the clock now, on
        the event loop, so that what REST answers (price history) includes every trade until now."""
        if self._loop is None or self._loop.is_closed():
            return

        async def step() -> None:
            self._step()

        with contextlib.suppress(Exception):  # a loop shutting down: answer from what exists
            asyncio.run_coroutine_threadsafe(step(), self._loop).result(timeout=5)
