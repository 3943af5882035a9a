"""The recovery planner: what to credit after the stream did not watch, as a pure function.

`plan_recovery(RecoveryInput) -> Plan` does no I/O and reads no clock: the same input always gives
the same plan, so it can be tested over random histories and re-run at will. It applies the volume
accounting rule of DESIGN.md for one ticker and one session:

- A *span* is time the stream did not watch: the day before the first frame of a first start, a
  gap between two connections, the part of a minute before a (re)subscription. A session minute a
  span overlaps is *touched*.
- Volume is settled per *unit*: the smallest stretch made of whole minutes and whole rows —
  1 minute for `ROW_RESOLUTION` 0 and any divisor of 60, else lcm(60 s, resolution) (300 s → 5
  minutes). A unit is *final* once the candle of each of its session minutes is (the minute ended
  `candle_lag_ms` before the candles were read; a final minute without a candle had no trades).
- A touched unit that is final is credited `Σ candle volume - Σ recorded volume` (spool, database
  and the builder's open row, each row's largest version), never less than 0, in one backfill row
  that carries the row's full totals: merged into the recorded row of that key if there is one.
  So recorded + credited never exceeds max(recorded, candles), never doubles, and equals the
  candles wherever they cover. Planning again after the backfill is applied credits nothing.
- A touched minute of a unit that is not final is *pending* (its candle, or a candle of its
  unit, has not closed: the minute under way always is); once `give_up_after_ms` passed since it
  could have been final, it is *abandoned*: the ledger reports it (the daily proof may fill it).
- The builder continues from `resume` when usable (exact), else from the recorded rows; a
  backfilled minute closes its SMA bar at the candle's close and joins VWAP at the candles' prices.

How the supervisor calls it, per ticker, applying each plan before its next `await`:
1. At start, before subscribing: resume = the checkpoint's builder state (ignored here if it is of
   another session or other settings); spans = [`start_span(...)`]: from the checkpoint's
   `receiving_until`, or from the session's open when it has none. The session is that of the
   day being recovered (from the calendar; after the close, today's, to fill the afternoon).
2. At every reconnect: append `UnwatchedSpan(last data frame, now, cause)` to the day's spans;
   resume = the live builder's state. When the first frame after a span arrives, the span's end
   may become that frame's time, and `total_volume_rise` is set if both frames are of the session.
3. Each time: recorded = every row of the touched units (at a start without a usable resume: of
   the whole session, VWAP is rebuilt from them) from the spool, the database and the writer's
   memory. If the database cannot be read, plan later: without its rows, shares would be credited
   twice. candles = one price-history answer covering those units (None if it failed; extended
   hours or not, only session minutes are read). Then upsert `plan.backfill` and `plan.ledger`
   and continue the builder from `plan.state` (it maps onto `RowBuilder.state()`).
4. While `plan.pending` is not empty, plan again at `plan.retry_at_ms` (then with backoff) with
   the same spans. The TOTAL_VOLUME stream itself counts deltas within one connection only: the
   first frame of every connection is a baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from streaming_service.indicators import MovingAverage, SessionVwap, session_segment
from streaming_service.models import EquityRow, GapCause, GapRow, IndicatorRow

__all__ = [
    "MINUTE_MS", "BuilderState", "CandleHistory", "MinuteCandle", "Plan", "PlanSettings", "RecordedRow",
    "RecoveryInput", "Row", "Session", "SmaState", "UnwatchedSpan", "VwapState",
    "plan_recovery", "start_span", "state_from_json", "state_to_json", "unit_ms",
]  # fmt: skip

MINUTE_MS = 60_000
#: A row already recorded (spool, database or the builder's open row) and its indicators, if known.
RecordedRow = tuple[EquityRow, IndicatorRow | None]
#: (sma, vwap) of a row; None: not enough data yet.
Indicators = tuple[float | None, float | None]
_ROW, _BAR, _CREDIT = 0, 1, 2  # kinds of events, in the order they are taken at equal times


@dataclass(frozen=True, slots=True)
class Session:
    """The session the service records, [open_ms, close_ms) in epoch ms, both on a minute."""

    open_ms: int
    close_ms: int


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """`row_resolution_s`, `sma_period`, `sma_bar_seconds`: as in `Settings`; `candle_lag_ms`: how
    long after its minute a candle is complete; `give_up_after_ms`: how long a pending minute waits
    for it; `options_missed`: options are streamed, so a span loses their quotes."""

    row_resolution_s: int
    sma_period: int = 9
    sma_bar_seconds: int = 60
    candle_lag_ms: int = 5_000
    give_up_after_ms: int = 6 * 60 * MINUTE_MS
    options_missed: bool = False


@dataclass(frozen=True, slots=True)
class UnwatchedSpan:
    """[start_ms, end_ms): the stream did not watch. `total_volume_rise`: TOTAL_VOLUME at the first
    frame after it minus at the last frame before, when both are of this session (else None)."""

    start_ms: int
    end_ms: int
    cause: GapCause
    total_volume_rise: int | None = None


@dataclass(frozen=True, slots=True)
class MinuteCandle:
    """One minute of price history from `minute_ms`: its last price and its shares."""

    minute_ms: int
    close: float
    volume: int


@dataclass(frozen=True, slots=True)
class CandleHistory:
    """One price-history answer for the minutes from `covers_from_ms`, read at `read_at_ms`."""

    covers_from_ms: int
    read_at_ms: int
    candles: tuple[MinuteCandle, ...]


@dataclass(frozen=True, slots=True)
class SmaState:
    """`MovingAverage.state()`: the forming bar's index and close, the closed bars' closes."""

    bar: int | None = None
    close: float = 0.0
    closed: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class VwapState:
    """`SessionVwap.state()`: the segment [start_ms, end_ms) and its Σ price·volume, Σ volume."""

    start_ms: int = 0
    end_ms: int = -1
    notional: float = 0.0
    volume: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """A row: its key (epoch ms), last price, shares and indicators (None: not known)."""

    timestamp_ms: int
    price: float
    volume: int
    sma: float | None = None
    vwap: float | None = None


@dataclass(frozen=True, slots=True)
class BuilderState:
    """What a row builder continues from, and the session and settings it was built with."""

    session_open_ms: int
    row_resolution_s: int
    sma_period: int
    sma_bar_seconds: int
    open_row: Row | None = None
    sma: SmaState = field(default_factory=SmaState)
    vwap: VwapState = field(default_factory=VwapState)
    last_trade_ms: int | None = None


@dataclass(frozen=True, slots=True)
class RecoveryInput:
    """Everything `plan_recovery` reads, for one ticker (see the module docstring)."""

    ticker: str
    now_ms: int
    session: Session
    settings: PlanSettings
    spans: tuple[UnwatchedSpan, ...]
    recorded: tuple[RecordedRow, ...] = ()
    candles: CandleHistory | None = None
    resume: BuilderState | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """`backfill`: rows to upsert, each with its full totals; `credited`: shares they add; `state`:
    what the builder continues from; `resumed`: whether `resume` was used; `pending`, `abandoned`:
    minutes (see the module docstring); `retry_at_ms`: when the first pending unit's candles are
    complete (None: nothing pending); `ledger`: one `stream_gaps` row per span in the session."""

    backfill: tuple[tuple[EquityRow, IndicatorRow], ...]
    credited: int
    state: BuilderState
    resumed: bool
    pending: tuple[int, ...]
    retry_at_ms: int | None
    abandoned: tuple[int, ...]
    ledger: tuple[GapRow, ...]


def start_span(resume: BuilderState | None, receiving_until_ms: int | None, session: Session,
               now_ms: int, settings: PlanSettings) -> UnwatchedSpan:  # fmt: skip
    """The span a start did not watch: since the checkpoint's `receiving_until_ms` if its state is
    usable (this session, these settings) and it has one, else since the session's open."""
    usable = _usable(resume, session, settings) and receiving_until_ms is not None
    start = receiving_until_ms if usable and receiving_until_ms is not None else session.open_ms
    return UnwatchedSpan(min(start, now_ms), now_ms, "restart")


