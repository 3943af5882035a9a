"""Continuity: restarts and disconnects leave no hole and no wrong number.

- **Checkpoint** (`checkpoint()`): per ticker, the row builder's state (indicators, open row) and
  the merger's (last TOTAL_VOLUME of the exchange date), plus `receiving_until`, the exchange time
  up to which the stream was receiving, and the settings that state was made under
  (ROW_RESOLUTION, SMA_PERIOD, SMA_BAR_SECONDS). The writer commits it with the rows it covers, in
  one spool transaction, so the two always agree.
- **Warm start** (`restore()`): a checkpoint of the current exchange date is resumed. The open row
  continues (it is never overwritten by a smaller one), VWAP and SMA go on, and the next
  TOTAL_VOLUME counts exactly what was traded meanwhile. A checkpoint of an earlier date is ignored.
- **Changed settings.** A checkpoint is never resumed blindly: if a setting differs from the one
  it was made under (or it does not say, being older than this rule), one warning names what
  changed, and only what depends on it starts afresh:
  - SMA_PERIOD or SMA_BAR_SECONDS: the SMA is rebuilt under the new settings from the rows
    recorded today (spool and database), before the gap is filled; as in a cold start, a bar's
    close is its last row's price, so rows coarser than a bar give fewer bars. If the rows cannot
    be read, the SMA starts empty (NULL until it has its bars). VWAP, the open row and the
    TOTAL_VOLUME baseline continue: they do not depend on either setting.
  - ROW_RESOLUTION: new rows have the new resolution. The open row was recorded under the old one
    and keeps its timestamp; a trade whose new interval starts at or before it is added to it
    (only when the new resolution is coarser: it then closes at the next boundary), so no
    recorded row is replaced by a smaller one and no share is counted twice. Everything else
    continues.
- **Gaps** (`before_subscribe()`, awaited before every subscription): when the stream was not
  receiving, the time since `receiving_until` (restart) or since the last data frame (reconnect)
  is a gap. If a minute boundary passed since the ticker's last trade, Schwab's 1-minute price
  history fills it: the rest of that trade's minute (candle volume minus what was streamed in it)
  joins its row, and each later complete minute without a row becomes a backfilled row at the
  minute's start (price = candle close, volume = candle volume); the indicators carry on through
  them. The next TOTAL_VOLUME then counts only what the candles did not hold (the current minute
  up to the subscription; also the minute before if the subscription straddled a minute boundary
  after the history was read): nothing is counted twice. One `stream_gaps` row records the gap.
  Only regular hours of a date count (of a trading day, streaming around the clock), and between
  midnight and 04:00 nothing is filled: the day has no session yet, so today's first TOTAL_VOLUME
  is a plain baseline (a hole in the previous day's session is not recorded after midnight).
- **Cold start** (no checkpoint of today): the session so far is rebuilt from the sink's rows of
  the session (exact), then from price history for the minutes after them; the day's volume by
  price history is the TOTAL_VOLUME baseline, so the first live row counts only the current minute.

Backfill is best effort: if price history cannot be read, the gap's shares are counted in the
first live row (as `volume_missing` in the ledger says) and streaming goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import Any

import structlog

from streaming_service.indicators import EXCHANGE_TZ, REGULAR_OPEN, exchange_day, session_segment
from streaming_service.models import EquityRow, GapCause, GapRow, IndicatorRow, Tick
from streaming_service.pipeline import Pipeline
from streaming_service.sources.merge import QuoteMerger
from streaming_service.sources.price_history import Candle, PriceHistoryUnavailable

__all__ = ["CHECKPOINT_VERSION", "Continuity"]

log = structlog.get_logger(__name__)
CHECKPOINT_VERSION = 1
_MINUTE_MS = 60_000
_REGULAR_CLOSE = time(16, 0)
_KEEP_GAPS = 100  # `gaps` keeps the latest ones (for /healthz and tests)
_FILL_TIMEOUT_S = 30.0  # reading the sink's rows or price history never holds a subscription longer

FetchCandles = Callable[[str, int, int], Awaitable[list[Candle]]]
RecordedRows = Callable[[str, datetime, datetime], Awaitable[list[tuple[EquityRow, IndicatorRow | None]]]]


class Continuity:
    """See the module docstring. `now`: the exchange clock (epoch s); `receiving_until`: the
    stream's exchange time (ms) of its last data frame, None before any; `end_cause`: why the
    stream's last connection ended; `trading_day`: whether trades can happen on a date (streaming
    around the clock; None: every date's regular hours count)."""

    def __init__(
        self,
        pipeline: Pipeline,
        merger: QuoteMerger,
        *,
        now: Callable[[], float],
        receiving_until: Callable[[], int | None],
        end_cause: Callable[[], str],
        add_gap: Callable[[GapRow], None],
        fetch_candles: FetchCandles | None,
        recorded_rows: RecordedRows | None,
        options_missed: bool,
        trading_day: Callable[[date], bool] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._merger = merger
        self._now = now
        self._receiving_until = receiving_until
        self._end_cause = end_cause
        self._add_gap = add_gap
        self._fetch_candles = fetch_candles
        self._recorded_rows = recorded_rows
        self._options_missed = options_missed
        self._trading_day = trading_day
        self._restart_from: dict[str, int] = {}  # ticker → receiving_until of the resumed checkpoint
        self._sma_to_rebuild: set[str] = set()  # resumed under other SMA settings
        self._first = True
        self._receiving_until_ms: int | None = None
        self.gaps: list[GapRow] = []  # recorded by this process, latest version of each

    def checkpoint(self) -> dict[str, Any]:
        """The state to commit with the rows (JSON-compatible); see the module docstring."""
        until = self._receiving_until()
        if until is not None:
            self._receiving_until_ms = until
        return {
            "version": CHECKPOINT_VERSION,
            "settings": self._pipeline.settings,
            "receiving_until_ms": self._receiving_until_ms,
            "tickers": {
                ticker: {"builder": builder.state(), "merger": self._merger.state(ticker)}
                for ticker, builder in self._pipeline.builders.items()
            },
        }

    def restore(self, saved: dict[str, Any] | None) -> list[str]:
        """Resume the tickers `saved` holds for the current exchange date; return them (logged)."""
        if not saved or saved.get("version") != CHECKPOINT_VERSION or saved.get("receiving_until_ms") is None:
            log.info("no checkpoint to resume: starting cold", reason="none" if not saved else "unusable")
            return []
        until = int(saved["receiving_until_ms"])
        if until > self._now() * 1000:
            log.warning("the checkpoint is from the future (was the clock changed?): starting cold",
                        receiving_until=_iso(until))  # fmt: skip
            return []
        resumed = []
        for ticker, state in (saved.get("tickers") or {}).items():
            builder = self._pipeline.builders.get(ticker)
            if builder is None or state.get("merger") is None:
                continue
            if not self._merger.restore(ticker, state["merger"]):
                continue  # another exchange date
            builder.restore(state["builder"])
            self._restart_from[ticker] = until
            resumed.append(ticker)
        log.info(
            "checkpoint resumed" if resumed else "checkpoint is of another day: starting cold",
            tickers=",".join(resumed) or None,
            receiving_until=_iso(until),
        )
        if resumed:
            self._settings_changed(saved.get("settings"), resumed)
        return resumed

    def _settings_changed(self, made_under: dict[str, Any] | None, resumed: list[str]) -> None:
        """Log what changed since the checkpoint was made and start afresh what depends on it (see
        the module docstring)."""
        now = self._pipeline.settings
        then: dict[str, Any] = made_under if isinstance(made_under, dict) else dict.fromkeys(now, "?")
        changed = [name for name in now if then.get(name) != now[name]]
        if not changed:
            return
        sma = "SMA_PERIOD" in changed or "SMA_BAR_SECONDS" in changed
        if sma:
            for ticker in resumed:
                self._pipeline.builders[ticker].rebuild_sma(())
            self._sma_to_rebuild.update(resumed)
        afresh = ["the SMA, rebuilt from the rows recorded today"] if sma else []
        if "ROW_RESOLUTION" in changed:
            afresh.append("new rows at the new resolution (the open row keeps its timestamp)")
        log.warning(
            "settings changed since the checkpoint",
            changed=", ".join(f"{name} {then.get(name, '?')} -> {now[name]}" for name in changed),
            afresh="; ".join(afresh),
            continued="VWAP, the open row, the volume baseline" + ("" if sma else ", the SMA"),
        )

    async def before_subscribe(self) -> None:
        """Fill every ticker's gap (see the module docstring). Never raises except on cancel."""
        now_ms = int(self._now() * 1000)
        session_start = session_segment(now_ms)[0]
        first, self._first = self._first, False
        for ticker in sorted(self._sma_to_rebuild) if first else ():
            await self._rebuild_sma(ticker, now_ms)
        if session_start < exchange_day(now_ms)[0]:  # after midnight, before 04:00: nothing of today
            self._restart_from.clear()
            return
        for ticker in self._pipeline.builders:
            start: int | None
            if first and ticker in self._restart_from:
                start, cause = self._restart_from.pop(ticker), "restart"
            elif first:
                start, cause = session_start, "restart"  # cold: the session so far is a gap
            else:
                start, cause = self._receiving_until(), self._end_cause()
            if start is None:
                continue
            if start < session_start:  # streaming stopped in an earlier session (e.g. at the close)
                start = session_start
                if now_ms - start < _MINUTE_MS:
                    continue  # (re)starting at the session's start is no gap
            if start >= now_ms or not _overlaps_regular_hours(start, now_ms, self._trading_day):
                continue
            try:
                async with asyncio.timeout(_FILL_TIMEOUT_S):
                    await self._fill(ticker, start, now_ms, cause)  # type: ignore[arg-type]
            except Exception as exc:  # best effort: the stream must go on
                log.warning(
                    "gap not filled", ticker=ticker, error=f"{type(exc).__name__}: {exc}", cause=cause
                )

    async def _fill(self, ticker: str, start_ms: int, now_ms: int, cause: GapCause) -> None:
        builder = self._pipeline.builders[ticker]
        today = exchange_day(now_ms)
        session_start = session_segment(now_ms)[0]
        current_minute = now_ms - now_ms % _MINUTE_MS
        merger_state = self._merger.state(ticker)
        known_total = merger_state["total_volume"] if merger_state else None
        source = "checkpoint" if known_total is not None else "cold"
        if builder.last_ms is None or builder.last_ms < today[0]:
            source = await self._replay_recorded(ticker, session_start, now_ms) or source
        last_ms = builder.last_ms if builder.last_ms is not None and builder.last_ms >= today[0] else None
        last_minute = last_ms - last_ms % _MINUTE_MS if last_ms is not None else session_start - _MINUTE_MS

        if source == "sink rows" and last_ms is not None:
            start_ms = max(start_ms, last_ms)  # recorded up to there (by an earlier run)

        candles: list[Candle] | None = None
        if self._fetch_candles is not None and (known_total is None or last_minute < current_minute):
            fetch_from = today[0] if known_total is None else max(last_minute, today[0])
            try:
                candles = await self._fetch_candles(ticker, fetch_from, now_ms)
            except PriceHistoryUnavailable as exc:
                log.warning("price history unavailable: gap not backfilled", ticker=ticker, error=str(exc))

        rows, credited = 0, 0
        if candles is not None:
            for candle in candles:
                if candle.minute_ms >= current_minute or candle.volume <= 0:
                    continue
                if candle.minute_ms == last_minute and last_ms is not None:
                    streamed = builder.minute_volume if builder.minute_ms == last_minute else 0
                    rest = candle.volume - streamed  # the minute's trades after the last one streamed
                    if rest > 0:
                        self._pipeline.backfill(Tick(ticker, _dt(last_ms), candle.close, rest))
                        credited += rest
                elif candle.minute_ms > last_minute and candle.minute_ms >= session_start:
                    self._pipeline.backfill(Tick(ticker, _dt(candle.minute_ms), candle.close, candle.volume))
                    credited += candle.volume
                    rows += 1
        if known_total is not None:
            expected: int | None = known_total + credited
        elif candles is not None:
            expected = sum(c.volume for c in candles if c.minute_ms < current_minute)
            source = f"{source}+price history"
        else:
            expected = None

        gap = GapRow(ticker, _dt(start_ms), _dt(now_ms), cause, rows, None, self._options_missed)
        self._record(gap)
        if expected is not None:

            def closed(_symbol: str, rise: int, at_ms: int) -> None:  # the first TOTAL_VOLUME
                self._record(replace(gap, ended_at=_dt(max(at_ms, start_ms)), volume_missing=rise))

            self._merger.expect_total(ticker, expected, closed)
        log.info(
            "gap filled" if rows or credited else "gap recorded",
            ticker=ticker,
            cause=cause,
            started_at=_iso(start_ms),
            seconds=round((now_ms - start_ms) / 1000, 1),
            backfilled_rows=rows,
            backfilled_shares=credited,
            state_from=source,
        )

    async def _rebuild_sma(self, ticker: str, now_ms: int) -> None:
        """Rebuild `ticker`'s SMA from the rows recorded today; if they cannot be read, it stays
        empty (logged). Never raises except on cancel."""
        self._sma_to_rebuild.discard(ticker)
        if self._recorded_rows is None:
            return
        try:
            async with asyncio.timeout(_FILL_TIMEOUT_S):
                recorded = await self._recorded_rows(ticker, _dt(exchange_day(now_ms)[0]), _dt(now_ms + 1))
        except Exception as exc:
            log.warning(
                "today's rows cannot be read: the SMA starts empty",
                ticker=ticker,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self._pipeline.builders[ticker].rebuild_sma(equity for equity, _ in recorded)
        log.debug("SMA rebuilt from the recorded rows", ticker=ticker, rows=len(recorded))

    async def _replay_recorded(self, ticker: str, since_ms: int, now_ms: int) -> str | None:
        """Rebuild `ticker`'s builder from the sink's rows of the session; return "sink rows" if any."""
        if self._recorded_rows is None:
            return None
        try:
            recorded = await self._recorded_rows(ticker, _dt(since_ms), _dt(now_ms))
        except Exception as exc:  # the sink is down or not open yet: price history alone then
            log.warning(
                "the sink's rows of the session cannot be read; rebuilding from price history",
                ticker=ticker,
                error=f"{type(exc).__name__}: {exc}",
            )
            return None
        if not recorded:
            return None
        self._pipeline.builders[ticker].replay(recorded)
        return "sink rows"

    def _record(self, gap: GapRow) -> None:
        self.gaps = [g for g in self.gaps[-_KEEP_GAPS:] if g.key != gap.key] + [gap]
        self._add_gap(gap)


def _overlaps_regular_hours(
    start_ms: int, end_ms: int, trading_day: Callable[[date], bool] | None = None
) -> bool:
    """Whether [start, end) overlaps 09:30-16:00 New York time of some date (of a trading day, with
    `trading_day`): gaps outside it (quiet nights, weekends and holidays when streaming around the
    clock) are not recorded. With the market calendar on, the service streams in sessions only, so
    weekends and holidays never come here."""
    day_start = exchange_day(start_ms)[0]
    while day_start < end_ms:
        day = datetime.fromtimestamp(day_start / 1000 + 43_200, EXCHANGE_TZ).date()  # noon: that date
        if trading_day is not None and not trading_day(day):
            day_start = exchange_day(day_start)[1]
            continue
        opens = datetime.combine(day, REGULAR_OPEN, EXCHANGE_TZ).timestamp() * 1000
        closes = datetime.combine(day, _REGULAR_CLOSE, EXCHANGE_TZ).timestamp() * 1000
        if start_ms < closes and end_ms > opens:
            return True
        day_start = exchange_day(day_start)[1]
    return False


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _iso(epoch_ms: int) -> str:
    return _dt(epoch_ms).isoformat()
