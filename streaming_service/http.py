"""`/healthz` over a tiny HTTP/1.1 server (stdlib asyncio), and its client for `streaming-service status`.

The server answers `GET|HEAD /healthz` with the snapshot's status code and JSON body; any other
path goes to `pages` (the dashboard) if given, else gets a JSON 404; other methods get 405. One
request per connection (`Connection: close`). Every connection has one deadline for reading the
request and writing the answer; a request head over `MAX_REQUEST_BYTES` gets 431; connections
beyond `max_connections` get 503 at once. Bad requests and vanished clients never raise into the
caller; a failing snapshot or page is logged and answered with 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import structlog

from streaming_service.token import REFRESH_TOKEN_LIFE_S, TokenInfo, describe, format_duration

__all__ = [
    "MAX_REQUEST_BYTES", "HealthServer", "NotThisService", "Pages", "PortHolder", "Response", "Snapshot",
    "fetch_health", "format_health", "json_response", "local_host", "port_holder",
]  # fmt: skip

log = structlog.get_logger(__name__)

#: Returns (HTTP status, JSON-serialisable body), or an awaitable of it; called on the event loop
#: for every /healthz request.
Snapshot = Callable[[], tuple[int, dict[str, Any]] | Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True, slots=True)
class Response:
    """An answer to send: status, body and its media type, extra header lines."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


#: Answers a GET of any path but /healthz: `(path, query string) -> Response`.
Pages = Callable[[str, str], Awaitable[Response]]

MAX_REQUEST_BYTES = 8192
MAX_RESPONSE_BYTES = 1 << 20
_CLOSE_TIMEOUT_S = 1.0
_STREAM_COUNTERS: tuple[tuple[str, str], ...] = (
    ("connects", "connects"),
    ("bad_frames", "bad frames"),
    ("internal_errors", "internal errors"),
)