def unit_ms(row_resolution_s: int) -> int:
    """The length of the units volume is settled in (module docstring): 60 s for a resolution of 0
    or a divisor of 60, else lcm(60 s, resolution). Raises `ValueError` for a negative resolution."""
    if row_resolution_s < 0:
        raise ValueError(f"row_resolution_s must be >= 0, not {row_resolution_s}")
    return math.lcm(MINUTE_MS, row_resolution_s * 1000) if row_resolution_s else MINUTE_MS


def state_to_json(state: BuilderState) -> dict[str, Any]:
    """`state` as JSON-compatible data (for a checkpoint); `state_from_json` reads it back."""
    return asdict(state)


def state_from_json(data: dict[str, Any]) -> BuilderState:
    """The `BuilderState` of `state_to_json(state)`. Raises `ValueError` if `data` is not one."""
    try:
        row = data["open_row"]
        return BuilderState(
            **{k: data[k] for k in ("session_open_ms", "row_resolution_s", "sma_period", "sma_bar_seconds")},
            open_row=None if row is None else Row(**row),
            sma=SmaState(data["sma"]["bar"], data["sma"]["close"], tuple(data["sma"]["closed"])),
            vwap=VwapState(**data["vwap"]),
            last_trade_ms=data["last_trade_ms"],
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a builder state: {exc}") from exc


def plan_recovery(inp: RecoveryInput) -> Plan:
    """The plan for `inp` (see the module docstring). Raises `ValueError` naming the first broken
    contract of `inp`."""
    _check(inp)
    s, session, history = inp.settings, inp.session, inp.candles
    res_ms = s.row_resolution_s * 1000
    unit_len = unit_ms(s.row_resolution_s)
    end = min(session.close_ms, inp.now_ms)
    clipped = (replace(p, start_ms=max(p.start_ms, session.open_ms), end_ms=min(p.end_ms, end))
               for p in inp.spans)  # fmt: skip
    spans = [span for span in clipped if span.start_ms < span.end_ms]
    same_session = inp.resume is not None and inp.resume.session_open_ms == session.open_ms
    open_row = inp.resume.open_row if inp.resume is not None and same_session else None
    rows = _merge(inp.recorded, open_row, session.open_ms - session.open_ms % unit_len, session.close_ms)
    candles = {c.minute_ms: c for c in history.candles if c.volume} if history else {}
    latest_final = min(history.read_at_ms, inp.now_ms) - MINUTE_MS - s.candle_lag_ms if history else 0

    def final(minute: int) -> bool:
        return history is not None and history.covers_from_ms <= minute <= latest_final

    def touching(start: int, stop: int) -> list[UnwatchedSpan]:
        return [span for span in spans if span.start_ms < stop and span.end_ms > start]

    touched = [m for m in range(session.open_ms, end, MINUTE_MS) if touching(m, m + MINUTE_MS)]
    units: dict[int, list[int]] = {}
    for minute in touched:
        units.setdefault(minute - minute % unit_len, []).append(minute)
    rows_of: dict[int, dict[int, Row]] = {unit: {} for unit in units}
    for key, row in rows.items():
        rows_of.get(key - key % unit_len, {})[key] = row
    credits: dict[int, _Credit] = {}
    settled: list[int] = []
    pending: list[int] = []
    abandoned: list[int] = []
    for unit, minutes in units.items():
        first, stop = max(unit, session.open_ms), min(unit + unit_len, session.close_ms)
        if all(final(m) for m in range(first, stop, MINUTE_MS)):
            settled += minutes
            traded = [candles[m] for m in range(first, stop, MINUTE_MS) if m in candles]
            credit = _credit(traded, minutes, rows_of[unit], touching(first, stop), first, res_ms)
            credits.update([credit] if credit else [])
        elif inp.now_ms >= stop + s.candle_lag_ms + s.give_up_after_ms:
            abandoned += minutes
        else:
            pending += minutes
    bars = [(m + MINUTE_MS - 1, candles[m].close) for m in touched if final(m) and m in candles]
    state, indicators = _continue(inp, rows, credits, bars)
    ledger = [_gap(inp, span, [m for m in touched if span.start_ms < m + MINUTE_MS and m < span.end_ms],
                   set(settled), set(pending), candles) for span in spans]  # fmt: skip
    backfill = tuple(
        (EquityRow(inp.ticker, _dt(k), round(c.price, 2), c.volume),
         IndicatorRow(inp.ticker, _dt(k), *(_round(v) for v in indicators[k])))
        for k, c in sorted(credits.items())
    )  # fmt: skip
    first_ready = min((min(m - m % unit_len + unit_len, session.close_ms) for m in pending), default=None)
    return Plan(
        backfill=backfill,
        credited=sum(c.shares for c in credits.values()),
        state=state,
        resumed=_usable(inp.resume, session, s),
        pending=tuple(pending),
        retry_at_ms=None if first_ready is None else first_ready + s.candle_lag_ms,
        abandoned=tuple(abandoned),
        ledger=tuple(ledger),
    )


@dataclass(frozen=True, slots=True)
class _Credit:
    """A backfill row: its last price and full volume, the shares credited, their average price."""

    price: float
    volume: int
    shares: int
    average: float


def _credit(traded: list[MinuteCandle], minutes: list[int], rows: dict[int, Row],
            spans: list[UnwatchedSpan], first: int, res_ms: int) -> tuple[int, _Credit] | None:  # fmt: skip
    """The backfill row (key, row) of a final unit, None if nothing is missing: `traded` its candles
    with shares, `minutes` its touched minutes, `rows` its recorded rows, `spans` those touching it.
    Shares: candles - recorded. Key: the row of the first unwatched instant, merged with a row
    recorded there. Last price: the unit's last candle's close if that minute's end was unwatched."""
    shares = sum(c.volume for c in traded) - sum(row.volume for row in rows.values())
    if shares <= 0:
        return None
    piece = max(first, min(span.start_ms for span in spans))
    key = piece - piece % res_ms if res_ms else piece
    last, row = traded[-1], rows.get(key, Row(key, traded[-1].close, 0))
    last_end = last.minute_ms + MINUTE_MS
    last_unwatched = any(span.start_ms < last_end <= span.end_ms for span in spans)
    unwatched = [c for c in traded if c.minute_ms in minutes] or traded  # their VWAP prices the shares
    average = sum(c.close * c.volume for c in unwatched) / sum(c.volume for c in unwatched)
    return key, _Credit(last.close if last_unwatched else row.price, row.volume + shares, shares, average)


def _usable(resume: BuilderState | None, session: Session, s: PlanSettings) -> bool:
    """Whether `resume` can be continued: this session and these settings (else it mixes states)."""
    made_with = (session.open_ms, s.row_resolution_s, s.sma_period, s.sma_bar_seconds)
    return resume is not None and made_with == (
        resume.session_open_ms, resume.row_resolution_s, resume.sma_period, resume.sma_bar_seconds
    )  # fmt: skip


def _merge(recorded: Sequence[RecordedRow], open_row: Row | None, first_ms: int, end_ms: int,
           ) -> dict[int, Row]:  # fmt: skip
    """Rows by key (epoch ms) in [first_ms, end_ms), the largest version of each: a row's volume
    only grows, so the largest is the latest."""
    versions = [Row(_ms(e.timestamp), e.price, e.volume, vwap=i.vwap if i else None) for e, i in recorded]
    merged: dict[int, Row] = {}
    for row in [*versions, open_row] if open_row else versions:
        key = row.timestamp_ms
        if first_ms <= key < end_ms and (key not in merged or row.volume > merged[key].volume):
            merged[key] = row
    return merged


def _continue(inp: RecoveryInput, rows: dict[int, Row], credits: dict[int, _Credit],
              bars: list[tuple[int, float]]) -> tuple[BuilderState, dict[int, Indicators]]:  # fmt: skip
    """The builder state after the credits, and the indicators of each credited row (those at its
    end, as if its shares had been streamed).

    The recorded rows (of the window read: those from the first unwatched unit on, or the whole
    session when starting cold) are replayed in time order with the credits and the candle closes
    of the settled minutes, from the state before the window: with a usable `resume`, its VWAP minus
    the window's rows and its SMA minus their bars; cold, nothing. A row adds to VWAP what its
    recorded VWAP says (else price x volume) and its price to the SMA; a credit adds its shares at
    its average price, and its price to the SMA; a candle close closes its minute. Then VWAP is
    exactly the resumed one plus the credits, and the open row the builder's (or a later credit)."""
    s = inp.settings
    res_ms, bar_ms = s.row_resolution_s * 1000, s.sma_bar_seconds * 1000
    base = inp.resume if _usable(inp.resume, inp.session, s) else None
    keys = sorted(rows)
    volume0, notional0, sma0 = 0, 0.0, SmaState()
    if base is not None:
        volume0 = max(0, base.vwap.volume - sum(rows[k].volume for k in keys))
        forming = base.sma.bar
        window_bars = {k // bar_ms for k in keys}
        if forming is not None and keys and forming >= keys[0] // bar_ms:  # the forming bar is in it
            earlier = len({b for b in window_bars if b < forming})
            sma0 = SmaState(None, 0.0, base.sma.closed[: max(0, len(base.sma.closed) - earlier)])
        else:
            sma0 = base.sma
    if base is None:
        increments = _notional_increments(rows, keys, 0, 0.0, res_ms == 0)
    else:  # the Σ before the window is what the rows leave of the resumed one
        increments = _notional_increments(rows, keys, volume0, None, res_ms == 0)
        notional0 = max(0.0, base.vwap.notional - sum(increments.values()))
    sma, vwap = MovingAverage(s.sma_period, s.sma_bar_seconds), SessionVwap()
    sma.restore({"bar": sma0.bar, "close": sma0.close, "closed": list(sma0.closed)})
    start, stop = session_segment(inp.session.open_ms)
    vwap.restore({"start": start, "end": stop, "notional": notional0, "volume": volume0})
    events = [(k, _ROW, rows[k].price, rows[k].volume) for k in keys]
    events += [(t, _BAR, price, 0) for t, price in bars]
    events += [(k, _CREDIT, c.price, c.shares) for k, c in credits.items()]
    now: Indicators = (None, (volume0 and notional0 / volume0) or None)
    ends = sorted((k + max(res_ms, 1), k) for k in credits)
    indicators: dict[int, Indicators] = {}
    for t, kind, price, volume in sorted(events):
        while ends and ends[0][0] <= t:
            indicators[ends.pop(0)[1]] = now
        average = vwap.update(t, 0.0, 0) if kind == _BAR else now[1]
        if kind == _ROW:
            segment = vwap.state()
            vwap.restore(
                {
                    **segment,
                    "notional": segment["notional"] + increments[t],
                    "volume": segment["volume"] + volume,
                }
            )
            average = vwap.update(t, 0.0, 0)
        elif kind == _CREDIT:
            average = vwap.update(t, credits[t].average, volume)
        now = (sma.update(t, price), average)
    indicators.update((k, now) for _, k in ends)
    last_trade = max([*keys, *credits], default=None)
    if base is not None:  # exact: the resumed VWAP and the credits' shares
        added = sum(c.average * c.shares for c in credits.values())
        segment = vwap.state()
        vwap.restore({**segment, "notional": base.vwap.notional + added,
                      "volume": base.vwap.volume + sum(c.shares for c in credits.values())})  # fmt: skip
        if base.last_trade_ms is not None:
            last_trade = max(base.last_trade_ms, last_trade or base.last_trade_ms)
    # the open row: the latest credit, or the builder's own (another recorded row later than it is
    # of a run whose clock went back: a later trade would be added to it), or cold, the latest row
    own = base.open_row.timestamp_ms if base is not None and base.open_row is not None else None
    totals = {k: (row.price, row.volume) for k, row in rows.items() if base is None or k == own}
    totals |= {k: (c.price, c.volume) for k, c in credits.items()}
    open_row = None
    if totals:
        key = max(totals)
        kept = base.open_row if base and base.open_row and base.open_row.timestamp_ms == key else None
        sma9, vwap9 = indicators.get(key, (kept.sma, kept.vwap) if kept else now)
        open_row = Row(key, totals[key][0], totals[key][1], sma9, vwap9)
    sma_state, segment = sma.state(), vwap.state()
    return BuilderState(
        inp.session.open_ms, s.row_resolution_s, s.sma_period, s.sma_bar_seconds, open_row,
        SmaState(sma_state["bar"], sma_state["close"], tuple(sma_state["closed"])),
        VwapState(segment["start"], segment["end"], segment["notional"], segment["volume"]),
        last_trade,
    ), indicators  # fmt: skip


def _notional_increments(rows: dict[int, Row], keys: list[int], volume0: int,
                         notional0: float | None, per_trade: bool) -> dict[int, float]:  # fmt: skip
    """What each row added to the session's Σ price·volume (`volume0` shares before the first).
    Forward from `notional0`: a row with a recorded VWAP up to the Σ it implies (its VWAP times the
    volume up to its end), else its price x volume. Without `notional0` (it is derived from the end
    instead): price x volume when each row is one trade time (`per_trade`), else the difference of
    the Σ two consecutive recorded VWAPs imply."""
    increments, volume = {}, volume0
    notional = notional0
    for key in keys:
        row = rows[key]
        volume += row.volume
        implied = None if row.vwap is None else row.vwap * volume
        if implied is not None and notional is not None and (notional0 is not None or not per_trade):
            increments[key] = implied - notional
        else:
            increments[key] = row.price * row.volume
        notional = implied if notional0 is None else (notional or 0.0) + increments[key]
    return increments


def _gap(inp: RecoveryInput, span: UnwatchedSpan, minutes: list[int], settled: set[int], pending: set[int],
         candles: dict[int, MinuteCandle]) -> GapRow:  # fmt: skip
    """The ledger row of one span: `equity_backfilled_rows` = its minutes settled from a candle with
    shares; `volume_missing` None while any is pending, 0 once all are settled, and with abandoned
    ones the TOTAL_VOLUME rise if none was settled (else unknown: None)."""
    backfilled = sum(1 for m in minutes if m in settled and m in candles)
    missing: int | None = None
    if not any(m in pending for m in minutes):
        if all(m in settled for m in minutes):
            missing = 0
        elif not any(m in settled for m in minutes):
            missing = span.total_volume_rise
    return GapRow(inp.ticker, _dt(span.start_ms), _dt(span.end_ms), span.cause, backfilled, missing,
                  inp.settings.options_missed)  # fmt: skip


def _check(inp: RecoveryInput) -> None:
    """Raise `ValueError` naming the first broken contract of `inp`."""
    s, session = inp.settings, inp.session
    if session.open_ms % MINUTE_MS or session.close_ms % MINUTE_MS or session.close_ms <= session.open_ms:
        raise ValueError(f"session {session}: open and close must be on a minute, open before close")
    if s.row_resolution_s < 0 or s.sma_period < 1 or s.sma_bar_seconds < 1:
        raise ValueError(f"{s}: row_resolution_s must be ≥ 0, sma_period and sma_bar_seconds ≥ 1")
    if s.candle_lag_ms < 0 or s.give_up_after_ms < 0:
        raise ValueError(f"{s}: candle_lag_ms and give_up_after_ms must be ≥ 0")
    for span in inp.spans:
        if span.end_ms < span.start_ms:
            raise ValueError(f"{span} ends before it starts; pass [start_ms, end_ms)")
    for equity, _ in inp.recorded:
        if equity.ticker != inp.ticker or equity.volume < 0:
            raise ValueError(f"recorded {equity} is not a row of {inp.ticker} with volume ≥ 0")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000 + 0.5)


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)
