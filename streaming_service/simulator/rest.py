"""The simulator's REST side: the endpoints schwab-py calls, served by a stdlib HTTP server thread.

`GET /trader/v1/userPreference` (streamer URL and ids), `POST /v1/oauth/token` (refresh),
`GET /marketdata/v1/chains` and `/marketdata/v1/expirationchain` (see `options.py`); anything else
is a 404 naming the path. `write_token_file` makes a token file these endpoints accept.
"""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
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
            self.wfile.write(data)

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
