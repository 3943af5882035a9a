"""Schwab LEVELONE_EQUITIES stream → `Tick`s, with reconnect and re-subscribe.

The stream sends a full snapshot per symbol and then only changed fields; `QuoteMerger` merges them.
A trade is a rise of the cumulative TOTAL_VOLUME; its volume is the rise, so a dropped frame never
loses volume (it folds into the next trade). The first TOTAL_VOLUME seen for a symbol (and any fall,
i.e. a new trading day) only sets the baseline. Quote-only updates are not trades.

Malformed frames and items are counted and logged, never fatal. Network trouble reconnects with
capped exponential backoff (reset after a healthy session); an expired or missing token is fatal.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog
import websockets.exceptions
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from streaming_service.errors import AuthError
from streaming_service.models import Tick
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.options import OPTION_FIELDS

with quiet_library_warnings():
    from authlib.common.errors import AuthlibBaseError
    from schwab.streaming import (
        StreamClient,
        UnexpectedResponse,
        UnexpectedResponseCode,
        UnparsableMessage,
    )

__all__ = ["EQUITY_FIELDS", "BadFrame", "QuoteMerger", "SchwabStream", "StreamStats"]

log = structlog.get_logger(__name__)

_Equity = StreamClient.LevelOneEquityFields
#: The minimal field set; on the wire these are keys "0", "3", "8", "9", "35".
EQUITY_FIELDS = [
    _Equity.SYMBOL,
    _Equity.LAST_PRICE,
    _Equity.TOTAL_VOLUME,
    _Equity.LAST_SIZE,
    _Equity.TRADE_TIME_MILLIS,
]


#: What schwab-py raises while parsing or relabelling one malformed frame; the frame is skipped.
_FRAME_ERRORS = (UnparsableMessage, UnexpectedResponse, KeyError, TypeError, AttributeError, ValueError)


class BadFrame(ValueError):
    """A frame or item whose content cannot be used; it is skipped whole."""


@dataclass(slots=True)
class _SymbolState:
    last_price: float | None = None
    total_volume: int | None = None
    trade_time_ms: int | None = None


class QuoteMerger:
    """Merges partial LEVELONE_EQUITIES items (relabelled by schwab-py) into trades."""

    def __init__(self) -> None:
        self._state: dict[str, _SymbolState] = {}

    def apply(self, item: Mapping[str, Any], frame_time_ms: int | None = None) -> Tick | None:
        """Merge one item; return the trade it reports, if any. Raises `BadFrame`, merging nothing."""
        symbol = item.get("key")
        if not isinstance(symbol, str) or not symbol:
            raise BadFrame(f"item without a symbol key: {dict(item)!r:.200}")
        price = _number(item, "LAST_PRICE", positive=True)
        total = _number(item, "TOTAL_VOLUME")
        time_ms = _number(item, "TRADE_TIME_MILLIS", positive=True)
        if total is not None and total != int(total):
            raise BadFrame(f"{symbol}: TOTAL_VOLUME {total!r} is not a whole number")

        state = self._state.setdefault(symbol, _SymbolState())
        if price is not None:
            state.last_price = price
        if time_ms is not None:
            state.trade_time_ms = int(time_ms)
        if total is None:
            return None
        previous, state.total_volume = state.total_volume, int(total)
        if previous is None or total < previous:
            if previous is not None:
                log.info("total volume fell: new trading day, baseline reset", symbol=symbol)
            return None
        if total == previous or state.last_price is None:
            return None
        trade_ms = state.trade_time_ms or frame_time_ms
        if trade_ms is None:
            raise BadFrame(f"{symbol}: trade without TRADE_TIME_MILLIS or frame timestamp")
        return Tick(
            symbol,
            datetime.fromtimestamp(trade_ms / 1000, UTC),
            state.last_price,
            int(total) - previous,
        )


def _number(item: Mapping[str, Any], name: str, *, positive: bool = False) -> float | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadFrame(f"{item.get('key')}: {name} is {value!r}, not a finite number")
    if value < 0 or (positive and value == 0):
        raise BadFrame(f"{item.get('key')}: {name} is {value!r}, out of range")
    return float(value)


@dataclass(slots=True)
class StreamStats:
    """Counters for the status line."""

    frames: int = 0
    bad_frames: int = 0
    connects: int = 0
    last_frame_at: float | None = None


class _Healthy(Exception):
    """A session that had subscribed and streamed ended: reconnect with a fresh backoff."""


#: Errors that end a connection. Auth errors are not among them: those are fatal.
_DISCONNECTS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    httpx.HTTPError,
    websockets.exceptions.WebSocketException,
)
#: Errors after which reconnecting may help; a denied login is often transient on Schwab's side.
_RETRYABLE = (*_DISCONNECTS, UnexpectedResponseCode)


class SchwabStream:
    """Streams LEVELONE_EQUITIES for `symbols` and calls `on_tick` for each trade; with `on_option`,
    also LEVELONE_OPTIONS for the contracts last given to `set_option_symbols`, one item at a time.

    `client` is a schwab-py AsyncClient (see `schwab_client.build_schwab_client`). `run()` returns
    only when cancelled or on a fatal `AuthError`; each connection uses a fresh `StreamClient`.
    `stale_after_s`: reconnect when no frame at all (heartbeats included) arrived for that long.
    `on_option` may raise `ValueError` for an item it cannot use: the item is counted as a bad frame.
    """

    def __init__(
        self,
        client: Any,
        symbols: tuple[str, ...],
        on_tick: Callable[[Tick], None],
        *,
        on_option: Callable[[Mapping[str, Any]], None] | None = None,
        stale_after_s: float = 60.0,
        max_backoff_s: float = 60.0,
        healthy_after_s: float = 30.0,
    ) -> None:
        self._client = client
        self._symbols = symbols
        self._on_tick = on_tick
        self._stale_after_s = stale_after_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._merger = QuoteMerger()
        self._on_option = on_option
        self._option_symbols: set[str] = set()
        self._live: StreamClient | None = None  # the subscribed connection, while there is one
        self._options_live: set[str] = set()  # what that connection has subscribed
        self._options_lock = asyncio.Lock()
        self.stats = StreamStats()
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        """Connect, subscribe and stream forever; reconnect on network errors. Raises `AuthError`."""
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_RETRYABLE),
                wait=wait_exponential_jitter(max=self._max_backoff_s),
                before_sleep=_log_reconnect,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._session()
            except _Healthy:
                log.info("stream ended after a healthy session; reconnecting now")

    async def _session(self) -> None:
        stream = StreamClient(self._client)
        stream.add_level_one_equity_handler(self._handle)
        stream.add_level_one_option_handler(self._handle_options)
        loop = asyncio.get_running_loop()
        try:
            await self._login(stream)
            await stream.level_one_equity_subs(list(self._symbols), fields=list(EQUITY_FIELDS))
            self._live, self._options_live = stream, set()
            await self._sync_options()
            self.subscribed.set()
            started = loop.time()
            log.info("subscribed", service="LEVELONE_EQUITIES", symbols=",".join(self._symbols))
            try:
                while True:
                    try:
                        async with asyncio.timeout(self._stale_after_s):
                            await stream.handle_message()
                    except _FRAME_ERRORS as exc:
                        self._bad_frame(f"{type(exc).__name__}: {exc}")
                    self.stats.frames += 1
                    self.stats.last_frame_at = loop.time()
            except _DISCONNECTS as exc:
                if loop.time() - started >= self._healthy_after_s:
                    raise _Healthy from exc
                raise
        finally:
            self.subscribed.clear()
            self._live = None
            if stream._socket is not None:  # schwab-py has no close(); LOGOUT needs a live socket
                await stream._socket.close()

    async def set_option_symbols(self, symbols: set[str]) -> None:
        """Stream exactly these option contracts from now on: ADD and UNSUBS on the live connection
        (a reconnect subscribes the whole set). Network errors are left to the reconnect logic."""
        self._option_symbols = set(symbols)
        try:
            await self._sync_options()
        except (*_DISCONNECTS, UnexpectedResponse, UnexpectedResponseCode) as exc:
            log.warning("option subscription change failed; it is redone on reconnect", error=str(exc))

    async def _sync_options(self) -> None:
        """Bring the live connection's option subscriptions to `_option_symbols` (one change at a time)."""
        async with self._options_lock:
            stream = self._live
            if stream is None or self._on_option is None:
                return
            wanted, live = set(self._option_symbols), self._options_live
            if removed := sorted(live - wanted):
                await stream.level_one_option_unsubs(removed)
            if added := sorted(wanted - live):
                subscribe = stream.level_one_option_add if live else stream.level_one_option_subs
                await subscribe(added, fields=list(OPTION_FIELDS))
            self._options_live = wanted
        if removed or added:
            log.info(
                "option subscriptions changed", added=len(added), removed=len(removed), total=len(wanted)
            )

    def _handle_options(self, message: Mapping[str, Any]) -> None:
        """schwab-py handler: one relabelled LEVELONE_OPTIONS data frame."""
        content = message.get("content")
        if not isinstance(content, list) or self._on_option is None:
            self._bad_frame(f"option frame without a content list: {dict(message)!r:.200}")
            return
        for item in content:
            try:
                self._on_option(item)
            except (ValueError, TypeError, AttributeError) as exc:
                self._bad_frame(str(exc))

    async def _login(self, stream: StreamClient) -> None:
        try:
            await stream.login()
        except Exception as exc:
            _raise_if_auth_error(exc)
            raise
        self.stats.connects += 1

    def _handle(self, message: Mapping[str, Any]) -> None:
        """schwab-py handler: one relabelled LEVELONE_EQUITIES data frame."""
        content = message.get("content")
        frame_ms = message.get("timestamp")
        if not isinstance(content, list):
            self._bad_frame(f"data frame without a content list: {dict(message)!r:.200}")
            return
        for item in content:
            try:
                tick = self._merger.apply(item, frame_ms if isinstance(frame_ms, int) else None)
            except (BadFrame, AttributeError) as exc:
                self._bad_frame(str(exc))
                continue
            if tick is not None:
                self._on_tick(tick)

    def _bad_frame(self, reason: str) -> None:
        self.stats.bad_frames += 1
        log.warning("bad frame skipped", reason=reason, bad_frames=self.stats.bad_frames)


