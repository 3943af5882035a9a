"""Schwab streamer → `Tick`s (and option items), forever: reconnect, re-subscribe, survive any frame.

Each connection (`_session`) uses a fresh `WireStreamClient` (wire.py: schwab-py's StreamClient
for the protocol, data items handed over with their wire keys), with our `FrameDecoder`
(frames.py) and our handlers. It logs in, SUBS LEVELONE_EQUITIES (merged into trades by
`QuoteMerger`, merge.py), SUBS the option contracts, then reads frames. Every request, login
included, must be answered within `request_timeout_s`.

What happens to a frame:
- It cannot be parsed, or its envelope is wrong (frames.py): a bad frame. It is counted in
  `stats.bad_frames`, logged (first of each kind at warning, see `stats.Problems`) and skipped,
  also while login, SUBS or ADD await their reply. A malformed or unexpected reply is counted the
  same way, and the connection is dropped and made again; so is a reply that does not come
  within `request_timeout_s` (e.g. because it was garbled beyond recognition).
- An item fails validation (`QuoteMerger`, or `on_option` raising `BadFrame`): a bad frame, skipped.
- Our own code raises while handling it (`QuoteMerger`, `on_tick`, or `on_option` raising
  anything but `BadFrame`): an internal error. It is logged with its traceback as `internal
  error`, counted in `stats.internal_errors`, and streaming goes on. The handlers catch these
  themselves, so whatever escapes schwab-py's `handle_message` is a parse error.

Watchdog: while subscribed, a data frame must reach our handlers at least every `stale_after_s`
(heartbeats are not data). Otherwise (heartbeats only, or a socket gone silent) the connection is
dropped and made again: `stream stale, reconnecting`, counted in `stats.stale_reconnects`. One
watchdog timer per connection fires when the last data frame would be `stale_after_s` old (not
once per frame; it re-arms itself if data came meanwhile) and cancels the read; the reader turns
that cancellation, and only that one, into `_Stale`. A network `TimeoutError` stays a network error.
With `quiet` (SKIP_MARKET_HOURS=true: `market_hours.QuietHours.is_quiet`), no data is no fault while
quiet is normal (no trade can happen): the watchdog then looks every second whether it still is,
and only a socket that sent no frame at all (heartbeats included) for `stale_after_s` is stale.
When quiet ends, data is due within `stale_after_s` of that moment.

Gaps: `receiving_until_ms` is the exchange time of the last data frame (by our clock, or by the
frame's own timestamp if that is earlier: what it holds is certain up to then) and `end_cause` why
the last connection ended ("disconnect" or "stale"); `before_subscribe`, if given, is awaited after
each login and before the subscriptions (recovery adds the span the stream did not watch there).

Reconnecting uses capped exponential backoff with jitter, reset after a healthy session (one that
received data and lasted `healthy_after_s`). It is triggered by network errors, timeouts, a stale
stream, a malformed reply, Schwab's code 12 (another login took the connection) and refused
requests. A denied login (code 3) is retried; only `login_denied_attempts` denials in a row are
taken for an expired login. Token errors are `AuthError`, which is fatal and raised by `run()`
(mapped in `schwab_client.schwab_errors`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import structlog
import websockets.exceptions
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from streaming_service.errors import AuthError
from streaming_service.models import Tick
from streaming_service.sources import quiet_library_warnings
from streaming_service.sources.clock import exchange_clock
from streaming_service.sources.frames import (
    EXCERPT_CHARS,
    BadFrame,
    FrameDecoder,
    StreamSevered,
    describe,
    excerpt,
)
from streaming_service.sources.merge import SYMBOL, QuoteMerger
from streaming_service.sources.options import OPTION_FIELDS
from streaming_service.sources.schwab_client import schwab_errors
from streaming_service.sources.stats import Problems, StreamStats
from streaming_service.sources.wire import WireStreamClient

with quiet_library_warnings():
    from schwab.streaming import StreamClient, UnexpectedResponse, UnexpectedResponseCode

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
_EQUITIES, _OPTIONS = "LEVELONE_EQUITIES", "LEVELONE_OPTIONS"
_LOGIN_DENIED = 3  # Schwab streamer response code LOGIN_DENIED
_QUIET_CHECK_S = 1.0  # while quiet is normal, the watchdog looks this often whether it still is


class _Reconnect(Exception):
    """This connection cannot go on; make a new one (retryable)."""


class _Stale(_Reconnect):
    """No data frame for `stale_after_s`."""


class _BadReply(_Reconnect):
    """A request's reply was malformed, or something else came instead of it."""


