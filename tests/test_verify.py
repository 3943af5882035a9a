"""The daily proof's rule (`verify.prove_day`, pure) over random sessions, and the sessions it checks
(`session_of`, `latest_session`) from a calendar or without one."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming_service.indicators import EXCHANGE_TZ
from streaming_service.market_hours import MarketHours
from streaming_service.models import EquityRow
from streaming_service.sources.price_history import Candle
from streaming_service.verify import (
    MINUTE_MS,
    DayProof,
    NoSession,
    latest_session,
    prove_day,
    session_of,
    summary_line,
    unit_ms,
)

DAY = date(2026, 11, 24)
OPEN = datetime.combine(DAY, time(9, 30), EXCHANGE_TZ).astimezone(UTC)
OPEN_MS = int(OPEN.timestamp() * 1000)
CHECKED_AT = datetime(2026, 11, 24, 21, 5, tzinfo=UTC)
RESOLUTIONS = [0, 1, 5, 15, 30, 60, 7, 90, 300]
#: (session minutes, ROW_RESOLUTION, candles, rows recording them exactly)
Day = tuple[int, int, list[Candle], list[EquityRow]]


def ms_time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def unit_bounds(minutes: int, resolution: int) -> list[tuple[int, int]]:
    """[start, end) of each unit of a session of `minutes` from OPEN (the rule of the module)."""
    unit, close = unit_ms(resolution), OPEN_MS + minutes * MINUTE_MS
    bounds, start = [], OPEN_MS
    while start < close:
        end = min(start - start % unit + unit, close)
        bounds.append((start, end))
        start = end
    return bounds


@st.composite
def days(draw: st.DrawFn) -> Day:
    """(session minutes, resolution, candles, rows that record exactly the candles' shares per unit)."""
    minutes = draw(st.integers(1, 40))
    resolution = draw(st.sampled_from(RESOLUTIONS))
    candles = [
        Candle(OPEN_MS + m * MINUTE_MS, 100.0 + m, draw(st.integers(0, 3000)))
        for m in range(minutes)
        if draw(st.booleans()) or m == 0
    ]
    rows: list[EquityRow] = []
    for start, end in unit_bounds(minutes, resolution):
        shares = sum(c.volume for c in candles if start <= c.minute_ms < end)
        if not shares and draw(st.booleans()):
            continue  # a quiet unit: no row (or, below, a row of 0 shares)
        cuts = sorted(draw(st.lists(st.integers(0, shares), max_size=3)))
        parts = [b - a for a, b in zip([0, *cuts], [*cuts, shares], strict=True)]
        for part in parts:
            at = draw(st.integers(start, end - 1))
            rows.append(EquityRow("QQQ", ms_time(at), 100.0, part))
    return minutes, resolution, candles, rows


def prove(minutes: int, resolution: int, rows: list[EquityRow], candles: list[Candle]) -> DayProof:
    return prove_day(
        "QQQ", OPEN, OPEN + timedelta(minutes=minutes), rows, candles,
        row_resolution_s=resolution, checked_at=CHECKED_AT,
    )  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(days())
def test_a_day_recorded_exactly_matches_in_every_minute(
    day: Day,
) -> None:
    minutes, resolution, candles, rows = day
    proof = prove(minutes, resolution, rows, candles)
    check = proof.check
    assert (check.minutes_checked, check.minutes_matching) == (minutes, minutes)
    assert check.shares_recorded == check.shares_candles == sum(c.volume for c in candles)
    assert (check.worst_minute, check.worst_minute_diff, check.minutes_filled) == (None, None, 0)
    assert proof.fills == () and proof.differing == ()
    assert check.day == DAY and check.checked_at == CHECKED_AT


@settings(max_examples=200, deadline=None)
@given(days(), st.data())
def test_units_without_any_row_are_filled_from_their_candles_and_then_match(
    day: Day, data: st.DataObject
) -> None:
    minutes, resolution, candles, rows = day
    units = unit_bounds(minutes, resolution)
    emptied = data.draw(st.sets(st.sampled_from(units)))
    kept = [r for r in rows if not any(a <= r.timestamp.timestamp() * 1000 < b for a, b in emptied)]
    proof = prove(minutes, resolution, kept, candles)
    expected = [c for c in candles if c.volume and any(a <= c.minute_ms < b for a, b in emptied)]
    assert [(f.timestamp, f.price, f.volume) for f in proof.fills] == [
        (ms_time(c.minute_ms), c.close, c.volume) for c in expected
    ]
    check = proof.check
    assert check.minutes_matching == check.minutes_checked == minutes and proof.differing == ()
    assert check.minutes_filled == len(expected)
    assert check.shares_recorded == check.shares_candles
    again = prove(minutes, resolution, [*kept, *proof.fills], candles)  # the next check fills nothing
    assert again.fills == () and again.check.minutes_filled == 0
    assert again.check.shares_recorded == check.shares_recorded and again.check.minutes_matching == minutes


@settings(max_examples=200, deadline=None)
@given(days(), st.data())
def test_a_wrong_unit_is_reported_not_changed(day: Day, data: st.DataObject) -> None:
    minutes, resolution, candles, rows = day
    if not rows:  # a day without trades: one row of 0 shares to change
        rows = [EquityRow("QQQ", OPEN, 100.0, 0)]
    wrong = data.draw(st.sampled_from(rows))
    delta = data.draw(st.integers(-wrong.volume, 500).filter(lambda d: d != 0))
    changed = [EquityRow(r.ticker, r.timestamp, r.price, r.volume + delta) if r is wrong else r for r in rows]
    proof = prove(minutes, resolution, changed, candles)
    wrong_ms = int(wrong.timestamp.timestamp() * 1000)
    (start, end) = next((a, b) for a, b in unit_bounds(minutes, resolution) if a <= wrong_ms < b)
    [diff] = proof.differing
    assert (diff.start, diff.minutes, diff.diff) == (ms_time(start), (end - start) // MINUTE_MS, delta)
    check = proof.check
    assert check.minutes_matching == minutes - diff.minutes and proof.fills == ()
    assert (check.worst_minute, check.worst_minute_diff) == (ms_time(start), delta)
    assert check.shares_recorded - check.shares_candles == delta


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.sampled_from(RESOLUTIONS),
    st.lists(st.tuples(st.integers(-5, 45), st.integers(0, 2000)), max_size=30),
    st.lists(st.tuples(st.integers(-120, 45 * 60), st.integers(0, 2000)), max_size=60),
)
def test_what_always_holds(
    minutes: int, resolution: int, raw_candles: list[tuple[int, int]], raw_rows: list[tuple[int, int]]
) -> None:
    """Candles and rows anywhere, in and out of the session, any volumes."""
    candles = [Candle(OPEN_MS + m * MINUTE_MS, 50.0, v) for m, v in raw_candles]
    rows = [(OPEN + timedelta(seconds=s), v) for s, v in raw_rows]
    proof = prove_day("QQQ", OPEN, OPEN + timedelta(minutes=minutes), rows, candles,
                      row_resolution_s=resolution, checked_at=CHECKED_AT)  # fmt: skip
    check = proof.check
    close = OPEN + timedelta(minutes=minutes)
    assert 0 <= check.minutes_matching <= check.minutes_checked == minutes
    assert check.minutes_matching + sum(d.minutes for d in proof.differing) == minutes
    assert check.shares_recorded - check.shares_candles == sum(d.diff for d in proof.differing)
    assert [d.start for d in proof.differing] == sorted({d.start for d in proof.differing})
    assert all(OPEN <= f.timestamp < close and f.volume > 0 for f in proof.fills)
    recorded_units = {_unit_start(ts, resolution) for ts, _ in rows if OPEN <= ts < close}
    assert not {_unit_start(f.timestamp, resolution) for f in proof.fills} & recorded_units
    if proof.differing:
        worst = max(abs(d.diff) for d in proof.differing)
        assert check.worst_minute_diff is not None and abs(check.worst_minute_diff) == worst
    else:
        assert check.worst_minute is None and check.worst_minute_diff is None


def _unit_start(ts: datetime, resolution: int) -> int:
    ms = int(ts.timestamp() * 1000)
    return max(OPEN_MS, ms - ms % unit_ms(resolution))


def test_a_five_minute_resolution_compares_five_minute_units() -> None:
    candles = [Candle(OPEN_MS + m * MINUTE_MS, 10.0, 100) for m in range(10)]
    rows = [EquityRow("QQQ", OPEN, 10.0, 500), EquityRow("QQQ", OPEN + timedelta(minutes=5), 10.0, 490)]
    proof = prove(10, 300, rows, candles)
    assert (proof.check.minutes_matching, proof.check.worst_minute_diff) == (5, -10)
    assert proof.check.worst_minute == OPEN + timedelta(minutes=5)
    assert summary_line(proof.check) == (
        "2026-11-24: 5/10 minutes match, 990 of 1,000 shares recorded; worst 09:35 New York (-10 shares)"
    )


@pytest.mark.parametrize(
    ("open_", "close", "error"),
    [
        (OPEN.replace(tzinfo=None), OPEN + timedelta(hours=1), "has no timezone"),
        (OPEN + timedelta(seconds=30), OPEN + timedelta(hours=1), "on whole minutes"),
        (OPEN, OPEN, "the close after the open"),
    ],
)
def test_bad_session_bounds_are_refused(open_: datetime, close: datetime, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        prove_day("QQQ", open_, close, [], [], row_resolution_s=0, checked_at=CHECKED_AT)


# --- sessions ------------------------------------------------------------------------------------


def ny(day: date, hour: int, minute: int = 0) -> float:
    return datetime.combine(day, time(hour, minute), EXCHANGE_TZ).timestamp()


# Tuesday 24th, Wednesday 25th, Friday 27th a half day; Thursday 26th Thanksgiving.
CALENDAR = MarketHours(
    (
        (ny(date(2026, 11, 24), 9, 30), ny(date(2026, 11, 24), 16)),
        (ny(date(2026, 11, 25), 9, 30), ny(date(2026, 11, 25), 16)),
        (ny(date(2026, 11, 27), 9, 30), ny(date(2026, 11, 27), 13)),
        (ny(date(2026, 11, 30), 9, 30), ny(date(2026, 11, 30), 16)),
    )
)


def test_a_half_day_closes_at_13_and_a_holiday_has_no_session() -> None:
    half = session_of(date(2026, 11, 27), CALENDAR)
    assert (half.close - half.open, half.note) == (timedelta(hours=3, minutes=30), "")
    with pytest.raises(NoSession, match="2026-11-26 has no NYSE session"):
        session_of(date(2026, 11, 26), CALENDAR)


def test_without_the_calendar_a_weekday_is_assumed_09_30_to_16_00_and_said_so() -> None:
    session = session_of(date(2026, 11, 26), None)
    assert session.open == datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
    assert session.close == datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
    assert "assumed a full session 09:30-16:00" in session.note
    assert "covers 2026-11-24 to 2026-11-30" in session_of(date(2026, 12, 1), CALENDAR).note
    with pytest.raises(NoSession, match="is a Saturday"):
        session_of(date(2026, 11, 28), None)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 27, 13, 0, 30, tzinfo=EXCHANGE_TZ), date(2026, 11, 25)),  # 30 s after: too soon
        (datetime(2026, 11, 27, 13, 1, tzinfo=EXCHANGE_TZ), date(2026, 11, 27)),
        (datetime(2026, 11, 30, 9, 0, tzinfo=EXCHANGE_TZ), date(2026, 11, 27)),  # Monday morning
    ],
)
def test_the_latest_session_is_the_last_closed_a_minute_ago(now: datetime, expected: date) -> None:
    assert latest_session(now, CALENDAR).day == expected
