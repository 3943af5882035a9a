"""The supervisor: wires source → pipeline → spool → writer → sink and runs them until asked to stop.

Shutdown (SIGTERM, Ctrl-C, `--duration`, or a fatal error): stop reading the stream → put the open
rows into the spool, committed → keep writing to the sink for at most SHUTDOWN_GRACE seconds →
cancel the write in flight → close the sink, the Schwab session and the spool. What was not written
waits in the spool for the next run (the last log line says how many rows). Setting `force` (a
second signal) cuts the writing short at once. Nothing here waits on the network without a deadline.

Around the clock (SKIP_MARKET_HOURS=true, no market calendar gating the stream), a feed without
data is normal whenever no trade can happen (`market_hours.QuietHours`): outside 04:00 to four hours
after the close of a trading day, so all night, all weekend and all holiday. Trading days come from
the NYSE schedule cached next to the token file when there is one (holidays, half days), else they
are the weekdays; a date on which trades streamed is one in any case. While quiet is normal the
stream is not reconnected for want of data (only a socket that sends not even heartbeats is),
/healthz is not 503 for it (its body says `"quiet": true`), and the time is no gap. From 04:00 of a
trading day data is due again within STALE_SECONDS.

The token file is followed (`new_client` + `token_path`): every `token_poll_s` seconds, a file from
a newer login (`streaming-service auth` ran) replaces the client at once, before the old client's
next refresh could write its old login back over it. So an expired Schwab login does not stop the
service: it reports `reauth_needed`, keeps writing what is spooled, asks Schwab nothing, and
streams again by itself when the new token file appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import structlog

from streaming_service import __version__
from streaming_service.batcher import Batcher
from streaming_service.config import Settings
from streaming_service.continuity import Continuity
from streaming_service.errors import AuthError
from streaming_service.indicators import EXCHANGE_TZ, REGULAR_CLOSE, REGULAR_OPEN, exchange_day
from streaming_service.market_hours import (
    CalendarUnavailable,
    MarketHours,
    QuietHours,
    cache_path,
    cached_market_hours,
)
from streaming_service.models import Tick
from streaming_service.pipeline import Pipeline
from streaming_service.recovery import MINUTE_MS, Session
from streaming_service.sinks.base import RecordedRow, Sink
from streaming_service.sources.clock import exchange_clock
from streaming_service.sources.options import OptionsTracker
from streaming_service.sources.price_history import Candle, minute_candles
from streaming_service.sources.schwab import SchwabStream
from streaming_service.spool import Spool
from streaming_service.token import TokenInfo, TokenWatcher, describe, read_token_info
from streaming_service.verify import (
    NoSession,
    check_json,
    latest_checks,
    latest_session,
    summary_line,
    verify_day,
)

__all__ = ["Service", "Status"]

log = structlog.get_logger(__name__)
_CLOSE_TIMEOUT_S = 5.0  # closing the sink or the Schwab session never takes longer than this
_SINK_READ_WAIT_S = 5.0  # a cold start reads the session's rows if the sink opens within this
_REAUTH_RETRY_S = 1800.0  # while waiting for a new token file, try the current one this often
_PROOF_EVERY_S = 60.0  # how often the daily proof looks for a session to prove
_PROOF_TIMEOUT_S = 120.0  # one ticker's proof never takes longer
#: With the calendar, the stream connects this long before the open: its first frame is a baseline.
PRE_OPEN_S = 300.0


@dataclass(frozen=True, slots=True)
class Status:
    """A snapshot of the counters, for the status line."""

    state: str
    ticks: int
    ticks_per_s: float
    rows_written: int
    option_rows: int
    batches: int
    pending_rows: int
    spool_dropped: int
    last_price: float | None
    sma: float | None
    vwap: float | None
    last_data_age_s: float | None
    bad_frames: int
    write_errors: int
    connects: int
    rss_mb: float | None

    def line(self) -> str:
        """One human-readable line."""

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        return (
            f"{self.state} ticks={self.ticks} ({self.ticks_per_s:.1f}/s) rows_written={self.rows_written} "
            f"option_rows={self.option_rows} batches={self.batches} spooled={self.pending_rows} "
            f"last={fmt(self.last_price)} sma={fmt(self.sma)} vwap={fmt(self.vwap)} "
            f"errors={self.bad_frames + self.write_errors} connects={self.connects}"
        )


class Service:
    """One ticker set, one Schwab client, one sink. Call `run(stop)` once."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        sink: Sink,
        *,
        market_hours: Callable[[], MarketHours] | None = None,
        new_client: Callable[[], Any] | None = None,
        token_path: Path | None = None,
        token_poll_s: float = 10.0,
    ) -> None:
        """`market_hours`: returns the schedule (a `MarketCalendar`: called before every session, it
        rebuilds when due); None streams 24/7.
        `token_path`: the token file `client` was built from (its expiry is reported and warned
        about); with `new_client` (builds a client from it), the file is followed as the module
        docstring says."""
        self.settings = settings
        self.sink = sink
        self._client = client
        self._market_hours = market_hours
        self._new_client = new_client
        self._token_poll_s = token_poll_s
        self._token_path = token_path
        self._token_watcher = TokenWatcher(token_path) if token_path else None
        self._client_login = self._token_created_at()  # creation time of the login `client` uses
        self._new_login = asyncio.Event()
        self.token_checks = 0
        self._token_warned_at = 0.0
        self.spool = Spool(settings.spool_path, max_bytes=settings.spool_max_mb * 2**20)
        self.batcher = Batcher(
            sink,
            size=settings.batch_size,
            interval=settings.batch_interval,
            spool=self.spool,
            drain=lambda: self.pipeline.drain(),
            checkpoint=lambda: self.continuity.checkpoint(),
        )
        self.pipeline = Pipeline(
            settings.stream_ticker,
            self.batcher.add,
            resolution_s=settings.row_resolution,
            sma_period=settings.sma_period,
            sma_bar_seconds=settings.sma_bar_seconds,
        )
        self.quiet: QuietHours | None = None  # when a feed without data is normal (24/7 only)
        if settings.skip_market_hours and market_hours is None:
            schedule = cached_market_hours(cache_path(settings.schwab_token_path))
            self.quiet = QuietHours(exchange_clock.get(), schedule=schedule, traded_on=self._traded_on)
        self.options: OptionsTracker | None = None
        if settings.options_enabled:
            self.options = OptionsTracker(
                client,
                settings.stream_ticker,
                self.batcher.add_options,
                expirations=settings.options_expirations,
                strikes=settings.options_strikes,
                interval_s=settings.options_interval,
            )
        self.stream = SchwabStream(
            client,
            settings.stream_ticker,
            self._on_tick,
            on_option=self.options.on_item if self.options else None,
            stale_after_s=settings.stale_seconds,
            max_volume_jump=settings.max_volume_jump,
            before_subscribe=lambda: self.continuity.before_subscribe(),
            quiet=self.quiet.is_quiet if self.quiet else None,
        )
        self._now = exchange_clock.get()
        self.continuity = Continuity(
            self.pipeline,
            self.stream.merger,
            self.batcher,
            now=self._now,
            receiving_until=lambda: self.stream.receiving_until_ms,
            end_cause=lambda: self.stream.end_cause,
            fetch_candles=self._minute_candles,
            read_rows=self._recorded_rows,
            session_of=self._session_of,
            options_missed=settings.options_enabled,
        )
        self._session_ms: tuple[int, int] | None = None  # the session streamed now (gated only)
        self.volume_checks: dict[str, dict[str, Any]] = {}  # the daily proof's latest, per ticker
        self.streamed_days: set[date] = set()  # exchange dates with live trades: the proof's days
        self._day_ms = (0, 0)
        self.reauth_needed = False
        self.stopping = False
        self.in_session: bool | None = None  # None: not gated by the calendar
        self._streaming_since: float | None = None  # start of the current streaming stretch
        self._rate_mark = (time.monotonic(), 0)

    async def _recorded_rows(self, ticker: str, since: datetime, until: datetime) -> list[RecordedRow]:
        """What the sink holds of `ticker` in [since, until), once it is open (5 s at most). Raises
        what the sink raises, or `TimeoutError`."""
        async with asyncio.timeout(_SINK_READ_WAIT_S):
            await self.batcher.sink_open.wait()
        return await self.sink.recorded_rows(ticker, since, until)

    async def _minute_candles(self, symbol: str, start_ms: int, end_ms: int) -> list[Candle]:
        return await minute_candles(self._client, symbol, start_ms, end_ms)

    def _session_of(self, now_ms: int) -> Session | None:
        """The regular session of the exchange date of `now_ms` (None: no trading that date): from
        the calendar when it gates the stream, else 09:30-16:00 of a trading day."""
        day = datetime.fromtimestamp(now_ms / 1000, EXCHANGE_TZ).date()
        midnight = datetime.combine(day, clock_time(0), EXCHANGE_TZ).timestamp()
        if self._market_hours is not None:
            session = self._market_hours().session_for(midnight)
            if session is None or datetime.fromtimestamp(session[0], EXCHANGE_TZ).date() != day:
                return None
            opens_ms, closes_ms = int(session[0] * 1000), int(session[1] * 1000)
            return Session(
                opens_ms - opens_ms % MINUTE_MS, closes_ms + -closes_ms % MINUTE_MS
            )  # whole minutes
        if not (self.quiet.trading_day(day) if self.quiet else day.weekday() < 5):
            return None
        opens, closes = (datetime.combine(day, at, EXCHANGE_TZ) for at in (REGULAR_OPEN, REGULAR_CLOSE))
        return Session(int(opens.timestamp() * 1000), int(closes.timestamp() * 1000))

    def _traded_on(self, day: date) -> bool:
        """Whether the last trade of some ticker (streamed, backfilled or resumed) is of `day`."""
        return any(
            b.last_ms is not None and datetime.fromtimestamp(b.last_ms / 1000, EXCHANGE_TZ).date() == day
            for b in self.pipeline.builders.values()
        )

    def _on_tick(self, tick: Tick) -> None:
        at_ms = tick.timestamp.timestamp() * 1000
        if self._session_ms is not None:  # gated by the calendar: only the session's trades are rows
            opens, closes = self._session_ms
            if not opens <= at_ms < closes:
                return
        if not self.continuity.records(tick.symbol, int(at_ms)):
            return
        if not self._day_ms[0] <= at_ms < self._day_ms[1]:  # the first trade of an exchange date
            self._day_ms = exchange_day(int(at_ms))
            self.streamed_days.add(datetime.fromtimestamp(at_ms / 1000, EXCHANGE_TZ).date())
        self.pipeline.on_tick(tick)
        self.batcher.changed()  # low-latency mode writes the open row now
        if self.options is not None:
            self.options.on_tick(tick)

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        """Stream until `stop` is set (or a fatal error), then shut down as the module docstring says.

        Raises `SinkRejected` (the database refuses us), `AuthError` (expired login and no way to
        wait for a new one), `SpoolError` (the spool file cannot be used)."""
        left = await self.spool.open()
        self.continuity.restore(self.spool.checkpoint)
        self.continuity.start()
        if left:
            log.info("rows from a previous run are in the spool; writing them first", rows=left)
        writer = asyncio.create_task(self.batcher.run(), name="writer")
        sources = asyncio.create_task(self._sources(), name="sources")
        stopping = asyncio.create_task(stop.wait(), name="stop-signal")
        following = asyncio.create_task(self._follow_token_file(), name="token-file")
        recovering = asyncio.create_task(self.continuity.run(), name="recovery")
        proving = asyncio.create_task(self._prove_each_day(), name="daily-proof")
        try:
            await asyncio.wait({writer, sources, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (following, recovering, proving):
                task.cancel()
            await self._shutdown(writer, sources, stopping, force)
        for task in (sources, writer):
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _prove_each_day(self) -> None:
        """The daily proof (`verify`): after each session's close, once recovery has nothing left to
        settle, every ticker not proven for a day this process streamed is compared with price
        history; the rows filling whole missing minutes and the summary go to the writer, the
        summary to /healthz and the log. A day that cannot be proven is tried again at the next look
        (every `_PROOF_EVERY_S` of the exchange clock), 3 times."""
        await self.batcher.sink_open.wait()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                self.volume_checks = await latest_checks(self.sink)
        failures: Counter[tuple[str, date]] = Counter()
        while True:
            now = datetime.fromtimestamp(self._now(), UTC)
            try:
                hours = await asyncio.to_thread(self._market_hours) if self._market_hours else None
                session = latest_session(now, hours)
            except (NoSession, CalendarUnavailable):
                session = None
            for ticker in self.settings.stream_ticker:
                if session is None or session.day not in self.streamed_days or self.continuity.unsettled():
                    continue
                if failures[ticker, session.day] >= 3:
                    continue
                if self.volume_checks.get(ticker, {}).get("day", "") >= session.day.isoformat():
                    continue
                try:
                    async with asyncio.timeout(_PROOF_TIMEOUT_S):
                        proof = await verify_day(
                            self.sink, self._client, ticker, session, now=now, write=False,
                            row_resolution_s=self.settings.row_resolution, spool=self.spool,
                        )  # fmt: skip
                except Exception as exc:  # price history or the sink: tried again at the next look
                    failures[ticker, session.day] += 1
                    log.warning("daily proof failed", ticker=ticker, day=str(session.day), error=repr(exc))
                    continue
                self.spool.put([*proof.fills, proof.check])
                self.volume_checks[ticker] = check_json(proof.check)
                log.info("daily proof", ticker=ticker, summary=summary_line(proof.check))
            await self._sleep_until(self._now() + _PROOF_EVERY_S)

    async def _shutdown(
        self,
        writer: asyncio.Task[None],
        sources: asyncio.Task[None],
        stopping: asyncio.Task[bool],
        force: asyncio.Event | None,
    ) -> None:
        self.stopping = True
        for task in (sources, stopping):
            task.cancel()
        await asyncio.wait({sources, stopping}, timeout=_CLOSE_TIMEOUT_S)
        grace = self.settings.shutdown_grace
        log.info("stopping: writing what is spooled", rows=self.batcher.pending, grace_s=grace)
        closing = asyncio.create_task(self.batcher.close(grace), name="writer-close")
        forced = asyncio.create_task(force.wait() if force else asyncio.Event().wait(), name="force")
        await asyncio.wait({closing, forced}, return_when=asyncio.FIRST_COMPLETED)
        if not closing.done():
            log.warning("second signal: stopping now")
            writer.cancel()
            await asyncio.wait({closing}, timeout=_CLOSE_TIMEOUT_S)
        forced.cancel()
        await asyncio.wait({writer}, timeout=_CLOSE_TIMEOUT_S)
        for name, close in (("sink", self.sink.aclose), ("schwab", self._client.close_async_session)):
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await close()
            except Exception as exc:  # closing is best effort: the rows are safe in the spool
                log.warning("closing failed", what=name, error=f"{type(exc).__name__}: {exc}")
        await self.spool.aclose()
        failing = self.batcher.stats.failing_since
        log.info(
            "stopped",
            rows_written=self.batcher.stats.rows_written,
            rows_left_in_spool=self.spool.depth,
            **({} if failing is None else {"sink_failing_for_s": round(time.time() - failing, 1)}),
        )

    async def _sources(self) -> None:
        """Stream (within sessions, if gated); on an expired login, wait for a new token if we can."""
        while True:
            try:
                if self._market_hours is None:
                    await self._stream_and_options()
                else:
                    await self._stream_in_sessions()
            except* AuthError as group:
                if self._new_client is None or self._token_watcher is None:
                    raise
                await self._wait_for_new_login(group.exceptions[0])

    async def _wait_for_new_login(self, error: BaseException) -> None:
        """Report reauth_needed until the token file gives a new client (`_follow_token_file`), or
        for `_REAUTH_RETRY_S` at most: then the same login is tried once more (a login Schwab
        denied repeatedly may have been its own trouble). Schwab is asked nothing meanwhile."""
        failed = self._client
        self.reauth_needed = True
        log.error(
            "Schwab login expired; waiting for a new token file",
            error=str(error),
            fix="run `streaming-service auth` (or copy a new token file to SCHWAB_TOKEN_PATH); "
            "streaming resumes by itself",
        )
        try:
            async with asyncio.timeout(_REAUTH_RETRY_S):
                while self._client is failed:
                    self._new_login.clear()
                    await self._new_login.wait()
            log.info("new token file found; streaming again")
        except TimeoutError:
            log.info("trying the Schwab login again with the same token file")
        finally:
            self.reauth_needed = False

    async def _follow_token_file(self) -> None:
        """Every `token_poll_s`: a token file from a newer login than the client's replaces the
        client (see the module docstring). Does nothing without `new_client` and `token_path`."""
        if self._new_client is None or self._token_watcher is None:
            return
        while True:
            await asyncio.sleep(self._token_poll_s)
            self.token_checks += 1
            if not self._token_watcher.changed():
                continue
            login = self._token_created_at()
            if login is None or (self._client_login is not None and login <= self._client_login):
                continue  # our own refresh rewrote the file, or it is gone or older
            try:
                client = self._new_client()
            except AuthError as exc:
                log.error("the new token file cannot be used", error=str(exc))
                continue
            old, self._client, self._client_login = self._client, client, login
            self.stream.use_client(client)
            if self.options is not None:
                self.options.use_client(client)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await old.close_async_session()
            self._new_login.set()
            log.info("new token file found; the next connection uses it")

    def _token_created_at(self) -> float | None:
        info = self._token_info()
        return None if info is None else info.created_at

    def _token_info(self) -> TokenInfo | None:
        """The token file's expiry information; None without `token_path` or a readable file."""
        try:
            return read_token_info(self._token_path) if self._token_path else None
        except AuthError:
            return None

    async def _stream_and_options(self) -> None:
        """The stream and, with options, the window keeper (no chain requests outside it)."""
        self._streaming_since = time.time()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.stream.run(), name="stream")
            if self.options is not None:
                group.create_task(self.options.run(self.stream.set_option_symbols), name="options")

    async def _stream_in_sessions(self) -> None:
        """Stream during regular sessions only, from `PRE_OPEN_S` before the open (so the first
        frame, a baseline, comes before the opening cross); between them, stay disconnected."""
        assert self._market_hours is not None
        while True:
            hours = await asyncio.to_thread(self._market_hours)  # cheap unless a rebuild is due
            now = self._now()
            session = hours.session_for(now)
            if session is None:
                raise CalendarUnavailable(
                    "the market calendar has no future session; SKIP_MARKET_HOURS=true streams 24/7"
                )
            opens, closes = session
            if now < opens - PRE_OPEN_S:
                self.in_session = False
                log.info("market closed; waiting for the open", opens_at=_iso(opens))
                await self._sleep_until(min(opens - PRE_OPEN_S, now + 3600.0))  # re-read the calendar hourly
                continue
            self.in_session = True
            self._session_ms = int(opens * 1000), int(closes * 1000)
            log.info("market opens soon; streaming" if now < opens else "market open; streaming",
                     opens_at=_iso(opens), closes_at=_iso(closes))  # fmt: skip
            streaming = asyncio.create_task(self._stream_and_options(), name="session")
            closing = asyncio.create_task(self._sleep_until(closes), name="close")
            try:
                await asyncio.wait({streaming, closing}, return_when=asyncio.FIRST_COMPLETED)
                watched = self.stream.subscribed.is_set()  # to the close: no span after the last frame
            finally:
                self.in_session = False
                for task in (streaming, closing):
                    task.cancel()
                await asyncio.wait({streaming, closing})
            if not streaming.cancelled() and streaming.exception() is not None:
                raise streaming.exception()  # type: ignore[misc]
            if watched:
                self.continuity.watched_until_ms = max(self.continuity.watched_until_ms, int(closes * 1000))
            log.info("market closed; disconnected until the next open", closed_at=_iso(closes))

    async def _sleep_until(self, moment: float) -> None:
        """Return at `moment` (epoch s) of the exchange clock, looked at every second (a host that
        slept, or a simulator's faster clock, is noticed within a second)."""
        while (left := moment - self._now()) > 0:  # noqa: ASYNC110 (polls a clock, not a flag)
            await asyncio.sleep(min(left, 1.0))

    def state(self) -> str:
        """streaming, waiting_for_open, reconnecting, sink_down, reauth_needed, or stopped (once
        shutting down)."""
        failing = self.batcher.stats.failing_since
        if self.stopping:
            return "stopped"
        if self.reauth_needed:
            return "reauth_needed"
        if failing is not None and time.time() - failing > self.settings.sink_down_alert_s:
            return "sink_down"
        if self.in_session is False:
            return "waiting_for_open"
        return "streaming" if self.stream.subscribed.is_set() else "reconnecting"

    def last_data_age(self, now: float | None = None) -> dict[str, float | None]:
        """Seconds since the last data frame of each ticker (None: none yet)."""
        now = time.time() if now is None else now
        seen = self.stream.stats.last_data_at_by_symbol
        return {t: (round(now - seen[t], 1) if t in seen else None) for t in self.settings.stream_ticker}

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for /healthz: 200 when streaming or waiting by the calendar; 503
        when the data is stale while trades can happen (see the module docstring for streaming
        around the clock), the sink is down or a new login is needed."""
        now = time.time()
        state = self.state()
        ages = self.last_data_age(now)
        stale_after = self.settings.stale_seconds
        in_hours = state in ("streaming", "reconnecting")
        up_for = now - (self._streaming_since or now)
        quiet = self.quiet is not None and self.quiet.is_quiet()
        waited = min((age for age in ages.values() if age is not None), default=None)
        if self.quiet is not None and self.quiet.last_quiet_at is not None:  # data is due since then
            since_quiet = now - self.quiet.last_quiet_at
            waited = since_quiet if waited is None else min(waited, since_quiet)
        stale = in_hours and not quiet and up_for > stale_after and (waited is None or waited > stale_after)
        ok = state in ("streaming", "waiting_for_open", "reconnecting") and not stale
        failing = self.batcher.stats.failing_since
        body = {
            "state": state,
            "ok": ok,
            "stale": stale,
            "quiet": quiet,
            "version": __version__,
            "tickers": {t: {"last_data_age_s": age} for t, age in ages.items()},
            "spool": {
                "depth": self.spool.depth,
                "oldest_age_s": _round(self.spool.oldest_age(now)),
                "dropped": self.spool.dropped,
            },
            "sink": {
                "name": self.sink.name,
                "failing_for_s": None if failing is None else round(now - failing, 1),
                "last_error": self.batcher.stats.last_error if failing is not None else None,
            },
            "token": self._token_health(now),
            "recovery": {"unsettled_spans": self.continuity.unsettled()},
            "volume_checks": self.volume_checks,
            "stream": {
                "ticks": self.pipeline.ticks,
                "connects": self.stream.stats.connects,
                "bad_frames": self.stream.stats.bad_frames,
                "internal_errors": self.stream.stats.internal_errors,
            },
        }
        return (200 if ok else 503), body

    def _token_health(self, now: float) -> dict[str, Any] | None:
        info = self._token_info()
        if info is None:
            return None
        return {
            "refresh_expires_at": _iso(info.refresh_expires_at),
            "seconds_left": round(info.seconds_left(now)),
        }

    def warn_if_token_expires_soon(self) -> None:
        """Log a warning (at most hourly) from 24 h before the refresh token expires."""
        now = time.time()
        if now - self._token_warned_at < 3600:
            return
        info = self._token_info()
        if info is not None and info.expiring_soon(now):
            self._token_warned_at = now
            log.warning(
                "Schwab refresh token expires soon",
                expires=describe(info, now),
                fix="run `streaming-service auth`",
            )

    def status(self) -> Status:
        """Counters now; ticks/s is measured since the previous call."""
        now, ticks = time.monotonic(), self.pipeline.ticks
        then, ticks_then = self._rate_mark
        self._rate_mark = (now, ticks)
        last = self.pipeline.last_tick
        sma, vwap = self.pipeline.builders[last.symbol].last_indicators if last else (None, None)
        ages = [a for a in self.last_data_age().values() if a is not None]
        return Status(
            state=self.state(),
            ticks=ticks,
            ticks_per_s=(ticks - ticks_then) / (now - then) if now > then else 0.0,
            rows_written=self.batcher.stats.rows_written,
            option_rows=self.batcher.stats.option_rows_written,
            batches=self.batcher.stats.batches,
            pending_rows=self.batcher.pending,
            spool_dropped=self.spool.dropped,
            last_price=last.price if last else None,
            sma=sma,
            vwap=vwap,
            last_data_age_s=max(ages) if ages else None,
            bad_frames=self.stream.stats.bad_frames,
            write_errors=self.batcher.stats.write_errors,
            connects=self.stream.stats.connects,
            rss_mb=_rss_mb(),
        )


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _rss_mb() -> float | None:
    """Resident memory of this process now (Linux), in MiB."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import resource

    return round(pages * resource.getpagesize() / 2**20, 1)
