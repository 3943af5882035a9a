"""NYSE sessions from pandas-market-calendars, cached as JSON and built in a child process.

One real schedule is built per module (`schedule_text`, ~1 s); failures are produced by real
interpreters that fail (a broken import, a missing executable, a hang, garbage on stdout).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from structlog.testing import capture_logs

from streaming_service.market_hours import (
    MIN_DAYS_AHEAD,
    CalendarUnavailable,
    MarketCalendar,
    MarketHours,
    QuietHours,
    cache_path,
    cached_market_hours,
    load_market_hours,
)

BUILT_AT = "2026-02-02T12:00:00+00:00"  # the shared schedule covers 2026-02-01 .. 2027-03-07


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).astimezone(UTC).timestamp()


@pytest.fixture(scope="module")
def schedule_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The JSON cache of one real XNYS build (child process), shared by the module's tests."""
    cache = tmp_path_factory.mktemp("calendar") / "mh.json"
    MarketCalendar(cache)(at(BUILT_AT))
    return cache.read_text()


@pytest.fixture
def hours(schedule_text: str) -> MarketHours:
    return MarketHours(tuple((o, c) for o, c in json.loads(schedule_text)))


@pytest.fixture
def cache(tmp_path: Path, schedule_text: str) -> Path:
    """A copy of the shared schedule in this test's directory."""
    path = tmp_path / "mh.json"
    path.write_text(schedule_text)
    return path


class Interpreter:
    """A `python` for the calendar child that counts its runs and fails while `broken` is true.

    Broken = the real interpreter with a `pandas_market_calendars` on PYTHONPATH whose import raises.
    """

    def __init__(self, tmp_path: Path) -> None:
        shadow = tmp_path / "shadow" / "pandas_market_calendars"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('simulated: calendar package broken')\n")
        self.flag, self.runs = tmp_path / "broken", tmp_path / "runs"
        self.path = tmp_path / "python"
        self.path.write_text(
            "#!/bin/sh\n"
            f"echo run >> '{self.runs}'\n"
            f"if [ -e '{self.flag}' ]; then export PYTHONPATH='{shadow.parent}'; fi\n"
            f"exec '{sys.executable}' \"$@\"\n"
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)
        self.broken = True

    @property
    def broken(self) -> bool:
        return self.flag.exists()

    @broken.setter
    def broken(self, value: bool) -> None:
        if value:
            self.flag.touch()
        else:
            self.flag.unlink(missing_ok=True)

    @property
    def run_count(self) -> int:
        return len(self.runs.read_text().splitlines()) if self.runs.exists() else 0


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bad-python"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


# --- the schedule itself ------------------------------------------------------------------------


def test_holidays_half_days_and_weekends(hours: MarketHours) -> None:
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
    # Christmas Eve closes at 13:00; Christmas (Friday) is closed: after the half day comes Monday.
    eve = (at("2026-12-24T09:30:00-05:00"), at("2026-12-24T13:00:00-05:00"))
    assert hours.session_for(at("2026-12-24T12:59:59-05:00")) == eve
    assert hours.session_for(at("2026-12-24T13:00:00-05:00")) == (
        at("2026-12-28T09:30:00-05:00"),
        at("2026-12-28T16:00:00-05:00"),
    )


def test_open_is_0930_new_york_across_dst(hours: MarketHours) -> None:
    # 2026-03-08 (Sunday) New York moves to EDT: 14:30 UTC before, 13:30 UTC after.
    assert hours.session_for(at("2026-03-06T12:00:00+00:00")) == (
        at("2026-03-06T14:30:00+00:00"),
        at("2026-03-06T21:00:00+00:00"),
    )
    assert hours.session_for(at("2026-03-08T12:00:00+00:00")) == (
        at("2026-03-09T13:30:00+00:00"),
        at("2026-03-09T20:00:00+00:00"),
    )
    # 2026-11-01 (Sunday) back to EST: 13:30 UTC on Friday 10-30, 14:30 UTC on Monday 11-02.
    assert hours.session_for(at("2026-10-30T12:00:00+00:00")) == (
        at("2026-10-30T13:30:00+00:00"),
        at("2026-10-30T20:00:00+00:00"),
    )
    assert hours.session_for(at("2026-11-01T12:00:00+00:00")) == (
        at("2026-11-02T14:30:00+00:00"),
        at("2026-11-02T21:00:00+00:00"),
    )


def test_mid_session_start_gets_the_session_in_progress(cache: Path) -> None:
    now = at("2026-11-24T11:07:00-05:00")
    opens, closes = at("2026-11-24T09:30:00-05:00"), at("2026-11-24T16:00:00-05:00")
    hours = MarketCalendar(cache)(now)
    assert hours.session_for(now) == (opens, closes)
    assert hours.session_for(opens) == (opens, closes)
    assert hours.session_for(closes - 1) == (opens, closes)
    assert hours.session_for(closes) != (opens, closes)


