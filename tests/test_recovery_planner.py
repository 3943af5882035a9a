"""The recovery planner (`streaming_service.recovery`) over random histories, and the defects of
issue 21 as the planner sees them.

A *world* is one session of random trades (the truth), random spans the stream did not watch, the
rows the watched trades made at a random `ROW_RESOLUTION` (each row in the spool, the database or
both, the database sometimes with an older, smaller version of it), and the candles price history
would serve at a random time with a random lag (or none: price history failed). The properties are
checked per accounting unit (a minute; 5 minutes at `ROW_RESOLUTION` 300): never negative, never
double, exact wherever the candles cover, pending exactly the touched units not final yet, and
planning again after the plan is applied credits nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming_service.models import EquityRow, IndicatorRow
from streaming_service.recovery import (
    MINUTE_MS,
    BuilderState,
    CandleHistory,
    MinuteCandle,
    Plan,
    PlanSettings,
    RecordedRow,
    RecoveryInput,
    Row,
    Session,
    UnwatchedSpan,
    plan_recovery,
    start_span,
)

TICKER = "QQQ"
OPEN = int(datetime(2025, 6, 2, 13, 30, tzinfo=UTC).timestamp() * 1000)  # 09:30 New York
SECOND = 1000
NEVER = 10**12  # give_up_after_ms: no minute is abandoned


def at(hhmm: str, seconds: float = 0) -> int:
    """Epoch ms of `hhmm` New York time on the test's date, plus `seconds`."""
    hours, minutes = (int(part) for part in hhmm.split(":"))
    return OPEN + ((hours - 9) * 60 + minutes - 30) * MINUTE_MS + int(seconds * SECOND)


@dataclass(frozen=True)
class Trade:
    ms: int
    price: float
    volume: int


@dataclass(frozen=True)
class World:
    resolution: int
    session: Session
    now: int
    trades: tuple[Trade, ...]  # the truth, all before `now`
    spans: tuple[UnwatchedSpan, ...]
    recorded: tuple[RecordedRow, ...]
    candles: CandleHistory | None
    lag: int
    resume: BuilderState | None

    @property
    def unit_ms(self) -> int:
        return math.lcm(MINUTE_MS, self.resolution * 1000) if self.resolution else MINUTE_MS

    def unit(self, ms: int) -> int:
        return ms - ms % self.unit_ms

    def plan_input(self, **changes: object) -> RecoveryInput:
        base = RecoveryInput(
            TICKER, self.now, self.session, PlanSettings(self.resolution, candle_lag_ms=self.lag,
                                                         give_up_after_ms=NEVER),
            self.spans, self.recorded, self.candles, self.resume,
        )  # fmt: skip
        return replace(base, **changes)  # type: ignore[arg-type]

    def touched(self) -> list[int]:
        end = min(self.session.close_ms, self.now)
        return [m for m in range(self.session.open_ms, end, MINUTE_MS)
                if any(s.start_ms < m + MINUTE_MS and s.end_ms > m for s in self.spans)]  # fmt: skip

    def unit_final(self, unit: int) -> bool:
        c = self.candles
        if c is None:
            return False
        first, stop = max(unit, self.session.open_ms), min(unit + self.unit_ms, self.session.close_ms)
        last_final = min(c.read_at_ms, self.now) - MINUTE_MS - self.lag
        return all(c.covers_from_ms <= m <= last_final for m in range(first, stop, MINUTE_MS))


def unwatched(spans: tuple[UnwatchedSpan, ...], ms: int) -> bool:
    return any(s.start_ms <= ms < s.end_ms for s in spans)


def rows_of(trades: list[Trade], resolution: int) -> dict[int, tuple[float, int]]:
    """Rows (key → last price, volume) the trades make at `resolution`, as the row builder does."""
    rows: dict[int, tuple[float, int]] = {}
    for t in sorted(trades, key=lambda t: t.ms):
        key = t.ms - t.ms % (resolution * 1000) if resolution else t.ms
        rows[key] = (t.price, rows.get(key, (0.0, 0))[1] + t.volume)
    return rows


def dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def pair(ms: int, price: float, volume: int) -> RecordedRow:
    """A recorded row and its indicators row (values not needed here)."""
    return EquityRow(TICKER, dt(ms), price, volume), IndicatorRow(TICKER, dt(ms), None, None)


def key_ms(row: EquityRow) -> int:
    return int(row.timestamp.timestamp() * 1000 + 0.5)


def merged(recorded: tuple[RecordedRow, ...] | list[RecordedRow]) -> dict[int, int]:
    """Recorded volume by key: the largest version of each row (what the database ends up with)."""
    volumes: dict[int, int] = {}
    for equity, _ in recorded:
        volumes[key_ms(equity)] = max(volumes.get(key_ms(equity), 0), equity.volume)
    return volumes


def candle_volumes(world: World) -> dict[int, int]:
    return {c.minute_ms: c.volume for c in world.candles.candles} if world.candles else {}


@st.composite
def worlds(draw: st.DrawFn, *, agreeing: bool = True) -> World:
    resolution = draw(st.sampled_from([0, 1, 60, 300]))
    minutes = draw(st.integers(3, 40))
    session = Session(OPEN, OPEN + minutes * MINUTE_MS)
    now = draw(st.integers(OPEN + 1, session.close_ms + 3 * MINUTE_MS))
    price = 100.0
    trades = []
    for minute in range(OPEN, min(now, session.close_ms), MINUTE_MS):
        for offset, volume in draw(st.lists(st.tuples(st.integers(0, MINUTE_MS - 1), st.integers(1, 900)),
                                            max_size=4)):  # fmt: skip
            price = round(price + draw(st.integers(-20, 20)) / 100, 2)
            if minute + offset < now:
                trades.append(Trade(minute + offset, price, volume))
    points = sorted(draw(st.lists(st.integers(OPEN - 2 * MINUTE_MS, now - 1), max_size=6, unique=True)))
    if len(points) % 2:
        points.append(now)  # the last span runs up to now: planning at a (re)subscription
    spans = tuple(UnwatchedSpan(a, b, "disconnect") for a, b in zip(points[::2], points[1::2], strict=True))
    full = rows_of([t for t in trades if not unwatched(spans, t.ms)], resolution)
    recorded: list[RecordedRow] = []
    for key, (last, volume) in full.items():
        place = draw(st.sampled_from(["db", "spool", "both", "spool+old db"]))
        if place != "db":
            recorded.append(pair(key, last, volume))
        if place in ("db", "both"):
            recorded.append(pair(key, last, volume))
        if place == "spool+old db" and volume > 1:
            recorded.append(pair(key, last, draw(st.integers(1, volume - 1))))
    recorded = draw(st.permutations(recorded))
    lag = draw(st.sampled_from([0, 2 * SECOND, 5 * SECOND, 30 * SECOND]))
    candles = None
    if draw(st.sampled_from(["answered"] * 9 + ["failed"])) == "answered":  # one in ten: it failed
        read_at = draw(st.integers(max(OPEN, now - 2 * MINUTE_MS), now))
        covers_from = draw(st.sampled_from([OPEN] * 4 + [draw(st.integers(OPEN, now))]))
        truth: dict[int, list[Trade]] = {}
        for t in trades:
            truth.setdefault(t.ms - t.ms % MINUTE_MS, []).append(t)
        served = []
        for minute, its in sorted(truth.items()):
            if minute + MINUTE_MS + lag <= read_at:
                volume = sum(t.volume for t in its)
                if not agreeing:  # a bar vendor's count: a little off, sometimes missing
                    volume = max(0, volume + draw(st.integers(-volume // 2, volume // 2)))
                served.append(MinuteCandle(minute, its[-1].price, volume))
        candles = CandleHistory(covers_from, read_at, tuple(served))
    resume = None
    if full and draw(st.booleans()):  # the builder's open row, in the spool too
        key = max(full)
        resume = BuilderState(OPEN, resolution, 9, 60, Row(key, full[key][0], full[key][1]))
    return World(resolution, session, now, tuple(trades), spans, tuple(recorded), candles, lag, resume)


def after(world: World, plan: Plan) -> dict[int, int]:
    """Volume by key once the plan's backfill is upserted."""
    volumes = merged(world.recorded)
    if world.resume is not None and world.resume.open_row is not None:
        row = world.resume.open_row
        volumes[row.timestamp_ms] = max(volumes.get(row.timestamp_ms, 0), row.volume)
    for equity, _ in plan.backfill:
        volumes[key_ms(equity)] = equity.volume
    return volumes


def by_unit(world: World, volumes: dict[int, int]) -> dict[int, int]:
    units: dict[int, int] = {}
    for key, volume in volumes.items():
        units[world.unit(key)] = units.get(world.unit(key), 0) + volume
    return units


def apply(world: World, plan: Plan) -> World:
    """The world after the plan: its rows upserted, the builder continuing from its state."""
    return replace(world, recorded=world.recorded + plan.backfill, resume=plan.state)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(worlds())
def test_never_negative_never_double_and_exact_where_candles_cover(world: World) -> None:
    plan = plan_recovery(world.plan_input())
    before = merged(world.recorded)
    for equity, _ in plan.backfill:  # a row never shrinks: the upsert carries the full totals
        assert equity.volume > before.get(key_ms(equity), 0)
    assert len({key_ms(e) for e, _ in plan.backfill}) == len(plan.backfill), "two rows with one key"
    recorded_units, settled_units = by_unit(world, after(world, replace(plan, backfill=()))), by_unit(
        world, after(world, plan))  # fmt: skip
    truth: dict[int, int] = {}
    for t in world.trades:
        truth[world.unit(t.ms)] = truth.get(world.unit(t.ms), 0) + t.volume
    touched_units = {world.unit(m) for m in world.touched()}
    for unit in truth.keys() | settled_units.keys():
        recorded, now_holds = recorded_units.get(unit, 0), settled_units.get(unit, 0)
        assert now_holds >= recorded
        assert now_holds <= truth.get(unit, 0), f"unit {unit - OPEN} doubled"
        if unit in touched_units and world.unit_final(unit):
            assert now_holds == truth.get(unit, 0), f"unit {unit - OPEN} not settled to the truth"
        else:
            assert now_holds == recorded, f"unit {unit - OPEN} credited before it could be"
    assert plan.credited == sum(settled_units.values()) - sum(recorded_units.values())


@PROPERTY
@given(worlds())
def test_pending_is_exactly_the_touched_minutes_not_final_yet(world: World) -> None:
    plan = plan_recovery(world.plan_input())
    expected = [m for m in world.touched() if not world.unit_final(world.unit(m))]
    assert list(plan.pending) == expected
    assert plan.abandoned == ()
    if expected:
        assert plan.retry_at_ms is not None and plan.retry_at_ms > min(expected)
    minute_under_way = world.now - world.now % MINUTE_MS
    if minute_under_way in world.touched():
        assert minute_under_way in plan.pending
    assert len(plan.ledger) == sum(
        1 for s in world.spans if max(s.start_ms, OPEN) < min(s.end_ms, world.now, world.session.close_ms)
    )


@PROPERTY
@given(worlds(agreeing=False))
def test_candles_that_disagree_never_make_a_unit_negative_or_double(world: World) -> None:
    plan = plan_recovery(world.plan_input())
    recorded_units = by_unit(world, after(world, replace(plan, backfill=())))
    candles: dict[int, int] = {}
    for minute, volume in candle_volumes(world).items():
        candles[world.unit(minute)] = candles.get(world.unit(minute), 0) + volume
    for unit, now_holds in by_unit(world, after(world, plan)).items():
        recorded = recorded_units.get(unit, 0)
        assert recorded <= now_holds <= max(recorded, candles.get(unit, 0))


@PROPERTY
@given(worlds(agreeing=False), st.booleans())
def test_planning_again_after_the_plan_is_applied_credits_nothing(world: World, cold: bool) -> None:
    first = plan_recovery(world.plan_input())
    again = apply(world, first)
    second = plan_recovery(again.plan_input(resume=None if cold else again.resume))
    assert second.backfill == () and second.credited == 0
    assert second.pending == first.pending
    assert second.ledger == first.ledger
    if not cold:
        assert second.state.open_row == first.state.open_row
        assert second.state.vwap == first.state.vwap


@PROPERTY
@given(worlds())
def test_the_builder_continues_from_what_the_record_holds(world: World) -> None:
    plan = plan_recovery(world.plan_input(resume=None))
    holds = after(replace(world, resume=None), plan)
    state = plan.state
    assert state.vwap.volume == sum(holds.values())
    if holds:
        assert state.open_row is not None and state.open_row.timestamp_ms == max(holds)
        assert state.open_row.volume == holds[max(holds)]
        assert state.last_trade_ms is not None and state.last_trade_ms >= max(holds)
    else:
        assert state.open_row is None


# --- the defects of issue 21, as the planner sees them -------------------------------------------


def candles_until(read_at: int, volumes: dict[int, int], lag: int = 5 * SECOND) -> CandleHistory:
    """Price history read at `read_at`: the candles of `volumes` (minute → shares) closed by then."""
    served = tuple(MinuteCandle(m, 100.0 + (m - OPEN) / MINUTE_MS, v) for m, v in sorted(volumes.items())
                   if m + MINUTE_MS + lag <= read_at)  # fmt: skip
    return CandleHistory(OPEN, read_at, served)


def recorded_volume(recorded: tuple[RecordedRow, ...], start: int, stop: int) -> int:
    return sum(v for k, v in merged(recorded).items() if start <= k < stop)


def test_defect_1_a_first_start_at_0933_credits_the_session_from_candles_not_total_volume() -> None:
    """Before: with 1,000,000 pre-market shares in TOTAL_VOLUME, the first live row held them (Σ
    1,089,050 for 89,050 traded). Now: 09:30-09:32 come from candles, 09:33 waits for its candle,
    and the first frame is a baseline: no row anywhere near the pre-market's million."""
    truth = {at("9:30"): 30_000, at("9:31"): 25_000, at("9:32"): 20_000, at("9:33"): 14_050}
    session, now = Session(OPEN, at("16:00")), at("9:33", 20)
    span = start_span(None, None, session, now, PlanSettings(1))
    assert span == UnwatchedSpan(OPEN, now, "restart")
    inp = RecoveryInput(TICKER, now, session, PlanSettings(1), (span,), (), candles_until(now, truth))
    plan = plan_recovery(inp)
    assert [(key_ms(e), e.volume) for e, _ in plan.backfill] == [(m, truth[m]) for m in sorted(truth)[:3]]
    assert plan.pending == (at("9:33"),) and plan.retry_at_ms == at("9:34", 5)
    # the stream: its first frame (TOTAL_VOLUME 1,081,000) is a baseline; it sees 8,050 shares of 09:33
    live = (pair(at("9:33", 30), 101.0, 5_000), pair(at("9:33", 50), 101.5, 3_050))
    retry = replace(inp, now_ms=at("9:34", 6), recorded=live + plan.backfill, resume=plan.state,
                    candles=candles_until(at("9:34", 6), truth))  # fmt: skip
    second = plan_recovery(retry)
    assert second.credited == 6_000 and second.pending == ()
    assert recorded_volume(live + plan.backfill + second.backfill, OPEN, at("9:34")) == 89_050
    assert max(e.volume for e, _ in live + plan.backfill + second.backfill) < 1_000_000


def test_defect_2_a_subscription_just_after_the_open_credits_the_opening_cross() -> None:
    """Before: the first TOTAL_VOLUME after the gate opened at 09:30 was the baseline and the cross
    (a print before it) was never counted. Now the part of 09:30 before the first frame is a span."""
    truth = {at("9:30"): 400_000 + 7_000}  # the opening cross, then 7,000 shares watched
    session = Session(OPEN, at("16:00"))
    span = UnwatchedSpan(OPEN, at("9:30", 0.4), "restart")
    live = (pair(at("9:30"), 100.0, 7_000),)  # the open row of 09:30 at ROW_RESOLUTION 60
    inp = RecoveryInput(TICKER, at("9:31", 6), session, PlanSettings(60), (span,), live,
                        candles_until(at("9:31", 6), truth))  # fmt: skip
    plan = plan_recovery(inp)
    assert [(key_ms(e), e.volume) for e, _ in plan.backfill] == [(OPEN, 407_000)]
    assert plan.credited == 400_000


def test_defect_3_rows_still_in_the_spool_are_not_credited_again() -> None:
    """Before: a cold start rebuilt from the database only and backfilled over rows it did not see
    (+37-40 %). Now the rows of the spool count as recorded: credited only what neither holds."""
    truth = {at("9:30") + i * MINUTE_MS: 1_000 + i for i in range(15)}
    in_db = tuple(pair(m, 100.0, v) for m, v in truth.items() if m < at("9:40"))
    in_spool = tuple(pair(m, 100.0, v) for m, v in truth.items() if at("9:38") <= m < at("9:44"))
    now = at("9:45", 30)
    span = UnwatchedSpan(OPEN, now, "restart")
    inp = RecoveryInput(TICKER, now, Session(OPEN, at("16:00")), PlanSettings(60), (span,), in_db + in_spool,
                        candles_until(now, truth))  # fmt: skip
    plan = plan_recovery(inp)
    assert [(key_ms(e), e.volume) for e, _ in plan.backfill] == [(at("9:44"), truth[at("9:44")])]
    assert recorded_volume(inp.recorded + plan.backfill, OPEN, at("9:45")) == sum(truth.values())
    database_only = plan_recovery(replace(inp, recorded=in_db))  # what reading one of them credits
    assert database_only.credited == sum(truth[m] for m in truth if at("9:40") <= m < at("9:45"))


def test_defect_4_and_9_a_checkpoint_is_resumed_only_when_it_can_be() -> None:
    """A checkpoint without `receiving_until` (written before the first frame) or one made with other
    settings starts from the session's open; its rows still count as recorded, so nothing doubles."""
    session, now = Session(OPEN, at("16:00")), at("10:00", 30)
    saved = BuilderState(OPEN, 60, 9, 60, Row(at("9:59"), 100.0, 500))
    assert start_span(saved, None, session, now, PlanSettings(60)).start_ms == OPEN
    assert start_span(saved, at("9:59", 40), session, now, PlanSettings(60)).start_ms == at("9:59", 40)
    assert start_span(saved, at("9:59", 40), session, now, PlanSettings(1)).start_ms == OPEN  # defect 9
    inp = RecoveryInput(TICKER, now, session, PlanSettings(1), (UnwatchedSpan(OPEN, now, "restart"),),
                        (), candles_until(now, {at("9:59"): 500}), saved)  # fmt: skip
    plan = plan_recovery(inp)
    assert not plan.resumed and plan.credited == 0 and plan.state.row_resolution_s == 1


def test_defect_5_a_cold_start_inside_the_last_recorded_minute_counts_it_once() -> None:
    """Before: 126 shares recorded for a minute of 50. Now: the minute waits for its candle and is
    credited the candle minus what both runs recorded in it."""
    session = Session(OPEN, at("16:00"))
    before_crash = (pair(at("10:05", 2), 100.0, 12), pair(at("10:05", 15), 100.1, 8))  # 20 shares
    start = at("10:05", 40)
    span = UnwatchedSpan(at("10:05", 20), start, "restart")
    inp = RecoveryInput(TICKER, start, session, PlanSettings(1), (span,), before_crash,
                        candles_until(start, {at("10:05"): 50}))  # fmt: skip
    plan = plan_recovery(inp)
    assert plan.backfill == () and plan.pending == (at("10:05"),)
    live = (pair(at("10:05", 45), 100.2, 18),)  # the first frame was a baseline: 12 shares unseen
    retry = replace(inp, now_ms=at("10:06", 6), recorded=before_crash + live, resume=plan.state,
                    candles=candles_until(at("10:06", 6), {at("10:05"): 50}))  # fmt: skip
    second = plan_recovery(retry)
    assert second.credited == 12 and second.pending == ()
    assert recorded_volume(retry.recorded + second.backfill, at("10:05"), at("10:06")) == 50


def test_defect_6_row_resolution_300_merges_the_credit_into_the_partly_recorded_row() -> None:
    """Before: the replay at ROW_RESOLUTION 300 counted 9,500 shares for 5,500. Now the 5-minute row
    the previous run recorded in part gets the rest, under the same key."""
    shares = [1_000, 1_000, 1_500, 1_000, 1_000, 700, 300, 100]  # 10:00 to 10:07: 5,500 in the first row
    truth = {at("10:00") + i * MINUTE_MS: volume for i, volume in enumerate(shares)}
    recorded = (pair(at("10:00"), 100.0, 2_000),)  # 10:00:00-10:02:30, then the process died
    now = at("10:07", 10)
    span = UnwatchedSpan(at("10:02", 30), now, "restart")
    inp = RecoveryInput(TICKER, now, Session(OPEN, at("16:00")), PlanSettings(300), (span,), recorded,
                        candles_until(now, truth))  # fmt: skip
    plan = plan_recovery(inp)
    assert [(key_ms(e), e.volume) for e, _ in plan.backfill] == [(at("10:00"), 5_500)]
    assert plan.pending == (at("10:05"), at("10:06"), at("10:07")) and plan.retry_at_ms == at("10:10", 5)
    assert plan.state.open_row is not None
    assert (plan.state.open_row.timestamp_ms, plan.state.open_row.volume) == (at("10:00"), 5_500)


def test_indicators_go_on_through_backfilled_minutes() -> None:
    """A first start at 09:40:30 with nothing recorded: each backfill row's VWAP is the candles' up to
    it and SMA9 starts at the 9th minute; after a gap from 09:40:30 to 09:43:20, resumed from that
    state, they go on as if the minutes had been streamed (each minute one trade at its close)."""
    closes = [100.0, 101.0, 99.5, 102.0, 103.5, 101.0, 100.5, 104.0, 105.0, 103.0, 102.5, 106.0, 104.5]
    volumes = [1_000 + 100 * i for i in range(len(closes))]
    minutes = [OPEN + i * MINUTE_MS for i in range(len(closes))]
    served = tuple(MinuteCandle(*candle) for candle in zip(minutes, closes, volumes, strict=True))
    history = CandleHistory(OPEN, at("9:43", 20), served)
    session, start = Session(OPEN, at("16:00")), at("9:40", 30)

    def vwap(n: int) -> float:
        return round(sum(c * v for c, v in zip(closes[:n], volumes[:n], strict=True)) / sum(volumes[:n]), 2)

    def sma9(n: int) -> float | None:
        return round(sum(closes[n - 9 : n]) / 9, 2) if n >= 9 else None

    first_span = UnwatchedSpan(OPEN, start, "restart")
    first = plan_recovery(RecoveryInput(TICKER, start, session, PlanSettings(60), (first_span,), (),
                                        replace(history, read_at_ms=start)))  # fmt: skip
    assert [(i.sma9, i.vwap) for _, i in first.backfill] == [(sma9(n), vwap(n)) for n in range(1, 11)]
    assert first.state.sma.closed == tuple(closes[1:9]) and first.state.sma.close == closes[9]
    assert first.state.vwap.volume == sum(volumes[:10]) and first.pending == (at("9:40"),)
    gap = UnwatchedSpan(start, at("9:43", 20), "disconnect")
    second = plan_recovery(RecoveryInput(TICKER, at("9:43", 20), session, PlanSettings(60), (first_span, gap),
                                         first.backfill, history, first.state))  # fmt: skip
    assert second.resumed
    assert [(key_ms(e), e.volume, i.sma9, i.vwap) for e, i in second.backfill] == [
        (minutes[n - 1], volumes[n - 1], sma9(n), vwap(n)) for n in (11, 12, 13)
    ]
    row = second.state.open_row
    assert row is not None
    assert (row.timestamp_ms, row.price, row.volume) == (minutes[12], closes[12], volumes[12])
    assert (round(row.sma or 0, 2), round(row.vwap or 0, 2)) == (sma9(13), vwap(13))
    assert [g.volume_missing for g in second.ledger] == [0, None]  # the gap's 09:43 is under way


def test_a_minute_whose_candle_never_comes_is_abandoned_with_what_total_volume_says() -> None:
    session, start, end = Session(OPEN, at("16:00")), at("10:00", 30), at("10:03", 10)
    span = UnwatchedSpan(start, end, "disconnect", total_volume_rise=4_321)
    inp = RecoveryInput(TICKER, at("10:40"), session, PlanSettings(60, give_up_after_ms=30 * MINUTE_MS),
                        (span,), (), None)  # fmt: skip
    plan = plan_recovery(inp)
    assert plan.abandoned == (at("10:00"), at("10:01"), at("10:02"), at("10:03")) and plan.pending == ()
    (gap,) = plan.ledger
    assert (gap.started_at, gap.ended_at, gap.cause) == (dt(start), dt(end), "disconnect")
    assert gap.volume_missing == 4_321 and gap.equity_backfilled_rows == 0
    waiting = plan_recovery(replace(inp, now_ms=at("10:20")))
    assert waiting.pending == plan.abandoned and waiting.ledger[0].volume_missing is None


def test_a_half_day_ends_at_its_close() -> None:
    session, now = Session(OPEN, at("13:00")), at("13:30")
    truth = {at("12:58"): 300, at("12:59"): 400}
    span = UnwatchedSpan(at("12:58"), now, "stale")
    inp = RecoveryInput(TICKER, now, session, PlanSettings(300), (span,), (), candles_until(now, truth))
    plan = plan_recovery(inp)
    assert [(key_ms(e), e.volume) for e, _ in plan.backfill] == [(at("12:55"), 700)]
    assert plan.pending == () and plan.ledger[0].ended_at == dt(at("13:00"))


def test_bad_inputs_are_refused_with_the_fix() -> None:
    inp = RecoveryInput(TICKER, at("10:00"), Session(OPEN, at("16:00")), PlanSettings(60), ())
    for wrong, words in (
        (replace(inp, session=Session(OPEN + 1, at("16:00"))), "on a minute"),
        (replace(inp, spans=(UnwatchedSpan(at("9:50"), at("9:40"), "stale"),)), "ends before it starts"),
        (replace(inp, recorded=((EquityRow("SPY", dt(OPEN), 1.0, 5), None),)), "not a row of QQQ"),
        (replace(inp, settings=PlanSettings(-1)), "row_resolution_s must be ≥ 0"),
    ):
        try:
            plan_recovery(wrong)
        except ValueError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{wrong} was accepted")