class _Healthy(Exception):
    """A session that had streamed data for a while ended: reconnect with a fresh backoff."""


#: Errors that end a connection. Auth errors are not among them: those are fatal.
_DISCONNECTS: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    httpx.HTTPError,
    websockets.exceptions.WebSocketException,
)
#: Errors after which this connection cannot go on.
_ENDS: tuple[type[Exception], ...] = (*_DISCONNECTS, _Reconnect, StreamSevered)
_RETRYABLE = (*_ENDS, UnexpectedResponseCode)


class SchwabStream:
    """Streams LEVELONE_EQUITIES for `symbols` and calls `on_tick` for each trade; with `on_option`,
    also LEVELONE_OPTIONS for the contracts last given to `set_option_symbols`, one item at a time.
    See the module docstring for the failure handling.

    `client`: a schwab-py AsyncClient (`schwab_client.build_schwab_client`). `run()` returns only
    when cancelled, or raises a fatal `AuthError`. `on_option` raises `BadFrame` (e.g.
    `BadOptionItem`) for an item it cannot use. `max_volume_jump`: see `QuoteMerger`. `now`:
    the clock for trade-time checks (default: `clock.exchange_clock`, read at construction).
    `quiet`: says when a feed without data is normal (see "Watchdog" in the module docstring).
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
        request_timeout_s: float = 30.0,
        login_denied_attempts: int = 5,
        max_volume_jump: float = 10.0,
        now: Callable[[], float] | None = None,
        before_subscribe: Callable[[], Awaitable[None]] | None = None,
        quiet: Callable[[], bool] | None = None,
    ) -> None:
        self._client = client
        self._symbols = symbols
        self._on_tick = on_tick
        self._on_option = on_option
        self._stale_after_s = stale_after_s
        self._max_backoff_s = max_backoff_s
        self._healthy_after_s = healthy_after_s
        self._request_timeout_s = request_timeout_s
        self._login_denied_attempts = login_denied_attempts
        self._now = now or exchange_clock.get()
        self.merger = QuoteMerger(symbols=symbols, max_volume_jump=max_volume_jump, now=self._now)
        self._before_subscribe = before_subscribe
        self.receiving_until_ms: int | None = None
        self.end_cause = "disconnect"
        self._option_symbols: set[str] = set()
        self._live: StreamClient | None = None  # the subscribed connection, while there is one
        self._options_live: set[str] = set()  # what that connection has subscribed
        self._options_lock = asyncio.Lock()
        self._denied = 0  # login denials in a row
        self._data_at = 0.0  # event-loop time of the last data frame
        self._quiet = quiet
        self._quiet_at = 0.0  # event-loop time at which quiet was last seen to be normal
        self.stats = StreamStats()
        self._problems = Problems(self.stats)
        services = (_EQUITIES, _OPTIONS) if on_option else (_EQUITIES,)
        self._decoder = FrameDecoder(services, on_bad=self._problems.bad_frame)
        self.subscribed = asyncio.Event()

    def use_client(self, client: Any) -> None:
        """Use `client` (e.g. built from a new token file) from the next connection on."""
        self._client = client
        self._denied = 0

    async def run(self) -> None:
        """Connect, subscribe and stream forever; reconnect as the module docstring says.

        Raises `AuthError` (token refused or expired, or too many denied logins)."""
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

    def _connection(self) -> WireStreamClient:
        """A new client with our decoder and handlers, not logged in yet."""
        handlers = {_EQUITIES: self._handle, _OPTIONS: self._handle_options}
        return WireStreamClient(self._client, self._decoder, handlers)

    async def _session(self) -> None:
        stream = self._connection()
        loop = asyncio.get_running_loop()
        try:
            await self._request("login", self._login(stream))
            if self._before_subscribe is not None:
                await self._before_subscribe()
            self.end_cause = "disconnect"
            subs = stream.level_one_equity_subs(list(self._symbols), fields=list(EQUITY_FIELDS))
            await self._request(f"{_EQUITIES} SUBS", subs)
            self._live, self._options_live = stream, set()
            try:
                await self._sync_options()
            except UnexpectedResponseCode as exc:
                log.error("Schwab refused the option subscription; streaming equities only", error=str(exc))
            self.subscribed.set()
            started = self._data_at = loop.time()
            log.info("subscribed", service=_EQUITIES, symbols=",".join(self._symbols))
            try:
                await self._read(stream, loop)
            except _ENDS as exc:
                if self._data_at > started and loop.time() - started >= self._healthy_after_s:
                    raise _Healthy from exc
                raise
        finally:
            self.subscribed.clear()
            self._live = None
            await _close(stream)

    async def _read(self, stream: WireStreamClient, loop: asyncio.AbstractEventLoop) -> None:
        """Dispatch frames until the connection ends (raises its error) or goes stale (`_Stale`).
        Cancel-safe: a cancellation from outside propagates as `CancelledError`."""
        watchdog = _Watchdog(self, loop)
        try:
            while True:
                try:
                    await stream.handle_message()
                except _ENDS:
                    raise
                except BadFrame as exc:
                    self._problems.bad_frame(exc)
                except Exception as exc:  # a parse error by construction: our handlers catch their own
                    kind = (
                        "unexpected response" if isinstance(exc, UnexpectedResponse) else type(exc).__name__
                    )
                    self._problems.bad_frame(BadFrame(describe(exc), kind=kind))
                self.stats.frames += 1
                self.stats.last_frame_at = loop.time()
        except asyncio.CancelledError:
            if not watchdog.fired or watchdog.reader.uncancel() > 0:
                raise  # cancelled from outside (too)
            self.stats.stale_reconnects += 1
            self.end_cause = "stale"
            log.warning(
                "stream stale, reconnecting",
                no_data_for_s=round(loop.time() - self._data_at, 1),
                stale_reconnects=self.stats.stale_reconnects,
            )
            raise _Stale(f"no data frame for {self._stale_after_s} s") from None
        finally:
            watchdog.stop()

    async def _request(self, what: str, request: Awaitable[None]) -> None:
        """Await `request` (login, SUBS, ADD, UNSUBS) within `request_timeout_s` (else TimeoutError).
        A malformed or unexpected reply is counted as a bad frame, and raises `_BadReply`."""
        try:
            async with asyncio.timeout(self._request_timeout_s):
                await request
        except BadFrame as exc:
            self._problems.bad_frame(exc)
            raise _BadReply(f"the {what} got a malformed reply") from exc
        except UnexpectedResponse as exc:
            self._problems.bad_frame(BadFrame(f"{exc}: {excerpt(exc.response)}", kind="unexpected response"))
            raise _BadReply(f"the {what} got a reply to another request") from exc

    async def _login(self, stream: StreamClient) -> None:
        try:
            with schwab_errors("the stream login"):
                await stream.login(websocket_connect_args={"close_timeout": 2})
        except UnexpectedResponseCode as exc:
            if _response_code(exc) == _LOGIN_DENIED:
                self._denied += 1
                self.stats.login_denials += 1
                if self._denied >= self._login_denied_attempts:
                    raise AuthError(
                        f"Schwab's streamer denied the login {self._denied} times in a row (code "
                        f"{_LOGIN_DENIED}): the access token is not accepted. Check SCHWAB_APP_KEY/"
                        "SCHWAB_APP_SECRET, then run `streaming-service auth` to log in again (docs/"
                        "operations.md, 'Schwab token')."
                    ) from exc
            raise
        except (BadFrame, StreamSevered):
            raise
        except (ValueError, LookupError, TypeError, AssertionError) as exc:
            # a garbled userPreference answer (schwab-py asserts its status is 200, then indexes it)
            unusable = f"userPreference is not usable: {type(exc).__name__}: {exc}"
            raise _BadReply(unusable[:EXCERPT_CHARS]) from exc
        self._denied = 0
        self.stats.connects += 1

    async def set_option_symbols(self, symbols: set[str]) -> None:
        """Stream exactly these option contracts from now on, with ADD and UNSUBS on the live
        connection (a reconnect subscribes the whole set). If a change fails on the way, the
        connection is dropped, so that the reconnect redoes it. If Schwab refuses it, that is
        logged and the change is tried again on the next call."""
        self._option_symbols = set(symbols)
        try:
            await self._sync_options()
        except UnexpectedResponseCode as exc:
            log.error("Schwab refused the option subscription change", error=str(exc))
        except _ENDS as exc:
            log.warning(
                "option subscription change failed; reconnecting to redo it",
                error=describe(exc),
            )
            await _close(self._live)

    async def _sync_options(self) -> None:
        """Bring the live connection's option subscriptions to `_option_symbols` (one change at a time)."""
        async with self._options_lock:
            stream = self._live
            if stream is None or self._on_option is None:
                return
            wanted, live = set(self._option_symbols), self._options_live
            if removed := sorted(live - wanted):
                await self._request(f"{_OPTIONS} UNSUBS", stream.level_one_option_unsubs(removed))
                self._options_live = live - set(removed)
            if added := sorted(wanted - live):
                if live:  # SUBS would replace the connection's whole option list: the first time only
                    command, subscribe = "ADD", stream.level_one_option_add
                else:
                    command, subscribe = "SUBS", stream.level_one_option_subs
                await self._request(f"{_OPTIONS} {command}", subscribe(added, fields=list(OPTION_FIELDS)))
            self._options_live = wanted
        if removed or added:
            log.info(
                "option subscriptions changed", added=len(added), removed=len(removed), total=len(wanted)
            )

    def _handle(self, message: Mapping[str, Any]) -> None:
        """Data handler: one LEVELONE_EQUITIES data entry, items keyed as on the wire. Never raises."""
        seen_at = self._saw_data()
        frame_ms = message.get("timestamp")
        frame_ms = frame_ms if type(frame_ms) is int or type(frame_ms) is float else None  # not bool
        if frame_ms is not None and self.receiving_until_ms is not None:  # the server's clock may lag
            self.receiving_until_ms = min(self.receiving_until_ms, int(frame_ms))  # ours: the earlier
        by_symbol = self.stats.last_data_at_by_symbol
        for item in _items(message):
            try:
                tick = self.merger.apply(item, frame_ms)
            except BadFrame as exc:
                self._problems.bad_frame(exc)
                continue
            except Exception as exc:
                self._problems.internal_error(exc, "QuoteMerger.apply")
                continue
            by_symbol[item[SYMBOL]] = seen_at
            if tick is not None:
                try:
                    self._on_tick(tick)
                except Exception as exc:
                    self._problems.internal_error(exc, "on_tick")

    def _handle_options(self, message: Mapping[str, Any]) -> None:
        """Data handler: one LEVELONE_OPTIONS data entry, items keyed as on the wire. Never raises."""
        self._saw_data()
        if self._on_option is None:  # not subscribed: the decoder refuses such frames
            return
        for item in _items(message):
            try:
                self._on_option(item)
            except BadFrame as exc:
                self._problems.bad_frame(exc)
            except Exception as exc:
                self._problems.internal_error(exc, "on_option")

    def _saw_data(self) -> float:
        """Note that a data frame reached a handler; return when (epoch seconds)."""
        self._data_at = asyncio.get_running_loop().time()
        self.stats.last_data_at = now = time.time()
        self.receiving_until_ms = int(self._now() * 1000)
        return now


