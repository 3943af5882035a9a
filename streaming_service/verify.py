"""The daily proof: each session minute's recorded volume against Schwab's 1-minute price history.

`prove_day` is the whole rule, pure (no I/O, no clock): given one ticker's `equity_data` rows of
one regular session [open, close) and that session's minute candles, it returns the day's
`VolumeCheckRow`, the rows that fill the minutes nothing was recorded in, and the minutes that
still differ. `verify_day` is its I/O shell (read the rows and candles, write the fills and the
summary); `session_of` / `latest_session` find the session in the NYSE calendar; `latest_checks`
reads the stored summaries for /healthz; `summary_line` words one for a person.

The rule:

- A minute *matches* when the shares recorded in it (Σ `volume` of the rows stamped in it) equal
  its candle's volume exactly (no tolerance; a minute with neither rows nor candle matches). A
  bar vendor's candles can disagree with the consolidated stream by a few shares (the simulator's
  `candle_noise` does so on purpose): the summary reports differences, it asserts nothing.
- With ROW_RESOLUTION above 60 s, or one that does not divide 60, a row can cover parts of several
  minutes, so minutes are compared in *units*: lcm(60 s, resolution), aligned on the epoch (the
  row builder's buckets are) and cut at the session's bounds — 300 s compares 5-minute units. A
  unit's minutes match or differ together; `worst_minute` is then the unit's start. With 0 (a row
  per trade) and any divisor of 60, the unit is one minute.
- A unit without any recorded row whose candles hold shares is *missing*: it is filled with one
  row per candle, at the candle's minute start, with the candle's close and volume (no indicators
  row: the day's VWAP and SMA were computed live without those shares). A unit that holds some row
  but differs is reported, never changed: which of the two is right cannot be told from here.
- The summary describes the session after the fill: filled minutes count as recorded and
  matching, and `minutes_filled` says how many there were. Checking the same day again fills
  nothing and gives the same counts (with `minutes_filled` 0): the stored row is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from streaming_service.errors import StreamerError
from streaming_service.indicators import EXCHANGE_TZ
from streaming_service.models import Batch, EquityRow, VolumeCheckRow
from streaming_service.recovery import unit_ms

if TYPE_CHECKING:
    from streaming_service.market_hours import MarketHours
    from streaming_service.sinks.base import Sink
    from streaming_service.sources.price_history import Candle
    from streaming_service.spool import Spool

__all__ = [
    "CANDLE_LAG_S",
    "DayProof",
    "MinuteDiff",
    "NoCandles",
    "NoSession",
    "Session",
    "check_json",
    "differing_lines",
    "latest_checks",
    "latest_session",
    "prove_day",
    "session_of",
    "summary_line",
    "unit_ms",
    "verify_day",
]

MINUTE_MS = 60_000
#: How long after the close the last minute's candle is surely served; a session is checked no
#: earlier (Schwab serves a minute's candle a few seconds after it ends).
CANDLE_LAG_S = 60.0
#: The regular session assumed when the calendar does not cover a day.
DEFAULT_OPEN, DEFAULT_CLOSE = time(9, 30), time(16, 0)

#: A recorded row as `prove_day` takes it: an `EquityRow`, or (timestamp, volume).
Recorded = EquityRow | tuple[datetime, int]


@dataclass(frozen=True, slots=True)
class MinuteDiff:
    """A unit (one minute, or `minutes` of them; see the module docstring) from `start` whose
    `recorded` shares differ from its `candles` shares."""

    start: datetime
    minutes: int
    recorded: int
    candles: int

    @property
    def diff(self) -> int:
        """Recorded minus candle shares."""
        return self.recorded - self.candles


@dataclass(frozen=True, slots=True)
class DayProof:
    """What `prove_day` found: the summary row, the rows filling missing minutes (ascending), and
    the units that still differ (ascending)."""

    check: VolumeCheckRow
    fills: tuple[EquityRow, ...]
    differing: tuple[MinuteDiff, ...]


def prove_day(
    ticker: str,
    session_open: datetime,
    session_close: datetime,
    recorded: Iterable[Recorded],
    candles: Iterable[Candle],
    *,
    row_resolution_s: int,
    checked_at: datetime,
) -> DayProof:
    """The daily proof of `ticker`'s session [session_open, session_close) (see the module
    docstring). `recorded` and `candles` may hold rows and candles outside the session: they are
    ignored. Two candles of one minute: the last counts. Raises `ValueError` unless the bounds and
    `checked_at` are timezone-aware, the bounds on whole minutes and the session not empty."""
    for name, moment in (("session_open", session_open), ("session_close", session_close),
                         ("checked_at", checked_at)):  # fmt: skip
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"{name} {moment.isoformat()} has no timezone; pass aware datetimes")
    open_ms, close_ms = _ms(session_open), _ms(session_close)
    if open_ms % MINUTE_MS or close_ms % MINUTE_MS or close_ms <= open_ms:
        raise ValueError(
            f"the session [{session_open.isoformat()}, {session_close.isoformat()}) must start and end "
            "on whole minutes, the close after the open"
        )
    unit = unit_ms(row_resolution_s)

    def unit_of(ms: int) -> int:
        return max(open_ms, ms - ms % unit)

    candle_of: dict[int, Candle] = {}
    for candle in candles:
        minute = candle.minute_ms - candle.minute_ms % MINUTE_MS
        if open_ms <= minute < close_ms:
            candle_of[minute] = candle
    shares_recorded: dict[int, int] = {}
    for row in recorded:
        stamp, volume = (row.timestamp, row.volume) if isinstance(row, EquityRow) else row
        ms = _ms(stamp)
        if open_ms <= ms < close_ms:
            key = unit_of(ms)
            shares_recorded[key] = shares_recorded.get(key, 0) + volume
    shares_candles: dict[int, int] = {}
    for minute, candle in candle_of.items():
        shares_candles[unit_of(minute)] = shares_candles.get(unit_of(minute), 0) + candle.volume

    fills: list[EquityRow] = []
    differing: list[MinuteDiff] = []
    matching = 0
    start = open_ms
    while start < close_ms:
        end = min(start - start % unit + unit, close_ms)
        minutes = (end - start) // MINUTE_MS
        want = shares_candles.get(start, 0)
        if start not in shares_recorded and want:
            fills += [
                EquityRow(ticker, _time(minute), candle_of[minute].close, candle_of[minute].volume)
                for minute in range(start, end, MINUTE_MS)
                if minute in candle_of and candle_of[minute].volume
            ]
            shares_recorded[start] = want
        have = shares_recorded.get(start, 0)
        if have == want:
            matching += minutes
        else:
            differing.append(MinuteDiff(_time(start), minutes, have, want))
        start = end
    worst = max(differing, key=lambda d: abs(d.diff), default=None)  # the first of equals
    check = VolumeCheckRow(
        ticker=ticker,
        day=session_open.astimezone(EXCHANGE_TZ).date(),
        minutes_checked=(close_ms - open_ms) // MINUTE_MS,
        minutes_matching=matching,
        shares_recorded=sum(shares_recorded.values()),
        shares_candles=sum(shares_candles.values()),
        worst_minute=None if worst is None else worst.start,
        worst_minute_diff=None if worst is None else worst.diff,
        minutes_filled=len(fills),
        checked_at=checked_at.astimezone(UTC),
    )
    return DayProof(check, tuple(fills), tuple(differing))


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


# --- sessions ------------------------------------------------------------------------------------


class NoSession(StreamerError):
    """The day asked for has no regular session to check (a holiday, a weekend, not closed yet)."""


class NoCandles(StreamerError):
    """Price history has no candle for a session in which rows were recorded (Schwab keeps about
    48 days of minute history): nothing can be compared."""


@dataclass(frozen=True, slots=True)
class Session:
    """A regular session [open, close) (aware UTC) of exchange date `day`; `note` says, when set,
    that the calendar did not cover the day and 09:30-16:00 New York was assumed."""

    day: date
    open: datetime
    close: datetime
    note: str = ""


def session_of(day: date, hours: MarketHours | None) -> Session:
    """The regular session of exchange date `day`: from `hours` (the NYSE calendar: holidays, half
    days closing at 13:00) when its schedule covers `day`, else 09:30-16:00 on a weekday, with a
    `note` saying so. Raises `NoSession` for a day without one (the message names the fix)."""
    sessions = _sessions_by_day(hours)
    if sessions and min(sessions) <= day <= max(sessions):
        if day not in sessions:
            raise NoSession(f"{day} has no NYSE session (a holiday or a weekend): pick a trading day")
        opened, closed = sessions[day]
        return Session(day, _time(round(opened * 1000)), _time(round(closed * 1000)))
    if day.weekday() >= 5:
        raise NoSession(f"{day} is a {day:%A}: there is no session to check; pick a trading day")
    covered = f"covers {min(sessions)} to {max(sessions)}" if sessions else "is not available"
    note = (
        f"the NYSE calendar {covered}: assumed a full session 09:30-16:00 New York on {day} "
        "(on a holiday or a half day the minutes without candles are counted as they are)"
    )
    opened_at = datetime.combine(day, DEFAULT_OPEN, EXCHANGE_TZ).astimezone(UTC)
    closed_at = datetime.combine(day, DEFAULT_CLOSE, EXCHANGE_TZ).astimezone(UTC)
    return Session(day, opened_at, closed_at, note)


def latest_session(now: datetime, hours: MarketHours | None, *, lag_s: float = CANDLE_LAG_S) -> Session:
    """The latest session that closed at least `lag_s` before `now` (see `session_of`), looking
    back up to two weeks. Raises `NoSession` if there is none."""
    today = now.astimezone(EXCHANGE_TZ).date()
    for back in range(15):
        try:
            session = session_of(today - timedelta(days=back), hours)
        except NoSession:
            continue
        if session.close + timedelta(seconds=lag_s) <= now:
            return session
    raise NoSession(f"no session closed in the two weeks before {now.isoformat()}: pass --day YYYY-MM-DD")


def _sessions_by_day(hours: MarketHours | None) -> dict[date, tuple[float, float]]:
    if hours is None:
        return {}
    return {datetime.fromtimestamp(o, EXCHANGE_TZ).date(): (o, c) for o, c in hours.sessions}


# --- the I/O shell --------------------------------------------------------------------------------


async def verify_day(
    sink: Sink,
    client: Any,
    ticker: str,
    session: Session,
    *,
    row_resolution_s: int,
    spool: Spool | None = None,
    now: datetime | None = None,
    lag_s: float = CANDLE_LAG_S,
    write: bool = True,
) -> DayProof:
    """Prove `ticker`'s `session` (see the module docstring) and, with `write`, upsert the fills and
    the summary row into `sink` (an opened sink) in one batch; return the proof.

    Recorded rows are the sink's (`recorded_rows`) and, with `spool`, those still waiting there (a
    row in both: the spool's version): a minute whose rows wait in the spool is not missing.
    Candles: `minute_candles(client, ticker, ...)` over the session's minutes. Raises `NoSession`
    if `session` closed less than `lag_s` before `now` (default: the wall clock); `NoCandles` if
    price history has no candle for the session but rows were recorded; `AuthError` or
    `PriceHistoryUnavailable` from price history; `SinkError`s from the sink, `SpoolError`.
    Safe to run again (upserts; a second run fills nothing)."""
    from streaming_service.sources.price_history import minute_candles

    now = datetime.now(UTC) if now is None else now
    if now < session.close + timedelta(seconds=lag_s):
        raise NoSession(
            f"the session of {session.day} closes at {session.close.astimezone(EXCHANGE_TZ):%H:%M} "
            f"New York: check it at least {lag_s:g} s after the close, when price history has its "
            "last minute"
        )
    rows = {row.timestamp: row for row, _ in await sink.recorded_rows(ticker, session.open, session.close)}
    if spool is not None:
        waiting = await spool.recorded_rows(ticker, session.open, session.close)
        rows.update((row.timestamp, row) for row, _ in waiting)
    open_ms, close_ms = _ms(session.open), _ms(session.close)
    candles = await minute_candles(client, ticker, open_ms, close_ms - MINUTE_MS)
    if not candles and any(row.volume for row in rows.values()):
        raise NoCandles(
            f"{ticker}: price history has no minute candle for {session.day} although rows were recorded "
            "(Schwab keeps about 48 days of minute history): nothing to compare"
        )
    proof = prove_day(
        ticker, session.open, session.close, rows.values(), candles,
        row_resolution_s=row_resolution_s, checked_at=now,
    )  # fmt: skip
    if write:
        await sink.write(Batch(equity=proof.fills, checks=(proof.check,)))
    return proof


# --- reading and wording the summaries -----------------------------------------------------------


def check_json(check: VolumeCheckRow) -> dict[str, Any]:
    """A summary row as JSON takes it (dates and times ISO), with `all_match` and `line`
    (`summary_line`)."""
    return {
        "day": check.day.isoformat(),
        "minutes_checked": check.minutes_checked,
        "minutes_matching": check.minutes_matching,
        "shares_recorded": check.shares_recorded,
        "shares_candles": check.shares_candles,
        "worst_minute": None if check.worst_minute is None else check.worst_minute.isoformat(),
        "worst_minute_diff": check.worst_minute_diff,
        "minutes_filled": check.minutes_filled,
        "checked_at": check.checked_at.isoformat(),
        "all_match": check.minutes_matching == check.minutes_checked,
        "line": summary_line(check),
    }


async def latest_checks(sink: Sink) -> dict[str, dict[str, Any]]:
    """Each ticker's latest stored summary, by ticker, as `check_json` gives it (for /healthz):
    `{}` when the sink cannot read them (not one of this package's) or none is stored. One small
    query; raises the sink's `SinkUnavailable` / `SinkRejected`."""
    from streaming_service.sinks.base import VolumeChecksReader

    if not isinstance(sink, VolumeChecksReader):
        return {}
    return {check.ticker: check_json(check) for check in await sink.latest_volume_checks()}


def summary_line(check: VolumeCheckRow) -> str:
    """One line for a person: '2026-11-24: 389/390 minutes match, 12,345,678 of 12,345,700 shares
    recorded; worst 10:41 New York (-22 shares); 1 minute filled'."""
    line = (
        f"{check.day}: {check.minutes_matching}/{check.minutes_checked} minutes match, "
        f"{check.shares_recorded:,} of {check.shares_candles:,} shares recorded"
    )
    if check.worst_minute is not None and check.worst_minute_diff is not None:
        at = check.worst_minute.astimezone(EXCHANGE_TZ)
        line += f"; worst {at:%H:%M} New York ({check.worst_minute_diff:+,} shares)"
    if check.minutes_filled:
        line += f"; {check.minutes_filled} minute{'s' if check.minutes_filled != 1 else ''} filled"
    return line


def differing_lines(differing: Sequence[MinuteDiff], *, limit: int = 10) -> list[str]:
    """The first `limit` differing units, one line each, then how many more."""
    lines = []
    for diff in differing[:limit]:
        at = diff.start.astimezone(EXCHANGE_TZ)
        span = f"{at:%H:%M}" + (f" (+{diff.minutes - 1} min)" if diff.minutes > 1 else "")
        lines.append(f"{span}: recorded {diff.recorded:,}, candles {diff.candles:,} ({diff.diff:+,})")
    if len(differing) > limit:
        lines.append(f"… and {len(differing) - limit} more")
    return lines