# --- the cache ----------------------------------------------------------------------------------


def test_cache_is_reused_while_fresh_and_rebuilt_when_running_out(tmp_path: Path) -> None:
    cache = tmp_path / "mh.json"
    now = at("2026-11-20T12:00:00+00:00")
    far = now + (MIN_DAYS_AHEAD + 5) * 86_400
    cache.write_text(json.dumps([[now + 100, now + 200], [far, far + 100]]))
    assert load_market_hours(cache, now=now) == MarketHours(((now + 100, now + 200), (far, far + 100)))

    cache.write_text(json.dumps([[now + 100, now + 200]]))  # covers only minutes ahead
    rebuilt = load_market_hours(cache, now=now)
    assert len(rebuilt.sessions) > 200 and not rebuilt.needs_rebuild(now)
    assert json.loads(cache.read_text())[0] == list(rebuilt.sessions[0])


def test_unreadable_cache_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "mh.json"
    cache.write_text("{not json")
    assert len(load_market_hours(cache, now=at("2026-11-20T12:00:00+00:00")).sessions) > 200


# --- failed rebuilds ----------------------------------------------------------------------------


def test_failed_rebuild_keeps_a_valid_cache_and_retries_hourly(tmp_path: Path, cache: Path) -> None:
    cached = cache.read_text()
    python = Interpreter(tmp_path)
    calendar = MarketCalendar(cache, python=str(python.path))
    now = json.loads(cached)[-1][1] - 20 * 86_400  # 20 days left: a rebuild is due
    with capture_logs() as logs:
        hours = calendar(now)
    assert hours.days_left(now) == pytest.approx(20) and hours.needs_rebuild(now)
    assert python.run_count == 1 and cache.read_text() == cached
    [event] = logs
    assert event["event"] == "calendar rebuild failed; using the cached schedule"
    assert event["log_level"] == "warning" and event["covers_days"] == 20.0
    assert "simulated: calendar package broken" in event["reason"]

    with capture_logs() as logs:
        assert calendar(now + 59 * 60) is hours  # within the hour: no new child, no noise
    assert python.run_count == 1 and logs == []

    calendar(now - 3600)  # the clock was set back: that must not postpone the retry
    assert python.run_count == 2 and calendar.failures == 2

    python.broken = False
    rebuilt = calendar(now + 61 * 60)
    assert python.run_count == 3 and calendar.failures == 0
    assert not rebuilt.needs_rebuild(now) and rebuilt.days_left(now) > 300
    assert json.loads(cache.read_text())[0] == list(rebuilt.sessions[0])


def test_failed_rebuild_is_an_error_when_the_cache_runs_short(tmp_path: Path, cache: Path) -> None:
    calendar = MarketCalendar(cache, python=str(Interpreter(tmp_path).path))
    now = json.loads(cache.read_text())[-1][1] - 3 * 86_400
    with capture_logs() as logs:
        calendar(now)
    assert [(e["event"], e["log_level"], e["covers_days"]) for e in logs] == [
        ("calendar rebuild failed; using the cached schedule", "error", 3.0)
    ]


@pytest.mark.parametrize("used_up", [False, True], ids=["no cache", "cache used up"])
def test_failed_rebuild_without_a_usable_cache_raises_with_the_fix(
    tmp_path: Path, cache: Path, used_up: bool
) -> None:
    if not used_up:
        cache.unlink()
    now = json.loads(cache.read_text())[-1][1] + 60 if used_up else at("2026-11-20T12:00:00+00:00")
    python = Interpreter(tmp_path)
    calendar = MarketCalendar(cache, python=str(python.path))
    for attempt in (1, 2):  # nothing to fall back on: every call tries again
        with pytest.raises(CalendarUnavailable) as raised:
            calendar(now)
        assert python.run_count == attempt
    message = str(raised.value)
    assert "simulated: calendar package broken" in message
    assert "SKIP_MARKET_HOURS=true" in message and "pandas-market-calendars" in message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('exec /nonexistent/python "$@"', "exited with 127"),
        ("echo 'not json'", "printed no schedule"),
        ("echo '[]'", "no future session"),
        ("exec sleep 30", "took over 0.5 s"),
    ],
    ids=["missing interpreter", "garbage", "empty", "hang"],
)
def test_every_kind_of_child_failure_falls_back_to_the_cache(
    tmp_path: Path, cache: Path, body: str, reason: str
) -> None:
    calendar = MarketCalendar(cache, python=script(tmp_path, body), timeout_s=0.5)
    now = json.loads(cache.read_text())[-1][1] - 10 * 86_400
    with capture_logs() as logs:
        assert calendar(now).days_left(now) == pytest.approx(10)
    assert reason in logs[0]["reason"]


