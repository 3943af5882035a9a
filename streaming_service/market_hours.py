"""NYSE regular sessions (holidays and half days included), without pandas in the long-lived process.

The schedule comes from pandas-market-calendars (XNYS), computed in a short child process
(`python -m streaming_service.market_hours START DAYS` prints JSON) and cached as JSON next to
the token file; it is rebuilt when it covers fewer than `MIN_DAYS_AHEAD` days. pandas costs ~70 MiB
of RAM, paid only by that child, for about a second.
"""

from __future__ import annotations

import bisect
import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

__all__ = ["MarketHours", "build_sessions", "load_market_hours"]

SCHEDULE_DAYS = 400
MIN_DAYS_AHEAD = 30


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


def build_sessions(start: date, days: int) -> list[tuple[float, float]]:
    """XNYS regular sessions from `start` for `days` days. Imports pandas: call it in a child process."""
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar("XNYS").schedule(start_date=start, end_date=start + timedelta(days=days))
    return [
        (opened.timestamp(), closed.timestamp())
        for opened, closed in zip(schedule["market_open"], schedule["market_close"], strict=True)
    ]


def load_market_hours(cache_path: Path, *, now: float | None = None) -> MarketHours:
    """Read the cached schedule, rebuilding it (child process) when missing, unreadable or running out.

    Raises `RuntimeError` if the child process fails (its stderr is in the message).
    """
    now = datetime.now(UTC).timestamp() if now is None else now
    try:
        hours = _parse(cache_path.read_text())
        if hours.covers_until() - now >= MIN_DAYS_AHEAD * 86_400:
            return hours
    except (OSError, ValueError, TypeError):
        pass
    start = datetime.fromtimestamp(now, UTC).date() - timedelta(days=1)
    result = subprocess.run(
        [sys.executable, "-m", "streaming_service.market_hours", start.isoformat(), str(SCHEDULE_DAYS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the NYSE calendar failed: {result.stderr.strip()[-500:]}")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(result.stdout)
    return _parse(result.stdout)


def _parse(text: str) -> MarketHours:
    return MarketHours(tuple((float(opened), float(closed)) for opened, closed in json.loads(text)))


if __name__ == "__main__":
    print(json.dumps(build_sessions(date.fromisoformat(sys.argv[1]), int(sys.argv[2]))))
