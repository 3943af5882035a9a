"""NYSE regular sessions (holidays and half days included), without pandas in the long-lived process.

The schedule comes from pandas-market-calendars (XNYS), computed in a short child process
(`python -m streaming_service.market_hours START DAYS` prints JSON) and cached as JSON next to
the token file. pandas costs ~70 MiB of RAM, paid only by that child, for about a second.

`MarketCalendar` owns the cache: it rebuilds the schedule when it covers fewer than
`MIN_DAYS_AHEAD` days, at most once per `retry_s` while rebuilding fails, and keeps serving the
cached schedule meanwhile (a warning per failure; an error once fewer than `ALERT_DAYS` remain).
Only when no cached session lies ahead does a failed rebuild raise `CalendarUnavailable`.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import structlog

from streaming_service.errors import StreamerError

__all__ = [
    "ALERT_DAYS",
    "MIN_DAYS_AHEAD",
    "CalendarUnavailable",
    "MarketCalendar",
    "MarketHours",
    "build_sessions",
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
        try:
            return _parse(self.cache_path.read_text())
        except (OSError, ValueError, TypeError):
            return None

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