class HealthServer:
    """Serve `snapshot` at /healthz on `host:port` (0 = a free port). Use `async with` or start/aclose."""

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Snapshot,
        *,
        pages: Pages | None = None,
        timeout: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        """`timeout`: seconds a connection may take to send its request and receive the answer."""
        self._host, self._requested_port = host, port
        self._snapshot = snapshot
        self._pages = pages
        self._timeout = timeout
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closed = False

    async def start(self) -> None:
        """Listen. Raises `OSError` if the address is taken, `RuntimeError` if started or closed before."""
        if self._server is not None or self._closed:
            raise RuntimeError("HealthServer.start() may be called once")
        self._server = await asyncio.start_server(
            self._serve, self._host, self._requested_port, limit=MAX_REQUEST_BYTES
        )
        log.info("health server listening", host=self._host, port=self.port)

    @property
    def port(self) -> int:
        """The bound port (the one picked when 0 was asked). Raises `RuntimeError` before `start()`."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("HealthServer is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def aclose(self) -> None:
        """Stop listening and close open connections; returns within about a second. Idempotent."""
        if self._closed:
            return
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._connections.values():
            writer.close()  # the handler's pending read ends at once
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=_CLOSE_TIMEOUT_S / 2)
            for task in pending:
                self._connections[task].transport.abort()
            if pending:
                await asyncio.wait(pending, timeout=_CLOSE_TIMEOUT_S / 2)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await server.wait_closed()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: read the request, answer, then wait for the client to hang up, all within
        `timeout`. Handlers are never cancelled (aclose closes their connection instead)."""
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            async with asyncio.timeout(self._timeout):
                if len(self._connections) > self._max_connections:
                    reply = _reply(503, {"state": "busy", "ok": False, "error": "too many connections"})
                else:
                    reply = await self._answer(reader)
                writer.write(reply)
                await writer.drain()
                # Closing with unread input would reset the connection and lose the answer:
                # half-close, then read until the client hangs up.
                writer.write_eof()
                while await reader.read(4096):
                    pass
        except (TimeoutError, ConnectionError):
            pass  # a slow or vanished client: nothing to tell it
        except Exception:
            log.exception("health request failed")  # a bug here: logged with its traceback; keep serving
        finally:
            del self._connections[task]
            await _close(writer)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        """Read one request head and return the whole response."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _reply(431, {"error": f"request head over {MAX_REQUEST_BYTES} bytes"})
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("client closed before the end of its request") from exc
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _reply(400, {"error": "not an HTTP/1.x request"})
        method, target = parts[0].decode("latin-1"), urlsplit(parts[1].decode("latin-1"))
        path, head_only = target.path, method == "HEAD"
        if path != "/healthz" and self._pages is None:
            return _reply(404, {"error": f"not found: {path[:100]}; try /healthz"}, head_only=head_only)
        if method not in ("GET", "HEAD"):
            return _reply(405, {"error": "use GET"}, extra="Allow: GET, HEAD\r\n")
        try:
            if path == "/healthz":
                answer = self._snapshot()
                status, body = await answer if inspect.isawaitable(answer) else answer
                return _reply(status, body, head_only=head_only)
            assert self._pages is not None
            return _encode(await self._pages(path, target.query), head_only=head_only)
        except Exception:
            what = "health snapshot" if path == "/healthz" else "page"
            log.exception(f"{what} failed", path=path[:100])
            failed = f"{what} failed; see the service log"
            return _reply(500, {"state": "error", "ok": False, "error": failed})


def json_response(status: int, body: dict[str, Any], *, cache: bool = False) -> Response:
    """A JSON answer. Raises `TypeError`/`ValueError` if `body` is not JSON-able (NaN included)."""
    headers = () if cache else (("Cache-Control", "no-store"),)
    return Response(status, json.dumps(body, allow_nan=False).encode(), headers=headers)


def _reply(status: int, body: dict[str, Any], *, head_only: bool = False, extra: str = "") -> bytes:
    """A complete HTTP/1.1 response with a JSON body. Raises `TypeError`/`ValueError` if not JSON-able."""
    return _encode(json_response(status, body), head_only=head_only, extra=extra)


def _encode(response: Response, *, head_only: bool = False, extra: str = "") -> bytes:
    """The whole HTTP/1.1 response: head (with `extra` header lines) and, unless `head_only`, body."""
    try:
        phrase = HTTPStatus(response.status).phrase
    except ValueError:
        phrase = ""
    lines = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    head = (
        f"HTTP/1.1 {response.status} {phrase}\r\nContent-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\nX-Content-Type-Options: nosniff\r\n"
        f"Connection: close\r\n{lines}{extra}\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else response.body)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close the connection; a peer that does not take the rest within a second is cut off."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (TimeoutError, ConnectionError):
        writer.transport.abort()


def local_host(host: str) -> str:
    """The address that reaches a server listening on `host` from this machine (0.0.0.0 → 127.0.0.1)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class NotThisService(ValueError):
    """What answered at /healthz is not this service's health: `seen` says what it was ("HTTP 404,
    text/html", "HTTP 200, JSON", "not HTTP")."""

    def __init__(self, host: str, port: int, seen: str) -> None:
        super().__init__(f"{host}:{port} is not streaming-service ({seen} at /healthz)")
        self.seen = seen


def fetch_health(host: str, port: int, timeout: float = 3.0) -> tuple[int, dict[str, Any]]:
    """GET /healthz from a `HealthServer` (blocking). `host` 0.0.0.0/:: means this machine.

    Returns (status, body); 503 is a normal answer. Raises `OSError` when nothing answers
    (refused, reset, `TimeoutError` after `timeout` s without progress) and `NotThisService` (a
    `ValueError`) when something else does: not HTTP, more than 1 MiB, or not a JSON object with
    the service's `state` (text) and `ok` (true or false). Never uses a proxy.
    """
    host = local_host(host)
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/healthz", headers={"Accept": "application/json"})
        response = connection.getresponse()
        data = response.read(MAX_RESPONSE_BYTES + 1)
    except http.client.HTTPException as exc:
        if isinstance(exc, ConnectionError):  # RemoteDisconnected is both
            raise
        raise NotThisService(host, port, "not HTTP") from None
    finally:
        connection.close()
    media = (response.getheader("Content-Type") or "no content type").split(";")[0].strip()
    seen = f"HTTP {response.status}, {media}"
    if len(data) > MAX_RESPONSE_BYTES:
        raise NotThisService(host, port, f"{seen}, more than {MAX_RESPONSE_BYTES} bytes")
    try:
        body = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        raise NotThisService(host, port, seen) from None
    ours = isinstance(body, dict) and isinstance(body.get("state"), str) and isinstance(body.get("ok"), bool)
    if not ours:
        raise NotThisService(host, port, f"HTTP {response.status}, JSON")
    return response.status, body