def _log_reconnect(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "stream disconnected, reconnecting",
        error=f"{type(exc).__name__}: {exc}",
        attempt=state.attempt_number,
        retry_in_s=round(state.upcoming_sleep, 1),
    )


def _raise_if_auth_error(exc: Exception) -> None:
    """Turn token problems into `AuthError` (fatal); leave everything else alone."""
    if isinstance(exc, AuthlibBaseError):
        raise AuthError(
            f"Schwab refused the token ({exc}); the refresh token lasts 7 days. Create a new token "
            "file (README, 'Schwab token') and restart."
        ) from exc
    if isinstance(exc, UnexpectedResponseCode) and _response_code(exc) == _LOGIN_DENIED:
        raise AuthError(
            f"Schwab's streamer denied the login (code {_LOGIN_DENIED}, {exc}): the access token was "
            "not accepted. Check SCHWAB_APP_KEY/SCHWAB_APP_SECRET and create a new token file "
            "(README, 'Schwab token')."
        ) from exc
    if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
        raise AuthError(
            f"Schwab answered {exc.response.status_code} to the stream login: check SCHWAB_APP_KEY, "
            "SCHWAB_APP_SECRET and the token file (README, 'Schwab token')."
        ) from exc


_LOGIN_DENIED = 3  # Schwab streamer response code LOGIN_DENIED


def _response_code(exc: UnexpectedResponseCode) -> object:
    try:
        return exc.response["response"][0]["content"]["code"]
    except (KeyError, IndexError, TypeError):
        return None
