"""`streaming-service verify [--day YYYY-MM-DD]`: the daily proof of every ticker, printed.

One line per ticker (✓ every minute matches, ✗ some differ or could not be checked), then the
differing minutes (the first ten) indented under it. See `verify` for the rule.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from streaming_service.errors import ConfigError
from streaming_service.market_hours import (
    CalendarUnavailable,
    MarketHours,
    cache_path,
    cached_market_hours,
    load_market_hours,
)
from streaming_service.sinks.base import OPTIONAL_TABLES
from streaming_service.sources.price_history import PriceHistoryUnavailable
from streaming_service.sources.schwab_client import SCHWAB_API_BASE_URL
from streaming_service.verify import (
    CANDLE_LAG_S,
    NoCandles,
    NoSession,
    Session,
    differing_lines,
    latest_session,
    session_of,
    summary_line,
    verify_day,
)

if TYPE_CHECKING:
    from streaming_service.config import Settings
    from streaming_service.sinks.base import Sink
    from streaming_service.spool import Spool

__all__ = ["verify_command"]


async def verify_command(
    settings: Settings, day: date | None, *, api_base_url: str | None = None
) -> list[str]:
    """Check `day` (None: the latest closed session) for every ticker of `settings`, print the
    results, store the fills and summaries; return the tickers that are not all matching (or could
    not be checked). Raises `ConfigError` (no app credentials; a day without a session), `AuthError`,
    `SinkError`s."""
    import asyncio

    from streaming_service.sinks import sink_for
    from streaming_service.sources.schwab_client import build_schwab_client
    from streaming_service.spool import Spool as OutboxFile

    if settings.schwab_app_key is None or settings.schwab_app_secret is None:
        raise ConfigError(
            "config error: SCHWAB_APP_KEY and SCHWAB_APP_SECRET must be set (from your app at "
            "developer.schwab.com): verify reads Schwab's price history. Set them in .env."
        )
    hours = await asyncio.to_thread(_calendar, settings)
    now = datetime.now(UTC)
    try:
        session = latest_session(now, hours) if day is None else session_of(day, hours)
        if now < session.close + timedelta(seconds=CANDLE_LAG_S):
            raise NoSession(
                f"the session of {session.day} has not closed yet (or closed less than "
                f"{CANDLE_LAG_S:g} s ago): check it after the close"
            )
    except NoSession as exc:
        raise ConfigError(f"verify{f' --day {day}' if day else ''}: {exc}") from None
    if session.note:
        print(f"note: {session.note}")
    client = build_schwab_client(
        settings.schwab_token_path,
        settings.schwab_app_key.get_secret_value(),
        settings.schwab_app_secret.get_secret_value(),
        api_base_url=api_base_url or SCHWAB_API_BASE_URL,
    )
    sink = sink_for(settings)
    spool = OutboxFile(settings.spool_path, max_bytes=settings.spool_max_mb * 2**20)
    failed: list[str] = []
    try:
        await sink.open()
        if settings.spool_path.exists():  # rows the service has not written yet count as recorded
            await spool.open()
        opened = spool if settings.spool_path.exists() else None
        for ticker in settings.stream_ticker:
            if not await _verify_ticker(sink, client, ticker, session, settings, opened):
                failed.append(ticker)
        if getattr(sink, "checks_dropped", 0):
            print(f"note: the summaries were not stored: {sink.name} has no volume_checks table; apply "
                  f"{OPTIONAL_TABLES['volume_checks'][0]}")  # fmt: skip
    finally:
        await sink.aclose()
        await spool.aclose()
        await client.close_async_session()
    return failed


async def _verify_ticker(
    sink: Sink, client: Any, ticker: str, session: Session, settings: Settings, spool: Spool | None
) -> bool:
    """Check and print one ticker; True when every minute matches."""
    try:
        proof = await verify_day(
            sink, client, ticker, session, row_resolution_s=settings.row_resolution, spool=spool
        )
    except (NoCandles, PriceHistoryUnavailable) as exc:
        print(f"✗ {ticker} {session.day}: not checked: {exc}")
        return False
    ok = not proof.differing
    print(f"{'✓' if ok else '✗'} {ticker} {summary_line(proof.check)}")
    for line in differing_lines(proof.differing):
        print(f"    {line}")
    return ok


def _calendar(settings: Settings) -> MarketHours | None:
    """The NYSE schedule cached next to the token file, else built (needs pandas-market-calendars),
    else None (`session_of` then assumes 09:30-16:00 and says so)."""
    path = cache_path(settings.schwab_token_path)
    hours = cached_market_hours(path)
    if hours is not None:
        return hours
    try:
        return load_market_hours(path)
    except CalendarUnavailable:
        return None