class PortHolder(NamedTuple):
    """What listens on a port: `ours` True for another streaming-service, False for another program,
    None if it cannot be told; `description` says so for a person."""

    ours: bool | None
    description: str


def port_holder(host: str, port: int, timeout: float = 1.0) -> PortHolder:
    """Who listens on `host`:`port`, found cheaply: GET /healthz (blocking, about `timeout` s)."""
    try:
        _, body = fetch_health(host, port, timeout)
    except NotThisService as exc:
        return PortHolder(False, f"a program that is not streaming-service ({exc.seen} at /healthz)")
    except OSError:
        return PortHolder(
            None, f"a program that does not answer HTTP (`lsof -i :{port}` or `ss -ltnp` names it)"
        )
    state, version = _text(body.get("state")), _text(body.get("version"))
    return PortHolder(True, f"another streaming-service (state {state}, version {version})")


def format_health(body: dict[str, Any]) -> str:
    """Several lines for a person: state, per-ticker data age, spool, sink, token, stream counters,
    and the daily proof's latest summary per ticker when the body has `volume_checks`.

    Tolerates missing keys and values of the wrong type (shown as '?').
    """
    ok = body.get("ok")
    verdict = {True: "OK", False: "NOT OK"}.get(ok, "?") if isinstance(ok, bool) else "?"
    lines = [f"state: {_text(body.get('state'))} ({verdict}), version {_text(body.get('version'))}"]
    if isinstance(body.get("error"), str):
        lines.append(f"error: {body['error']}")

    tickers = _section(body, "tickers")
    for ticker, info in sorted(tickers.items()):
        age = _number(info.get("last_data_age_s")) if isinstance(info, dict) else None
        lines.append(f"  {ticker}: " + ("no data yet" if age is None else f"last data {_age(age)} ago"))
    if not tickers:
        lines.append("  tickers: ?")

    spool = _section(body, "spool")
    depth, oldest, dropped = (_number(spool.get(k)) for k in ("depth", "oldest_age_s", "dropped"))
    waiting = "?" if depth is None else f"{depth:.0f}"
    oldest_text = "" if oldest is None else f", oldest {_age(oldest)} old"
    dropped_text = "?" if dropped is None else f"{dropped:.0f}"
    lines.append(f"spool: {waiting} rows waiting{oldest_text}; {dropped_text} dropped")

    sink = _section(body, "sink")
    failing = _number(sink.get("failing_for_s"))
    known = "failing_for_s" in sink and (failing is not None or sink["failing_for_s"] is None)
    state = "?" if not known else "ok" if failing is None else f"failing for {_age(failing)}"
    error = f": {sink['last_error']}" if sink.get("last_error") and failing else ""
    lines.append(f"sink: {_text(sink.get('name'))}, {state}{error}" if sink else "sink: ?")

    lines.append(f"token: {_token_line(_section(body, 'token'))}")

    stream = _section(body, "stream")
    counts = [(_number(stream.get(key)), label) for key, label in _STREAM_COUNTERS]
    lines.append("stream: " + ", ".join(f"{'?' if n is None else f'{n:.0f}'} {label}" for n, label in counts))
    if "volume_checks" in body:  # the daily proof (`verify.latest_checks`): each ticker's latest
        checks = _section(body, "volume_checks")
        for ticker, check in sorted(checks.items()):
            line = check.get("line") if isinstance(check, dict) else None
            mark = "✓" if isinstance(check, dict) and check.get("all_match") is True else "✗"
            lines.append(f"proof: {mark} {ticker} {line}" if isinstance(line, str) else f"proof: {ticker} ?")
        if not checks:
            lines.append("proof: no day checked yet (`streaming-service verify`)")
    return "\n".join(lines)


def _token_line(token: dict[str, Any]) -> str:
    left = _number(token.get("seconds_left"))
    try:
        expires = datetime.fromisoformat(str(token["refresh_expires_at"])).timestamp()
    except (KeyError, ValueError):
        return "unknown" if left is None else f"{format_duration(left)} left"
    if left is None:
        return f"refresh token expires {token['refresh_expires_at']}"
    info = TokenInfo(Path(), expires - REFRESH_TOKEN_LIFE_S, expires)
    return describe(info, now=expires - left)


def _section(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return str(value) if isinstance(value, str) and value else "?"


def _age(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)