def test_interpreter_that_cannot_start_without_cache_raises(tmp_path: Path) -> None:
    calendar = MarketCalendar(tmp_path / "mh.json", python=str(tmp_path / "no-such-python"))
    with pytest.raises(CalendarUnavailable, match=r"cannot start .*no-such-python"):
        calendar(at("2026-11-20T12:00:00+00:00"))


# --- QuietHours: when a feed without data is normal (SKIP_MARKET_HOURS=true) --------------------------


NEW_YORK = ZoneInfo("America/New_York")


def quiet_at(hours: QuietHours, moment: str) -> bool:
    """`hours.is_quiet()` with the exchange clock at `moment`, New York time."""
    hours._now = lambda: datetime.fromisoformat(moment).replace(tzinfo=NEW_YORK).timestamp()
    return hours.is_quiet()


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        ("2026-12-08T03:59:59", True),  # a Tuesday night
        ("2026-12-08T04:00:00", False),  # the pre-market
        ("2026-12-08T12:00:00", False),
        ("2026-12-08T19:59:59", False),  # after-hours
        ("2026-12-08T20:00:00", True),
        ("2026-12-05T12:00:00", True),  # a Saturday
        ("2026-12-06T19:00:00", True),  # a Sunday
    ],
)
def test_without_a_schedule_trades_can_happen_0400_to_2000_on_weekdays(moment: str, quiet: bool) -> None:
    assert quiet_at(QuietHours(), moment) is quiet


def test_the_schedule_knows_holidays_and_half_days(schedule_text: str, tmp_path: Path) -> None:
    (tmp_path / "market_hours.json").write_text(schedule_text)
    schedule = cached_market_hours(cache_path(tmp_path / "token.json"))
    assert schedule is not None
    hours = QuietHours(schedule=schedule)
    assert quiet_at(hours, "2026-11-26T12:00:00")  # Thanksgiving: a Thursday, no session
    assert not quiet_at(hours, "2026-11-27T16:59:59")  # the half day closes at 13:00 ...
    assert quiet_at(hours, "2026-11-27T17:00:00")  # ... and its after-hours at 17:00
    assert not quiet_at(hours, "2026-11-30T04:00:00")  # the Monday after
    assert not quiet_at(hours, "2027-12-27T04:00:00")  # past the schedule: a weekday is a trading day
    assert cached_market_hours(tmp_path / "missing.json") is None


def test_a_day_that_traded_is_a_trading_day_whatever_the_calendar() -> None:
    saturday = datetime(2026, 12, 5).date()
    hours = QuietHours(traded_on=lambda day: day == saturday)  # e.g. a simulated market's
    assert not quiet_at(hours, "2026-12-05T12:00:00")
    assert quiet_at(hours, "2026-12-06T12:00:00")


def test_the_default_clock_is_the_wall_clock_and_the_last_quiet_moment_is_noted() -> None:
    with time_machine.travel(datetime(2026, 12, 5, 12, 0, tzinfo=NEW_YORK), tick=True):  # a Saturday
        hours = QuietHours()
        assert hours.last_quiet_at is None
        assert hours.is_quiet()
        assert hours.last_quiet_at is not None and abs(hours.last_quiet_at - time.time()) < 5
    with time_machine.travel(datetime(2026, 12, 7, 10, 0, tzinfo=NEW_YORK), tick=True):  # Monday 10:00
        noted = hours.last_quiet_at
        assert not hours.is_quiet() and hours.last_quiet_at == noted


def test_the_image_calendar_stage_copies_every_module_the_builder_imports(tmp_path: Path) -> None:
    """The Dockerfile's calendar stage copies a few modules to run `python -m market_hours`;
    an import added to them without the COPY breaks the image build (it did once)."""
    dockerfile = (Path(__file__).parents[1] / "Dockerfile").read_text()
    stage = dockerfile.split("AS calendar", 1)[1].split("\nFROM ", 1)[0]
    copy = stage.split("\nCOPY streaming_service/", 1)[1].split("/src/streaming_service/", 1)[0]
    names = [word.removeprefix("streaming_service/") for word in copy.replace("\\", " ").split()]
    package = tmp_path / "streaming_service"
    package.mkdir()
    for name in ["__init__.py", *names]:
        (package / name).write_bytes((Path(__file__).parents[1] / "streaming_service" / name).read_bytes())
    result = subprocess.run(
        [sys.executable, "-c", "import streaming_service.market_hours as m; print(m.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(package / "market_hours.py")
