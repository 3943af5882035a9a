"""NYSE sessions from pandas-market-calendars, cached as JSON and built in a child process."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from streaming_service.market_hours import MIN_DAYS_AHEAD, MarketHours, load_market_hours


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).astimezone(UTC).timestamp()


def test_holidays_half_days_and_weekends(tmp_path: Path) -> None:
    hours = load_market_hours(tmp_path / "mh.json", now=at("2026-11-20T12:00:00+00:00"))
    # Thanksgiving 2026-11-26 is closed: the next session is Friday's half day (09:30-13:00 ET).
    assert hours.session_for(at("2026-11-26T15:00:00+00:00")) == (
        at("2026-11-27T09:30:00-05:00"),
        at("2026-11-27T13:00:00-05:00"),
    )
    # Saturday: Monday's full session.
    assert hours.session_for(at("2026-11-28T15:00:00+00:00")) == (
        at("2026-11-30T09:30:00-05:00"),
        at("2026-11-30T16:00:00-05:00"),
    )
    # During a session: that session.
    opens, closes = at("2026-11-24T09:30:00-05:00"), at("2026-11-24T16:00:00-05:00")
    assert hours.session_for(opens) == (opens, closes)
    assert hours.session_for(closes - 1) == (opens, closes)
    assert hours.session_for(closes) != (opens, closes)


def test_cache_is_reused_while_fresh_and_rebuilt_when_running_out(tmp_path: Path) -> None:
    cache = tmp_path / "mh.json"
    now = at("2026-11-20T12:00:00+00:00")
    far = now + (MIN_DAYS_AHEAD + 5) * 86_400
    cache.write_text(json.dumps([[now + 100, now + 200], [far, far + 100]]))
    assert load_market_hours(cache, now=now) == MarketHours(((now + 100, now + 200), (far, far + 100)))

    cache.write_text(json.dumps([[now + 100, now + 200]]))  # covers only minutes ahead
    rebuilt = load_market_hours(cache, now=now)
    assert len(rebuilt.sessions) > 200
    assert json.loads(cache.read_text())[0] == list(rebuilt.sessions[0])


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "mh.json"
    cache.write_text("{not json")
    assert len(load_market_hours(cache, now=at("2026-11-20T12:00:00+00:00")).sessions) > 200
