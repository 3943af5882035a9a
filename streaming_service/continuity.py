"""Continuity: after the stream did not watch, credit what it missed, exactly once.

The volume rule (DESIGN.md, "Volume accounting"): TOTAL_VOLUME counts only within one connection
(the first frame of every connection is a baseline: `QuoteMerger.new_connection`), and every span
the stream did not watch (the session before a first start, a restart, a reconnect, the part of a
minute before the first frame) is credited per minute from price history once the minute has
closed, as candle volume minus what is already recorded (spool and database), by the pure planner
`recovery.plan_recovery`. This module is its I/O shell, the recovery phase of the supervisor:

- `restore(checkpoint)` then `start()`: each ticker's builder continues from the checkpoint when it
  is of today's session and of the current settings (else it is rebuilt from the recorded rows; a
  warning names the setting that changed), with the spans the checkpoint still had pending, plus
  the start's span (since the checkpoint's `receiving_until`, else since the open). A start after
  the close fills the afternoon without waiting for a connection.
- `before_subscribe()` after every login: adds the span since the last data frame, which ends at
  the new connection's first frame (`on_baseline`), and plans at once if the rows can be read
  within 2 s. A cold builder (nothing read yet: the database is down) streams with NULL
  indicators, and the live trades of its first row interval are credited instead (a run before may
  have recorded that row), so no recorded row is ever overwritten by a smaller one.
- `run()` (a task) plans when a pending minute's candle is due or a failed pass is to be retried,
  until every span is settled, or given up on (`give_up_after_ms` and 3 failed reads:
  `volume_missing`). What is left of an earlier session is settled the same way.

A pass, per ticker: read price history first (its answer is as of then), then the sink's rows,
then inside `Batcher.hold()` (no commit, no deletion from the spool) the spool's rows, the open row
and the spool's buffer (a row the writer moved meanwhile makes it read the sink again), plan, and
apply without awaiting: backfill and `stream_gaps` rows to the writer; the builder continues from
the plan's state when it credited something. `checkpoint()` (committed with the rows) holds the
builders, the spans still pending and `receiving_until`. Only the session's minutes count: with
the calendar that session, else 09:30-16:00 of a trading day.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from streaming_service.errors import AuthError
from streaming_service.models import EquityRow, GapRow, IndicatorRow
from streaming_service.pipeline import Pipeline
from streaming_service.recovery import (
    MINUTE_MS,
    CandleHistory,
    MinuteCandle,
    PlanSettings,
    RecoveryInput,
    Session,
    UnwatchedSpan,
    plan_recovery,
    start_span,
    state_from_json,
    state_to_json,
    unit_ms,
)
from streaming_service.sources.merge import QuoteMerger
from streaming_service.sources.price_history import Candle, PriceHistoryUnavailable

if TYPE_CHECKING:
    from streaming_service.batcher import Batcher

__all__ = ["CHECKPOINT_VERSION", "Continuity"]

log = structlog.get_logger(__name__)
CHECKPOINT_VERSION = 2
_READ_TIMEOUT_S = 30.0  # one read of the sink, the spool or price history never takes longer
_POLL_S = 0.2  # how often `run()` looks whether a pass is due (no I/O unless one is)
_RETRY_MS = (15_000, 300_000)  # a pass that left minutes pending: again after 15 s, doubling to 5 min
_COLD_READ_S = 2.0  # a subscription waits this long at most for a cold start's plan
_READS = 3  # reads of the sink per pass (see `_read_and_apply`)
_ATTEMPTS_BEFORE_GIVING_UP = 3
_NEVER_MS = 10**15
_KEEP_GAPS = 100  # `gaps` keeps the latest ones (for /healthz, the demo and tests)

FetchCandles = Callable[[str, int, int], Awaitable[list[Candle]]]
RecordedRow = tuple[EquityRow, IndicatorRow | None]
ReadRows = Callable[[str, datetime, datetime], Awaitable[list[RecordedRow]]]


@dataclass(slots=True)
class _Ticker:
    """What recovery knows of one ticker: the spans not settled yet, of `session`."""

    session: Session | None = None
    spans: list[UnwatchedSpan] = field(default_factory=list)
    resumable: bool = False  # the builder's state is of `session` and the current settings
    awaiting_baseline: bool = False  # the last span ends at the next first frame
    due_ms: int | None = None  # plan from then on (exchange time); None: nothing to do
    attempts: int = 0  # passes since the last one that left nothing pending
    live_from_ms: int = 0  # live trades before this are credited instead (see `records`)


class Continuity:
    """See the module docstring. `now`: the exchange clock (epoch s); `receiving_until`: exchange
    time (ms) of the stream's last data frame, None before any; `end_cause`: why the stream's last
    connection ended; `session_of(now_ms)`: the session of that exchange date (None: no trading)."""

    def __init__(
        self,
        pipeline: Pipeline,
        merger: QuoteMerger,
        writer: Batcher,
        *,
        now: Callable[[], float],
        receiving_until: Callable[[], int | None],
        end_cause: Callable[[], str],
        fetch_candles: FetchCandles,
        read_rows: ReadRows,
        session_of: Callable[[int], Session | None],
        options_missed: bool,
        candle_lag_ms: int = 5_000,
        give_up_after_ms: int = 6 * 60 * MINUTE_MS,
    ) -> None:
        self._pipeline = pipeline
        self._writer = writer
        self._now = now
        self._receiving_until = receiving_until
        self._end_cause = end_cause
        self._fetch_candles = fetch_candles
        self._read_rows = read_rows
        self._session_of = session_of
        settings = pipeline.settings
        self._plan_settings = PlanSettings(
            row_resolution_s=settings["ROW_RESOLUTION"],
            sma_period=settings["SMA_PERIOD"],
            sma_bar_seconds=settings["SMA_BAR_SECONDS"],
            candle_lag_ms=candle_lag_ms,
            give_up_after_ms=give_up_after_ms,
            options_missed=options_missed,
        )
        self._tickers = {ticker: _Ticker() for ticker in pipeline.builders}
        self._earlier: dict[str, _Ticker] = {}  # what is left to settle of an earlier session
        #: the stream watched up to here (exchange ms): the service sets it at the calendar's close
        self.watched_until_ms = 0
        self._receiving_until_ms: int | None = None
        self.gaps: list[GapRow] = []  # recorded by this process, latest version of each
        merger.on_baseline = self.on_baseline
        self._merger = merger

    def _now_ms(self) -> int:
        return int(self._now() * 1000)

    def checkpoint(self) -> dict[str, Any]:
        """The state to commit with the rows (JSON-compatible); see the module docstring."""
        until = self._receiving_until()
        if until is not None:
            self._receiving_until_ms = until
        tickers = {}
        for ticker, known in self._tickers.items():
            session, builder = known.session, self._pipeline.builders[ticker]
            tickers[ticker] = {
                "session": None if session is None else [session.open_ms, session.close_ms],
                "builder": state_to_json(builder.state(session.open_ms))
                if session and known.resumable
                else None,
                "spans": [asdict(span) for span in known.spans],
            }
        return {
            "version": CHECKPOINT_VERSION,
            "settings": self._pipeline.settings,
            "receiving_until_ms": self._receiving_until_ms,
            "tickers": tickers,
        }

    def restore(self, saved: dict[str, Any] | None) -> list[str]:
        """Resume what `saved` holds of today's session; return the tickers whose builder continues
        (logged). Unusable parts are ignored: their session is rebuilt from the recorded rows."""
        now_ms = self._now_ms()
        if not saved or saved.get("version") != CHECKPOINT_VERSION:
            log.info(
                "no checkpoint to resume: starting cold", reason="none" if not saved else "other version"
            )
            return []
        until = saved.get("receiving_until_ms")
        if until is not None and until > now_ms:
            log.warning("the checkpoint is from the future (was the clock changed?): starting cold",
                        receiving_until=_iso(until))  # fmt: skip
            return []
        then, now = saved.get("settings") or {}, self._pipeline.settings
        changed = [
            f"{name} {then.get(name, '?')} -> {now[name]}" for name in now if then.get(name) != now[name]
        ]
        session = self._session_of(now_ms)
        resumed = []
        for ticker, data in (saved.get("tickers") or {}).items():
            known = self._tickers.get(ticker)
            if known is None or session is None or data.get("session") != [session.open_ms, session.close_ms]:
                continue
            try:
                spans = [UnwatchedSpan(**span) for span in data.get("spans") or []]
                state = state_from_json(data["builder"]) if data.get("builder") and not changed else None
            except (TypeError, ValueError) as exc:
                log.warning(
                    "checkpoint of a ticker is unusable: starting it cold", ticker=ticker, error=str(exc)
                )
                continue
            known.session, known.spans = session, spans
            known.due_ms = now_ms if spans else None
            if state is not None:
                self._pipeline.builders[ticker].continue_from(state)
                known.resumable = True
                resumed.append(ticker)
        self._receiving_until_ms = until if resumed else None
        if changed:
            log.warning("settings changed since the checkpoint: today's rows are read again to continue",
                        changed=", ".join(changed))  # fmt: skip
        log.info(
            "checkpoint resumed" if resumed else "checkpoint not resumed: starting cold",
            tickers=",".join(resumed) or None,
            receiving_until=None if until is None else _iso(until),
        )
        return resumed

    def start(self) -> None:
        """Add each ticker's start span: since the checkpoint's `receiving_until` if its builder
        continues, else since the session's open (see the module docstring). Call once, after
        `restore`: a start after the close fills the afternoon without waiting for a connection."""
        now_ms = self._now_ms()
        session = self._session_of(now_ms)
        for ticker, known in self._tickers.items():
            if session is None:
                continue
            if known.session != session:
                known.session, known.spans, known.resumable = session, [], False
            builder = self._pipeline.builders[ticker]
            builder.indicators_known = known.resumable
            resume = builder.state(session.open_ms) if known.resumable else None
            known.spans.append(
                start_span(resume, self._receiving_until_ms, session, now_ms, self._plan_settings)
            )
            known.awaiting_baseline, known.due_ms = True, now_ms

    async def before_subscribe(self) -> None:
        """Add the span each ticker was not watched, from its last data frame (or its session's
        open), to the coming first frame; a ticker without usable builder state then waits until
        its recorded rows were read and planned (see the module docstring)."""
        now_ms = self._now_ms()
        session = self._session_of(now_ms)
        self._merger.new_connection()
        last_frame = self._receiving_until()
        for ticker, known in list(self._tickers.items()):
            if known.session != session:  # a new session (the stream was down when it began)
                self._settle_later(ticker, known, last_frame, now_ms)
                self._tickers[ticker] = known = _Ticker(session)
                self._pipeline.builders[ticker].indicators_known = False
            if session is None:
                continue
            if not known.awaiting_baseline:  # else the span since then is still open
                since = last_frame if last_frame is not None else session.open_ms
                known.spans.append(UnwatchedSpan(min(since, now_ms), now_ms, self._end_cause()))  # type: ignore[arg-type]
            known.awaiting_baseline, known.due_ms = True, now_ms
        cold = [(t, known) for t, known in self._tickers.items() if known.session and not known.resumable]
        if cold:  # plan now if the recorded rows can be read at once: then no live trade is set aside
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_COLD_READ_S):
                    while not self._writer.sink_open.is_set():
                        if self._writer.stats.failing_since is not None:
                            return  # the database is down: stream, and plan once it answers
                        await asyncio.sleep(0.01)
                    await self._pass(cold)

    def _settle_later(self, ticker: str, known: _Ticker, last_frame: int | None, now_ms: int) -> None:
        """Keep what is left to settle of `known`'s session, an earlier one, for `run()`: its spans
        and the one since the stream last watched it (unless it watched it to the close)."""
        ended = known.session
        if ended is None:
            return
        if not known.awaiting_baseline:
            since = max(last_frame if last_frame is not None else ended.open_ms, self.watched_until_ms)
            if since < ended.close_ms:
                known.spans.append(UnwatchedSpan(since, now_ms, self._end_cause()))  # type: ignore[arg-type]
        if known.spans:
            self._earlier[ticker] = replace(known, resumable=False, awaiting_baseline=False, due_ms=now_ms)

    def on_baseline(self, ticker: str, at_ms: int, rise: int | None) -> None:
        """The first TOTAL_VOLUME of a connection came (`QuoteMerger.on_baseline`): the ticker's
        last span ends there."""
        known = self._tickers.get(ticker)
        if known is None or not known.awaiting_baseline or not known.spans:
            return
        known.awaiting_baseline = False
        resolution_ms = self._plan_settings.row_resolution_s * 1000
        if not known.resumable and resolution_ms:  # its row may be recorded already: credit it instead
            at_ms += -at_ms % resolution_ms
            known.live_from_ms = at_ms
        if known.session is not None and known.session == self._session_of(at_ms):
            last = known.spans[-1]
            known.spans[-1] = replace(last, end_ms=max(last.end_ms, at_ms), total_volume_rise=rise)
        known.due_ms = self._now_ms()

    def unsettled(self) -> int:
        """How many spans still have minutes to credit (or wait for their first frame), all tickers."""
        return sum(len(known.spans) for known in [*self._tickers.values(), *self._earlier.values()])

    def records(self, ticker: str, timestamp_ms: int) -> bool:
        """Whether a live trade of `ticker` at `timestamp_ms` makes a row: not one in the row
        interval of a cold start's first frame (a run before may have recorded that row: its trades
        are credited from price history instead)."""
        known = self._tickers.get(ticker)
        return known is None or timestamp_ms >= known.live_from_ms

    async def run(self) -> None:
        """Plan whatever is due, forever (see the module docstring). Never raises except on cancel."""
        while True:
            await asyncio.sleep(_POLL_S)
            now_ms = self._now_ms()
            for ticker, known in list(self._earlier.items()):
                if (known.due_ms or now_ms + 1) <= now_ms:
                    await self._pass([(ticker, known)])
                if not known.spans:
                    del self._earlier[ticker]
            due = [(t, known) for t, known in self._tickers.items() if (known.due_ms or now_ms + 1) <= now_ms]
            if due:
                await self._pass(due)

    async def _pass(self, tickers: list[tuple[str, _Ticker]]) -> bool:
        """Plan and apply `tickers` (module docstring); return whether every one was planned."""
        done = True
        for ticker, known in tickers:
            session = known.session
            if session is None or (known.resumable and not known.spans):
                known.due_ms = None
                continue
            unit = unit_ms(self._plan_settings.row_resolution_s)
            since = session.open_ms
            if known.resumable and self._is_current(session):
                first = min(span.start_ms for span in known.spans)
                since = max(since, first - first % unit)
            now_ms = self._now_ms()
            watched_all = all(max(s.start_ms, session.open_ms) >= min(s.end_ms, session.close_ms, now_ms)
                              for s in known.spans)  # fmt: skip
            candles = None if watched_all else await self._candles(ticker, since, known)
            try:
                async with asyncio.timeout(_READ_TIMEOUT_S):
                    await self._read_and_apply(ticker, known, session, since, candles)
            except Exception as exc:  # the sink or the spool cannot be read: plan later
                done = False
                self._retry_later(known, self._now_ms())
                if isinstance(exc, ValueError):  # the planner refused its input
                    log.error("recovery cannot plan (a bug: please report it)", ticker=ticker, error=str(exc))
                elif known.attempts == 1:  # once per outage: the writer says what the database answers
                    log.warning("recorded rows cannot be read; recovery is retried until they can",
                                ticker=ticker, error=type(exc).__name__)  # fmt: skip
        return done

    async def _read_and_apply(self, ticker: str, known: _Ticker, session: Session, since_ms: int,
                              candles: CandleHistory | None) -> None:  # fmt: skip
        """Read what is recorded from `since_ms` (the sink's rows, then inside `Batcher.hold()` the
        spool's and the open row), plan and apply. A row the writer moved from the spool to the sink
        between the two reads would be in neither: then the sink is read again, the last time while
        holding the writer."""
        since, until = _dt(since_ms), _dt(min(session.close_ms, self._now_ms() + 1))  # none later
        for attempt in range(_READS):
            moved = self._writer.confirms
            written = [] if attempt == _READS - 1 else await self._read_rows(ticker, since, until)
            async with self._writer.hold():
                if attempt == _READS - 1:
                    written = await self._read_rows(ticker, since, until)
                elif self._writer.confirms != moved:
                    continue
                waiting = await self._writer.spool.recorded_rows(ticker, since, until)
                for pair in self._pipeline.builders[ticker].drain():  # the open row, as recorded
                    self._writer.add(pair)
                waiting += self._writer.spool.buffered_rows(ticker, since, until)
                self._apply(ticker, known, session, written + waiting, candles)
                return

    async def _candles(self, ticker: str, since: int, known: _Ticker) -> CandleHistory | None:
        """Price history from `since` to now; None if it cannot be read now (logged)."""
        read_at = self._now_ms()
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                candles = await self._fetch_candles(ticker, since, read_at)
        except (PriceHistoryUnavailable, AuthError, TimeoutError) as exc:
            if not known.attempts:
                log.warning("price history unavailable: retried later", ticker=ticker, error=str(exc))
            return None
        minutes = tuple(MinuteCandle(c.minute_ms, c.close, c.volume) for c in candles)
        return CandleHistory(since, read_at, minutes)

    def _apply(self, ticker: str, known: _Ticker, session: Session, recorded: list[RecordedRow],
               candles: CandleHistory | None) -> None:  # fmt: skip
        """Plan and apply, without awaiting (module docstring)."""
        now_ms = self._now_ms()
        builder = self._pipeline.builders[ticker]
        current = self._is_current(session)  # else the builder is on a later session already
        resume = builder.state(session.open_ms) if known.resumable and current else None
        settings = self._plan_settings  # a minute is given up on after a few failed reads, not at once
        if known.attempts < _ATTEMPTS_BEFORE_GIVING_UP:
            settings = replace(settings, give_up_after_ms=_NEVER_MS)
        plan = plan_recovery(RecoveryInput(
            ticker, now_ms, session, settings, tuple(known.spans), tuple(recorded), candles, resume
        ))  # fmt: skip
        for pair in plan.backfill:
            self._writer.add(pair)
        for gap in plan.ledger:
            self._record(gap)
        if current and (plan.backfill or resume is None):  # else the builder is as the plan left it
            builder.continue_from(plan.state)
            known.resumable = True
        pending = plan.pending
        keep = [s for s in known.spans if any(s.start_ms < m + MINUTE_MS and m < s.end_ms for m in pending)]
        if known.awaiting_baseline and known.spans and (not keep or keep[-1] != known.spans[-1]):
            keep.append(known.spans[-1])  # its end is not known yet
        known.spans = keep
        if pending:
            self._retry_later(known, now_ms, plan.retry_at_ms)
        else:
            known.due_ms, known.attempts = None, 0
        if plan.backfill or plan.abandoned:
            log.info(
                "gap filled from price history",
                ticker=ticker,
                backfilled_rows=len(plan.backfill),
                backfilled_shares=plan.credited,
                minutes_pending=len(pending),
                minutes_given_up=len(plan.abandoned),
                builder_from="checkpoint" if plan.resumed else "recorded rows",
            )

    def _is_current(self, session: Session) -> bool:
        """Whether `session` is today's (the builders are of today's)."""
        return session == self._session_of(self._now_ms())

    def _retry_later(self, known: _Ticker, now_ms: int, not_before_ms: int | None = None) -> None:
        backoff = min(_RETRY_MS[0] * 2 ** min(known.attempts, 10), _RETRY_MS[1])
        known.attempts += 1
        known.due_ms = max(now_ms + backoff, not_before_ms or 0)


    def _record(self, gap: GapRow) -> None:
        self.gaps = [g for g in self.gaps[-_KEEP_GAPS:] if g.key != gap.key] + [gap]
        self._writer.add_gap(gap)


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _iso(epoch_ms: int) -> str:
    return _dt(epoch_ms).isoformat()