class _Watchdog:
    """Cancels the current task (the reader) once `stream` had no data frame for `stale_after_s`
    (while quiet is normal: no frame at all); `fired` tells that cancellation apart. A loop timer,
    re-armed once per `stale_after_s` (every `_QUIET_CHECK_S` with `quiet`)."""

    def __init__(self, stream: SchwabStream, loop: asyncio.AbstractEventLoop) -> None:
        reader = asyncio.current_task()
        assert reader is not None, "runs in a task"
        self.reader, self.fired = reader, False
        self._stream, self._loop = stream, loop
        first = stream._data_at + stream._stale_after_s
        if stream._quiet is not None:
            first = min(first, loop.time() + _QUIET_CHECK_S)
        self._timer = loop.call_at(first, self._check)

    def _check(self) -> None:
        stream, now = self._stream, self._loop.time()
        if stream._quiet is not None and stream._quiet():
            stream._quiet_at = now  # no data is due: only a silent socket is stale
            heard = max(stream._data_at, stream.stats.last_frame_at or 0.0)
            deadline = heard + stream._stale_after_s
            if now < deadline:
                self._timer = self._loop.call_at(min(now + _QUIET_CHECK_S, deadline), self._check)
                return
        else:
            deadline = max(stream._data_at, stream._quiet_at) + stream._stale_after_s
            if now < deadline:
                self._timer = self._loop.call_at(deadline, self._check)
                return
        self.fired = True
        self.reader.cancel("stream stale")

    def stop(self) -> None:
        """Disarm (idempotent)."""
        self._timer.cancel()


async def _close(stream: StreamClient | None) -> None:
    """Close `stream`'s socket if it has one (schwab-py has no close(); LOGOUT needs a live socket)."""
    if stream is not None and stream._socket is not None:
        await stream._socket.close()


def _items(message: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The items of a data entry (the decoder has checked it is a list of objects)."""
    content = message.get("content")
    return content if type(content) is list else []


def _log_reconnect(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "stream disconnected, reconnecting",
        error=describe(exc),
        attempt=state.attempt_number,
        retry_in_s=round(state.upcoming_sleep, 2),
    )


def _response_code(exc: UnexpectedResponseCode) -> object:
    try:
        return exc.response["response"][0]["content"]["code"]
    except (KeyError, IndexError, TypeError):
        return None
