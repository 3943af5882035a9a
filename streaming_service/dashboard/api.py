"""The dashboard's HTTP side: the page's files, `config.json` and the read-only JSON API.

`Dashboard.answer(path, query)` is the `Pages` callback of `http.HealthServer`:

- `/` and every file of `static/` (the page, its script and style, the vendored chart library);
- `/config.json`: where the page reads from: `{"source": "api"}` (this server) or
  `{"source": "supabase", "supabase_url", "anon_key"}` (Supabase's REST API with the anon key;
  never the service-role key), with `tickers`, `refresh_s` and `health` (the /healthz path, or
  null in a static build);
- `/api/tickers`, `/api/series?ticker&day&since&points`, `/api/options?ticker&day`,
  `/api/gaps?ticker&day`, `/api/checks?ticker&day` (the daily proof of the day, or of the latest
  day checked before it: `check` null if none, `table` false without `volume_checks`): JSON from
  `queries.DashboardReader`. A bad parameter is a 400 naming it
  and what is allowed; a database that cannot answer is a 503 with its error.

`write_static_site(directory, config)` writes the same page with a fixed `config.json`, for any
static host.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import structlog

from streaming_service.config import TICKER
from streaming_service.dashboard.queries import DashboardReader, exchange_day
from streaming_service.http import Response, json_response
from streaming_service.models import VolumeCheckRow
from streaming_service.sinks.sqlite import iso_utc
from streaming_service.verify import check_json

if TYPE_CHECKING:
    from streaming_service.config import Settings

__all__ = ["DEFAULT_POINTS", "Dashboard", "page_config", "write_static_site"]

log = structlog.get_logger(__name__)

DEFAULT_POINTS = 2000
REFRESH_S = 5
_POINTS_RANGE = (10, 20_000)
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
}
_ANON_KEY_MISSING = (
    "set SUPABASE_ANON_KEY to see the chart: the anon (publishable) key of your project, "
    "Dashboard → Project Settings → API keys; the page only reads, and never uses the service-role key"
)


class BadRequest(ValueError):
    """A parameter the API refuses (answered 400 with this message)."""


def static_files() -> dict[str, Path]:
    """The page's files by name (index.html, dashboard.js, …)."""
    root = resources.files("streaming_service.dashboard") / "static"
    with resources.as_file(root) as directory:
        if not Path(directory).is_dir():
            return {}
        return {p.name: p for p in sorted(Path(directory).iterdir()) if p.is_file()}


def page_config(settings: Settings, *, health: str | None = "healthz") -> dict[str, Any]:
    """What `config.json` says for `settings`: Supabase (with the anon key) when rows go there,
    else this server's API; `{"error": …}` when Supabase is configured without SUPABASE_ANON_KEY."""
    tickers = list(settings.stream_ticker)
    config: dict[str, Any] = {"health": health, "refresh_s": REFRESH_S, "tickers": tickers}
    if settings.sink_url != "supabase":
        return {"source": "api", **config}
    if settings.supabase_anon_key is None:
        return {"source": "supabase", "error": _ANON_KEY_MISSING, **config}
    return {
        "source": "supabase",
        "supabase_url": settings.supabase_url,
        "anon_key": settings.supabase_anon_key,
        **config,
    }


