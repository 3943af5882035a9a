"""The simulator's REST side: the endpoints schwab-py calls, served by a stdlib HTTP server thread.

`GET /trader/v1/userPreference` (streamer URL and ids), `POST /v1/oauth/token` (refresh),
`GET /marketdata/v1/chains` and `/marketdata/v1/expirationchain` (see `options.py`),
`GET /marketdata/v1/pricehistory` (candles of the simulated trades, see `_price_history`); anything
else is a 404 naming the path. `write_token_file` makes a token file these endpoints accept.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from streaming_service.simulator.market import SimulatedMarket
    from streaming_service.simulator.server import SchwabSimulator

__all__ = ["rest_handler", "write_token_file"]


def write_token_file(path: Path, *, expires_in_s: int = 86_400) -> None:
    """Write a schwab-py token file the simulator accepts (access token valid `expires_in_s`)."""
    now = int(time.time())
    token = {
        "access_token": "sim-access",
        "refresh_token": "sim-refresh",
        "token_type": "Bearer",
        "expires_in": 1800,
        "expires_at": now + expires_in_s,
        "scope": "api",
        "id_token": "sim-id",
    }
    path.write_text(json.dumps({"creation_timestamp": now, "token": token}))


def rest_handler(sim: SchwabSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            sim.rest_requests.append(("GET", self.path))
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            book = sim.books.get(query.get("symbol", ""))
            if url.path == "/trader/v1/userPreference":
                self._reply(200, _preferences(sim.streamer_url))
            elif url.path.startswith("/marketdata/") and (status := sim.take_market_data_fault()):
                self._reply(status, {"errors": [{"status": status, "title": "simulated fault"}]})
            elif url.path in ("/marketdata/v1/chains", "/marketdata/v1/expirationchain") and book is None:
                self._reply(
                    400, {"errors": [{"status": 400, "title": f"no options for {query.get('symbol')!r}"}]}
                )
            elif url.path == "/marketdata/v1/chains" and book is not None:
                spot = sim.spot(book.underlying)
                self._reply(200, book.chain(spot.price, spot.timestamp_ms, query))
            elif url.path == "/marketdata/v1/expirationchain" and book is not None:
                self._reply(200, book.expiration_chain())
            elif url.path == "/marketdata/v1/pricehistory":
                sim.catch_up()
                self._reply(*_price_history(sim.market, query, sim.candles_complete_by_ms()))
            else:
                self._reply(404, {"errors": [{"status": 404, "title": f"not simulated: {self.path}"}]})

        def do_POST(self) -> None:
            sim.rest_requests.append(("POST", self.path))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != "/v1/oauth/token":
                self._reply(404, {"errors": [{"status": 404, "title": f"not simulated: {self.path}"}]})
            elif not sim.refresh_token_valid:
                self._reply(400, {"error": "invalid_client", "error_description": "refresh token invalid"})
            else:
                self._reply(
                    200,
                    {
                        "access_token": f"sim-access-{int(time.time() * 1000)}",
                        "refresh_token": "sim-refresh",
                        "token_type": "Bearer",
                        "expires_in": 1800,
                        "scope": "api",
                        "id_token": "sim-id",
                    },
                )

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a service stopping): nothing to say

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return None

    return Handler


def _preferences(streamer_url: str) -> dict[str, Any]:
    return {
        "accounts": [{"accountNumber": "SIM0001", "primaryAccount": True, "type": "BROKERAGE"}],
        "streamerInfo": [
            {
                "streamerSocketUrl": streamer_url,
                "schwabClientCustomerId": "sim-customer",
                "schwabClientCorrelId": "sim-correl",
                "schwabClientChannel": "N9",
                "schwabClientFunctionId": "APIAPP",
            }
        ],
        "offers": [{"level2Permissions": False, "mktDataPermission": "NP"}],
    }


# periodType → (default frequencyType, the frequencyTypes Schwab accepts with it)
_FREQUENCY_TYPES = {
    "day": ("minute", ("minute",)),
    "month": ("weekly", ("daily", "weekly")),
    "year": ("monthly", ("daily", "weekly", "monthly")),
    "ytd": ("weekly", ("daily", "weekly")),
}
_MINUTES = (1, 5, 10, 15, 30)


def _price_history(
    market: SimulatedMarket, query: dict[str, str], complete_by_ms: int | None = None
) -> tuple[int, dict[str, Any]]:
    """Status and body of `GET /marketdata/v1/pricehistory` for `query`, from `market.trades`.

    Candles `{"open","high","low","close","volume","datetime"}` in time order, one per period with
    trades (`datetime`: the period's start, epoch ms; `volume`: the exact sum of its trades'
    sizes, unless the market has `candle_noise`), then `"symbol"` and `"empty"` (no candles); with
    `needPreviousClose=true` also `"previousClose"` and `"previousCloseDate"` (see
    `SimulatedMarket.previous_close`).
    - frequencyType `minute` (the default for periodType `day`, the default) with frequency 1, 5,
      10, 15 or 30: candles of that many minutes from the 09:30 open; `daily` with frequency 1:
      one candle for the session, stamped 00:00 Central time. The combinations Schwab refuses
      (e.g. periodType=day with daily) and the ones it allows but the simulator lacks (weekly,
      monthly) are a 400 `{"errors": [{"status": 400, "title": ...}]}`, as is a missing symbol or a
      non-integer frequency/startDate/endDate.
    - startDate/endDate (epoch ms, either optional): a candle is included when its start is in
      `startDate <= datetime <= endDate`. Without them every candle so far (the simulator has one
      session, so any `period` covers it; `period` is ignored).
    - needExtendedHoursData `false` or absent (Schwab's default): minute candles of the regular
      session's trades only (09:30 to the close); `true`: of the whole day's (04:00 to 20:00), if
      the market has extended hours (without them the two are the same); anything else is a 400.
      The daily candle is the whole day's either way.
    - Only trades generated so far, i.e. up to the simulator's clock. `complete_by_ms` None: the
      candle of the period still under way is included with the trades it has so far; else only
      minute candles of periods that ended at or before `complete_by_ms` (see
      `SchwabSimulator(candle_lag_s=...)`).
    - A symbol the market does not trade: 200 with no candles and `"empty": true`, as Schwab
      answers for a symbol without data.
    """
    symbol = query.get("symbol")
    period_type = query.get("periodType", "day")
    if not symbol:
        return _bad_request("symbol is required")
    if period_type not in _FREQUENCY_TYPES:
        return _bad_request(f"periodType {period_type!r} is not one of {', '.join(_FREQUENCY_TYPES)}")
    default, allowed = _FREQUENCY_TYPES[period_type]
    frequency_type = query.get("frequencyType", default)
    if frequency_type not in allowed:
        return _bad_request(f"frequencyType {frequency_type!r} is not valid for periodType {period_type!r}")
    try:
        frequency = int(query.get("frequency", "1"))
        start_ms, end_ms = (int(query[k]) if k in query else None for k in ("startDate", "endDate"))
    except ValueError as exc:
        return _bad_request(f"frequency, startDate and endDate must be integers ({exc})")
    extended = query.get("needExtendedHoursData", "false")
    if extended not in ("true", "false"):
        return _bad_request(f"needExtendedHoursData must be true or false, not {extended!r}")
    if frequency_type == "minute" and frequency in _MINUTES:
        candles = market.candles(
            symbol,
            start_ms,
            end_ms,
            minutes=frequency,
            extended=extended == "true",
            complete_by_ms=complete_by_ms,
        )
    elif frequency_type == "daily" and frequency == 1:
        candles = market.daily_candles(symbol, start_ms, end_ms)
    else:
        return _bad_request(f"frequency {frequency} of {frequency_type!r} is not simulated")
    body: dict[str, Any] = {
        "candles": [
            {
                "open": c.open,
                "high": c.high,
                "low": c.low,
                "close": c.close,
                "volume": c.volume,
                "datetime": c.start_ms,
            }
            for c in candles
        ],
        "symbol": symbol,
        "empty": not candles,
    }
    previous = market.previous_close(symbol)
    if query.get("needPreviousClose") == "true" and previous is not None:
        body["previousClose"], body["previousCloseDate"] = previous
    return 200, body


def _bad_request(title: str) -> tuple[int, dict[str, Any]]:
    return 400, {"errors": [{"status": 400, "title": title}]}
