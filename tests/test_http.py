"""The /healthz server over real sockets on a free port: answers, refusals, hostile clients, shutdown;
the `status` client and its rendering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from streaming_service.http import (
    MAX_REQUEST_BYTES,
    HealthServer,
    NotThisService,
    fetch_health,
    format_health,
)

BODY: dict[str, Any] = {
    "state": "streaming",
    "ok": True,
    "version": "0.1.0",
    "tickers": {"QQQ": {"last_data_age_s": 1.25}, "SPY": {"last_data_age_s": None}},
    "spool": {"depth": 12, "oldest_age_s": 3.4, "dropped": 0},
    "sink": {"name": "supabase", "failing_for_s": None, "last_error": None},
    "token": {"refresh_expires_at": "2026-12-03T14:00:00+00:00", "seconds_left": 4 * 86_400 + 3 * 3600 + 60},
    "stream": {"connects": 3, "bad_frames": 1, "internal_errors": 0},
}


class Health:
    """What the service would report; tests change it between requests."""

    def __init__(self) -> None:
        self.status, self.body = 200, BODY
        self.calls = 0

    def __call__(self) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        return self.status, self.body


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
async def server(health: Health) -> AsyncIterator[HealthServer]:
    async with HealthServer("127.0.0.1", 0, health, timeout=0.5) as running:
        yield running


async def exchange(port: int, request: bytes, within: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; return (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(within):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split(" ")[1]), headers, body


async def ended_after(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server ends this connection (EOF, or a reset if our bytes were unread)."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    return time.monotonic() - started


async def test_healthz_answers_the_snapshot(server: HealthServer, health: Health) -> None:
    assert server.port > 0
    assert await asyncio.to_thread(fetch_health, "127.0.0.1", server.port) == (200, BODY)
    health.status, health.body = 503, {**BODY, "state": "sink_down", "ok": False}
    assert await asyncio.to_thread(fetch_health, "0.0.0.0", server.port) == (503, health.body)

    status, headers, body = await exchange(server.port, b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 503 and json.loads(body) == health.body
    assert headers["Content-Type"] == "application/json" and headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GET /metrics HTTP/1.1\r\n\r\n", 404, "not found: /metrics; try /healthz"),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405, "use GET"),
        (b"hello\r\n\r\n", 400, "not an HTTP/1.x request"),
        (b"GET /healthz SPDY/3\r\n\r\n", 400, "not an HTTP/1.x request"),
        (b"GET /" + b"a" * MAX_REQUEST_BYTES + b" HTTP/1.1\r\n\r\n", 431, "request head over 8192 bytes"),
    ],
    ids=["other path", "other method", "garbage", "not http", "oversized"],
)
async def test_refusals_are_json_and_the_server_keeps_serving(
    server: HealthServer, health: Health, request_bytes: bytes, status: int, error: str
) -> None:
    got, headers, body = await exchange(server.port, request_bytes)
    assert (got, json.loads(body)["error"]) == (status, error)
    assert headers["Content-Type"] == "application/json"
    assert health.calls == 0
    assert (await asyncio.to_thread(fetch_health, "127.0.0.1", server.port))[0] == 200


async def test_head_has_headers_only(server: HealthServer) -> None:
    status, headers, body = await exchange(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0


async def test_silent_and_trickling_clients_are_cut_off_without_blocking_others(server: HealthServer) -> None:
    silent, silent_writer = await asyncio.open_connection("127.0.0.1", server.port)
    trickle, trickle_writer = await asyncio.open_connection("127.0.0.1", server.port)

    async def drip() -> None:  # a byte every 0.1 s: each read is quick, the request never ends
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            trickle_writer.write(bytes([byte]))
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        started = time.monotonic()
        for _ in range(5):  # meanwhile, others are served at once
            assert (await asyncio.to_thread(fetch_health, "127.0.0.1", server.port, 1.0))[0] == 200
        served_in = time.monotonic() - started
        silent_for, trickle_for = await asyncio.gather(ended_after(silent, 3), ended_after(trickle, 3))
    finally:
        dripping.cancel()
        silent_writer.close()
        trickle_writer.close()
    assert served_in < 0.5
    assert 0.4 < silent_for < 1.0 and 0.4 < trickle_for < 1.0  # the 0.5 s deadline is for the whole request


async def test_connections_beyond_the_limit_get_503(health: Health) -> None:
    async with HealthServer("127.0.0.1", 0, health, timeout=0.5, max_connections=2) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
        status, _, body = await exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert (status, json.loads(body)["error"]) == (503, "too many connections")
        for reader, writer in held:
            await ended_after(reader, 3)
            writer.close()
        assert (await asyncio.to_thread(fetch_health, "127.0.0.1", server.port))[0] == 200


@pytest.mark.parametrize("broken", ["raises", "not json"])
async def test_failing_snapshot_is_a_logged_500(server: HealthServer, health: Health, broken: str) -> None:
    def snapshot() -> tuple[int, dict[str, Any]]:
        if broken == "raises":
            raise KeyError("spool")
        return 200, {"spool": {"oldest_age_s": math.nan}}

    server._snapshot = snapshot
    with capture_logs() as logs:
        status, body = await asyncio.to_thread(fetch_health, "127.0.0.1", server.port)
    assert status == 500 and body["error"] == "health snapshot failed; see the service log"
    assert [(e["event"], e["log_level"], e.get("exc_info")) for e in logs] == [
        ("health snapshot failed", "error", True)
    ]


async def test_aclose_is_idempotent_prompt_and_frees_the_port(health: Health) -> None:
    server = HealthServer("127.0.0.1", 0, health, timeout=30)
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # held for up to 30 s
    writer.write(b"GET /hea")
    started = time.monotonic()
    await server.aclose()
    closed_in = time.monotonic() - started
    await ended_after(reader, 1)
    writer.close()
    await server.aclose()
    assert closed_in < 1.0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    with pytest.raises(RuntimeError):
        server.port  # noqa: B018
    with pytest.raises(RuntimeError):
        await server.start()


async def test_fetch_health_nothing_listening_silent_or_not_json() -> None:
    server = HealthServer("127.0.0.1", 0, Health())
    await server.start()
    port = server.port
    await server.aclose()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(fetch_health, "127.0.0.1", port)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; ends when the client hangs up
        writer.close()

    async def html(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\n<html>")
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(silent, "127.0.0.1", 0) as quiet:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(fetch_health, "127.0.0.1", quiet.sockets[0].getsockname()[1], 0.3)
        assert time.monotonic() - started < 1.0
    async with await asyncio.start_server(html, "127.0.0.1", 0) as other:
        with pytest.raises(ValueError):
            await asyncio.to_thread(fetch_health, "127.0.0.1", other.sockets[0].getsockname()[1])


def test_format_health_for_a_person() -> None:
    assert format_health(BODY).splitlines() == [
        "state: streaming (OK), version 0.1.0",
        "  QQQ: last data 1.2 s ago",
        "  SPY: no data yet",
        "spool: 12 rows waiting, oldest 3.4 s old; 0 dropped",
        "sink: supabase, ok",
        "token: refresh token expires 2026-12-03 14:00 UTC (in 4 d 3 h)",
        "stream: 3 connects, 1 bad frames, 0 internal errors",
    ]
    down = {
        **BODY,
        "state": "sink_down",
        "ok": False,
        "sink": {"name": "supabase", "failing_for_s": 420.0, "last_error": "503 from PostgREST"},
        "token": {"refresh_expires_at": "2026-12-03T14:00:00+00:00", "seconds_left": -7200.0},
    }
    lines = format_health(down).splitlines()
    assert lines[0] == "state: sink_down (NOT OK), version 0.1.0"
    assert lines[4] == "sink: supabase, failing for 7 min: 503 from PostgREST"
    assert lines[5] == "token: refresh token expired 2 h 0 min ago: run `streaming-service auth`"


@pytest.mark.parametrize(
    "body",
    [{}, {"ok": "yes", "tickers": [], "spool": None, "sink": 3, "token": {"refresh_expires_at": "soon"}},
     {"tickers": {"QQQ": None}, "stream": {"connects": True}, "token": {"seconds_left": 90.0}}],
)  # fmt: skip
def test_format_health_tolerates_missing_and_odd_values(body: dict[str, Any]) -> None:
    text = format_health(body)
    assert text.startswith("state: ? (?), version ?") and "stream: ? connects" in text
    assert text.count("\n") >= 5


async def test_fetch_health_refuses_json_that_is_not_the_services() -> None:
    async def other_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"ok": true}'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
        writer.write(head + body)
        await writer.drain()
        writer.close()

    async with await asyncio.start_server(other_api, "127.0.0.1", 0) as other:
        with pytest.raises(NotThisService) as refused:
            await asyncio.to_thread(fetch_health, "127.0.0.1", other.sockets[0].getsockname()[1])
    assert refused.value.seen == "HTTP 200, JSON"


def test_format_health_says_ok_only_where_the_service_said_so() -> None:
    text = format_health({"state": "not_running", "ok": False, "error": "no service answers"})
    assert text.splitlines()[:2] == ["state: not_running (NOT OK), version ?", "error: no service answers"]
    assert "sink: ?" in text.splitlines() and not re.search(r"\bok\b", text)