def write_static_site(directory: Path, config: dict[str, Any]) -> list[Path]:
    """Copy the page's files into `directory` (created) and write `config` as its config.json;
    return the files written. Raises `OSError`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(source, directory / name)) for name, source in static_files().items()]
    config_file = directory / "config.json"
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [*written, config_file]


class Dashboard:
    """Answers the dashboard's paths for one page config and, in API mode, one database reader."""

    def __init__(self, config: dict[str, Any], reader: DashboardReader | None) -> None:
        self._config = json.dumps(config).encode()
        self._tickers: list[str] = list(config.get("tickers", []))
        self._reader = reader
        self._files = static_files()
        self._api: dict[str, Callable[[dict[str, str]], Any]] = {
            "/api/tickers": self._tickers_json,
            "/api/series": self._series_json,
            "/api/options": self._options_json,
            "/api/gaps": self._gaps_json,
            "/api/checks": self._checks_json,
        }

    @classmethod
    def for_settings(cls, settings: Settings, *, health: str | None = "healthz") -> Dashboard:
        """The dashboard of the configured database (Supabase: the page reads it directly)."""
        config = page_config(settings, health=health)
        reader = None if config["source"] == "supabase" else DashboardReader.for_url(settings.sink_url)
        return cls(config, reader)

    @property
    def source(self) -> str:
        """Where the page's data comes from, for a person (no password)."""
        return "Supabase, with the anon key" if self._reader is None else self._reader.name

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()

    async def answer(self, path: str, query: str) -> Response:
        """The answer to GET `path`?`query` (see the module docstring)."""
        if path == "/config.json":
            return Response(200, self._config, headers=(("Cache-Control", "no-store"),))
        name = "index.html" if path == "/" else path.removeprefix("/")
        if name in self._files:
            media = _MEDIA_TYPES.get(Path(name).suffix, "text/plain; charset=utf-8")
            return Response(200, self._files[name].read_bytes(), media, (("Cache-Control", "no-cache"),))
        handler = self._api.get(path)
        if handler is None:
            return json_response(404, {"error": f"not found: {path[:100]}; the page is at /"})
        if self._reader is None:
            return json_response(404, {"error": "this dashboard reads Supabase directly; no API here"})
        try:
            return json_response(200, await handler(_parameters(query)))
        except BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        except Exception as exc:  # the database's error: the page shows it, the recorder goes on
            log.warning("dashboard query failed", path=path, error=str(exc), database=self._reader.name)
            return json_response(503, {"error": f"{self._reader.name}: {type(exc).__name__}: {exc}"})

    async def _tickers_json(self, params: dict[str, str]) -> dict[str, Any]:
        _allow(params)
        assert self._reader is not None
        recorded = await self._reader.tickers()
        return {"tickers": list(dict.fromkeys([*self._tickers, *recorded]))}

    async def _series_json(self, params: dict[str, str]) -> dict[str, Any]:
        _allow(params, "ticker", "day", "since", "points")
        assert self._reader is not None
        ticker = _ticker(params)
        day = await self._day(params, ticker)
        since = _since(params)
        points = _points(params)
        series = await self._reader.series(ticker, day, since=since, points=points)
        return series.as_json()

    async def _options_json(self, params: dict[str, str]) -> dict[str, Any]:
        _allow(params, "ticker", "day")
        assert self._reader is not None
        ticker = _ticker(params)
        day = await self._day(params, ticker)
        taken, contracts = await self._reader.option_snapshot(ticker, day)
        timestamp = None if taken is None else iso_utc(taken)
        return {"ticker": ticker, "day": day.isoformat(), "timestamp": timestamp, "contracts": contracts}

    async def _gaps_json(self, params: dict[str, str]) -> dict[str, Any]:
        _allow(params, "ticker", "day")
        assert self._reader is not None
        ticker = _ticker(params)
        day = await self._day(params, ticker)
        gaps = await self._reader.gaps(ticker, day)
        return {"ticker": ticker, "day": day.isoformat(), "table": gaps is not None, "gaps": gaps or []}

    async def _checks_json(self, params: dict[str, str]) -> dict[str, Any]:
        _allow(params, "ticker", "day")
        assert self._reader is not None
        ticker = _ticker(params)
        day = await self._day(params, ticker)
        found = await self._reader.volume_check(ticker, day)
        check = check_json(found) if isinstance(found, VolumeCheckRow) else None
        return {"ticker": ticker, "day": day.isoformat(), "table": found is not False, "check": check}

    async def _day(self, params: dict[str, str], ticker: str) -> date:
        """The `day` asked for, else the ticker's latest recorded day, else today (New York)."""
        assert self._reader is not None
        asked = _day(params)
        if asked is not None:
            return asked
        return await self._reader.latest_day(ticker) or exchange_day(datetime.now().astimezone())


def _parameters(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=20)
    except ValueError as exc:
        raise BadRequest(f"cannot parse the query string: {exc}") from None
    repeated = [name for name, values in parsed.items() if len(values) > 1]
    if repeated:
        raise BadRequest(f"parameter {repeated[0]!r} given more than once")
    return {name: values[0] for name, values in parsed.items()}


def _allow(params: dict[str, str], *names: str) -> None:
    unknown = sorted(set(params) - set(names))
    if unknown:
        allowed = ", ".join(names) or "none"
        raise BadRequest(f"unknown parameter {unknown[0][:40]!r}; allowed: {allowed}")


def _ticker(params: dict[str, str]) -> str:
    ticker = params.get("ticker", "").strip().upper()
    if not TICKER.match(ticker):
        raise BadRequest(f"ticker={params.get('ticker', '')[:40]!r} is not a ticker; e.g. ticker=QQQ")
    return ticker


def _day(params: dict[str, str]) -> date | None:
    if "day" not in params:
        return None
    try:
        return date.fromisoformat(params["day"])
    except ValueError:
        example = "use YYYY-MM-DD, e.g. day=2026-11-27"
        raise BadRequest(f"day={params['day'][:40]!r} is not a date; {example}") from None


def _since(params: dict[str, str]) -> datetime | None:
    if "since" not in params:
        return None
    try:
        since = datetime.fromisoformat(params["since"])
    except ValueError:
        since = None
    if since is None or since.tzinfo is None:
        raise BadRequest(
            f"since={params['since'][:40]!r} is not an ISO 8601 time with its offset; "
            "e.g. since=2026-11-27T14:30:00%2B00:00 (a '+' is %2B in a URL)"
        )
    return since


def _points(params: dict[str, str]) -> int:
    low, high = _POINTS_RANGE
    text = params.get("points", str(DEFAULT_POINTS))
    if not text.isdigit() or not low <= int(text) <= high:
        raise BadRequest(f"points={text[:40]!r} must be an integer from {low} to {high}")
    return int(text)
