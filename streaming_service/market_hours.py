"""NYSE regular sessions (holidays and half days included), without pandas in the long-lived process.

The schedule comes from pandas-market-calendars (XNYS), computed in a short child process
(`python -m streaming_service.market_hours START DAYS` prints JSON) and cached as JSON next to
the token file. pandas costs ~70 MiB of RAM, paid only by that child, for about a second.

`MarketCalendar` owns the cache: it rebuilds the schedule when it covers fewer than
`MIN_DAYS_AHEAD` days, at most once per `retry_s` while rebuilding fails, and keeps serving the
cached schedule meanwhile (a warning per failure; an error once fewer than `ALERT_DAYS` remain).
Only when no cached session lies ahead does a failed rebuild raise `CalendarUnavailable`.

`QuietHours` says when no trade can happen, for a service streaming around the clock
(SKIP_MARKET_HOURS=true): then a feed without data is quiet, not stale.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

import structlog

from streaming_service.errors import StreamerError
from streaming_service.indicators import EXCHANGE_TZ

__all__ = [
    "ALERT_DAYS",
    "MIN_DAYS_AHEAD",
    "CalendarUnavailable",
    "MarketCalendar",
    "MarketHours",
    "QuietHours",
    "build_sessions",
    "cache_path",
    "cached_market_hours",
    "load_market_hours",
]

log = structlog.get_logger(__name__)

SCHEDULE_DAYS = 400
#: Rebuild when the schedule covers fewer days than this.
MIN_DAYS_AHEAD = 30
#: A failed rebuild is logged as an error (not a warning) when the cache covers fewer days than this.
ALERT_DAYS = 7
RETRY_S = 3600.0
BUILD_TIMEOUT_S = 300.0
#: Trading is possible from the pre-market's start to this long after the close (after-hours).
PRE_MARKET_START = clock_time(4, 0)
AFTER_HOURS_S = 4 * 3600


class CalendarUnavailable(StreamerError, RuntimeError):
    """No schedule with a future session: the rebuild failed and the cache is missing or used up."""


@dataclass(frozen=True, slots=True)
class MarketHours:
    """Regular sessions as sorted, non-overlapping (open, close) epoch seconds."""

    sessions: tuple[tuple[float, float], ...]

    def session_for(self, now: float) -> tuple[float, float] | None:
        """The session in progress at `now`, else the next one; `None` if the schedule has run out."""
        index = bisect.bisect_right(self.sessions, (now, float("inf")))
        if index and now < self.sessions[index - 1][1]:
            return self.sessions[index - 1]
        return self.sessions[index] if index < len(self.sessions) else None

    def covers_until(self) -> float:
        """Epoch seconds of the last known close (0 when empty)."""
        return self.sessions[-1][1] if self.sessions else 0.0

    def days_left(self, now: float) -> float:
        """Days from `now` to the last known close (negative once it has passed)."""
        return (self.covers_until() - now) / 86_400

    def needs_rebuild(self, now: float) -> bool:
        """True when the schedule covers fewer than `MIN_DAYS_AHEAD` days from `now`."""
        return self.days_left(now) < MIN_DAYS_AHEAD


class _BuildFailed(Exception):
    """The child process did not produce a usable schedule; the message says why."""


class MarketCalendar:
    """The XNYS schedule cached at `cache_path`, rebuilt by `python -m streaming_service.market_hours`.

    Call it (`calendar(now)`) as often as you like: it returns the schedule held in memory and
    only does I/O when the schedule needs a rebuild and the last attempt is `retry_s` old.
    A rebuild blocks for about a second (up to `timeout_s`): call it via `asyncio.to_thread`.
    Not thread-safe: call it from one thread at a time.
    """

    def __init__(
        self,
        cache_path: Path,
        *,
        python: str = sys.executable,
        retry_s: float = RETRY_S,
        timeout_s: float = BUILD_TIMEOUT_S,
    ) -> None:
        self.cache_path = cache_path
        self._python = python
        self._retry_s = retry_s
        self._timeout_s = timeout_s
        self._hours: MarketHours | None = None
        self._last_attempt: float | None = None
        self.failures = 0  # consecutive failed rebuilds

    def __call__(self, now: float | None = None) -> MarketHours:
        """The schedule to use at `now` (default: the wall clock).

        Returns the cached schedule while it is fresh, or while a rebuild fails and it still has a
        session ahead. Raises `CalendarUnavailable` (with the fix) only when neither exists.
        """
        now = time.time() if now is None else now
        hours = self._hours if self._hours is not None else self._read_cache()
        if hours is not None and hours.session_for(now) is None:
            hours = None  # used up: nothing to fall back on
        if hours is not None and (not hours.needs_rebuild(now) or self._retry_pending(now)):
            self._hours = hours
            return hours
        self._last_attempt = now
        try:
            text, built = self._build(now)
        except _BuildFailed as exc:
            self.failures += 1
            if hours is None:
                raise CalendarUnavailable(self._unavailable_message(str(exc))) from None
            days = hours.days_left(now)
            report = log.error if days < ALERT_DAYS else log.warning
            report(
                "calendar rebuild failed; using the cached schedule",
                covers_days=round(days, 1),
                covers_until=datetime.fromtimestamp(hours.covers_until(), UTC).isoformat(),
                retry_in_s=self._retry_s,
                failures=self.failures,
                reason=str(exc),
            )
            self._hours = hours
            return hours
        self.failures = 0
        self._save(text)
        self._hours = built
        log.info("calendar rebuilt", sessions=len(built.sessions), covers_days=round(built.days_left(now), 1))
        return built

    def _retry_pending(self, now: float) -> bool:
        """A failed attempt less than `retry_s` ago (a clock set back does not postpone the retry)."""
        return self._last_attempt is not None and 0 <= now - self._last_attempt < self._retry_s

    def _read_cache(self) -> MarketHours | None:
        return cached_market_hours(self.cache_path)

    def _build(self, now: float) -> tuple[str, MarketHours]:
        start = datetime.fromtimestamp(now, UTC).date() - timedelta(days=1)
        command = [
            self._python,
            "-m",
            "streaming_service.market_hours",
            start.isoformat(),
            str(SCHEDULE_DAYS),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=self._timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise _BuildFailed(f"the calendar process took over {self._timeout_s:g} s") from None
        except OSError as exc:
            raise _BuildFailed(f"cannot start {self._python}: {exc.strerror or exc}") from None
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            last = lines[-1].strip()[:300] if lines else "no error output"
            raise _BuildFailed(f"the calendar process exited with {result.returncode}: {last}")
        try:
            built = _parse(result.stdout)
        except (ValueError, TypeError) as exc:
            raise _BuildFailed(f"the calendar process printed no schedule ({exc})") from None
        if built.session_for(now) is None:
            raise _BuildFailed("the calendar process returned no future session")
        return result.stdout, built

    def _save(self, text: str) -> None:
        """Replace the cache atomically; a failure is logged (the schedule is still used)."""
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".market_hours.")
            try:
                with os.fdopen(fd, "w") as file:
                    file.write(text)
                os.replace(tmp, self.cache_path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("calendar cache not saved", path=str(self.cache_path), reason=str(exc))

    def _unavailable_message(self, reason: str) -> str:
        return (
            f"no NYSE calendar: building it failed ({reason}) and {self.cache_path} holds no future "
            f"session. Fix: make sure pandas-market-calendars is installed (`python -m "
            f"streaming_service.market_hours {date.today().isoformat()} 5` shows the error) and that "
            f"{self.cache_path.parent} is writable (in Docker, where pandas is not installed: rebuild "
            "and redeploy the image, which ships a fresh schedule), or set SKIP_MARKET_HOURS=true to "
            "stream around the clock."
        )


class QuietHours:
    """When a quiet feed is normal, for a service streaming around the clock (SKIP_MARKET_HOURS=true).

    Trades can happen on a trading day from 04:00 New York time (the pre-market) until four hours
    after the regular close (after-hours: 20:00, or 17:00 after a 13:00 close). At any other time
    (nights, weekends, holidays) nothing trades, so a feed that sends heartbeats but no data is
    quiet, not stale: `is_quiet()` is then True. A trading day is a date with a session in
    `schedule` (the NYSE calendar: holidays and half days) while the schedule covers that date,
    else a weekday; and a date on which trades did stream (`traded_on`) is one, whatever the
    calendar says. `now`: the exchange clock (epoch seconds).
    `last_quiet_at`: the wall-clock time (epoch s) `is_quiet()` last answered True, so that what
    asks often can tell how long data has been expected.
    """

    def __init__(
        self,
        now: Callable[[], float] = time.time,
        *,
        schedule: MarketHours | None = None,
        traded_on: Callable[[date], bool] = lambda day: False,
    ) -> None:
        self._now = now
        self._traded_on = traded_on
        sessions = schedule.sessions if schedule is not None else ()
        self._closes = {datetime.fromtimestamp(o, EXCHANGE_TZ).date(): c for o, c in sessions}
        self._covers = (min(self._closes), max(self._closes)) if self._closes else None
        self.last_quiet_at: float | None = None

    def trading_day(self, day: date) -> bool:
        """Whether trades can happen on `day` (see the class docstring)."""
        if self._traded_on(day):
            return True
        if self._covers is not None and self._covers[0] <= day <= self._covers[1]:
            return day in self._closes
        return day.weekday() < 5

    def is_quiet(self) -> bool:
        """True when no trade can happen now (see the class docstring)."""
        now = self._now()
        local = datetime.fromtimestamp(now, EXCHANGE_TZ)
        day = local.date()
        if self.trading_day(day) and local.time() >= PRE_MARKET_START:
            regular_close = self._closes.get(day)
            if regular_close is None:
                regular_close = datetime.combine(day, clock_time(16, 0), EXCHANGE_TZ).timestamp()
            if now < regular_close + AFTER_HOURS_S:
                return False
        self.last_quiet_at = time.time()
        return True


def cache_path(token_path: Path) -> Path:
    """Where the schedule is cached: next to the token file (the Docker entrypoint copies the
    image's schedule there)."""
    return token_path.parent / "market_hours.json"


def cached_market_hours(path: Path) -> MarketHours | None:
    """The schedule cached at `path`, without building one; None if there is none usable."""
    try:
        return _parse(path.read_text())
    except (OSError, ValueError, TypeError):
        return None


def build_sessions(start: date, days: int) -> list[tuple[float, float]]:
    """XNYS regular sessions from `start` for `days` days. Imports pandas: call it in a child process."""
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar("XNYS").schedule(start_date=start, end_date=start + timedelta(days=days))
    return [
        (opened.timestamp(), closed.timestamp())
        for opened, closed in zip(schedule["market_open"], schedule["market_close"], strict=True)
    ]


def load_market_hours(
    cache_path: Path, *, now: float | None = None, python: str = sys.executable
) -> MarketHours:
    """One-shot `MarketCalendar(cache_path, python=python)(now)`: no retry throttle between calls.

    Raises `CalendarUnavailable` (a `RuntimeError`) only when there is no usable schedule.
    """
    return MarketCalendar(cache_path, python=python)(now)


def _parse(text: str) -> MarketHours:
    return MarketHours(tuple((float(opened), float(closed)) for opened, closed in json.loads(text)))


if __name__ == "__main__":
    print(json.dumps(build_sessions(date.fromisoformat(sys.argv[1]), int(sys.argv[2]))))
