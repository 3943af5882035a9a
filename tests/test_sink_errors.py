"""The one classification of sink errors: HTTP answers (status first, then the body's code) and
SQLSTATEs. End-to-end cases are in test_supabase_sink.py (through the PostgREST double) and
test_sinks.py (real Postgres and SQLite)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from streaming_service.sinks.base import ErrorKind, classify_sqlstate
from streaming_service.sinks.supabase import classify_answer

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
HTML = "<html><head><title>503 Service Temporarily Unavailable</title></head><body>nginx</body></html>"


def pgrst(code: str, message: str = "m", details: str | None = None) -> bytes:
    return json.dumps({"code": code, "details": details, "hint": None, "message": message}).encode()


KEY, MIGRATIONS, URL = "SUPABASE_SERVICE_ROLE_KEY", "apply supabase/migrations", "SUPABASE_URL"
Case = tuple[int, dict[str, str], bytes, ErrorKind, float | None, str]

CASES: list[Case] = [
    # status, headers, body -> kind, retry_after, a word the message or fix must contain
    (401, {}, b'{"message":"Invalid API key"}', "rejected", None, KEY),
    (401, {}, b'{"message":"No API key found in request","hint":"No `apikey` request header"}',
     "rejected", None, KEY),
    (401, {}, pgrst("PGRST301", "JWT invalid"), "rejected", None, KEY),
    (401, {}, pgrst("42501", "permission denied for table equity_data"), "rejected", None, KEY),
    (403, {}, pgrst("42501", "new row violates row-level security policy"), "rejected", None, KEY),
    (403, {"content-type": "text/html"}, b"<html>Forbidden</html>", "rejected", None, KEY),
    (404, {}, pgrst("PGRST205", "Could not find the table"), "rejected", None, MIGRATIONS),
    (404, {}, pgrst("42P01", 'relation "x" does not exist'), "rejected", None, MIGRATIONS),
    (404, {"content-type": "text/html"}, b"<html>Not Found</html>", "rejected", None, URL),
    (404, {}, b"", "rejected", None, URL),
    (400, {}, pgrst("PGRST204", "Could not find the 'x' column"), "rejected", None, MIGRATIONS),
    (400, {}, pgrst("42703", "column x does not exist"), "rejected", None, MIGRATIONS),
    (400, {}, pgrst("42P10", "no unique or exclusion constraint"), "rejected", None, MIGRATIONS),
    (400, {}, pgrst("PGRST102", "Empty or invalid json"), "rejected", None, "PGRST102"),
    (400, {}, pgrst("P0001", "raised by a trigger"), "rejected", None, "P0001"),
    (400, {}, b"Bad Request", "rejected", None, URL),
    (400, {}, pgrst("22003", "numeric field overflow", "precision 10, scale 2"), "bad_rows", None,
     "precision 10"),
    (400, {}, pgrst("22P02", "invalid input syntax for type bigint"), "bad_rows", None, "bigint"),
    (400, {}, pgrst("23502", "null value in column"), "bad_rows", None, "null value"),
    (400, {}, pgrst("23514", "violates check constraint"), "bad_rows", None, "check"),
    (409, {}, pgrst("23505", "duplicate key value"), "bad_rows", None, "duplicate"),
    (500, {}, pgrst("21000", "ON CONFLICT DO UPDATE command cannot affect row a second time"),
     "bad_rows", None, "second time"),
    (408, {}, b"", "unavailable", None, "408"),
    (429, {"retry-after": "2"}, b'{"message":"Too many requests"}', "unavailable", 2.0, "429"),
    (429, {"retry-after": "0.5"}, b"", "unavailable", 0.5, "Too Many Requests"),
    (429, {"retry-after": "Tue, 24 Nov 2026 15:00:30 GMT"}, b"", "unavailable", 30.0, "429"),
    (429, {"retry-after": "Tue, 24 Nov 2026 14:59:00 GMT"}, b"", "unavailable", 0.0, "429"),
    (429, {"retry-after": "soon"}, b"", "unavailable", None, "429"),
    (429, {}, b"", "unavailable", None, "429"),
    (503, {"content-type": "text/html"}, HTML.encode(), "unavailable", None, "HTML page"),
    (503, {"retry-after": "5"}, b'{"message":"upstream connect error"}', "unavailable", 5.0, "upstream"),
    (503, {"proxy-status": "PostgREST; error=PGRST000"}, b"", "unavailable", None, "PGRST000"),
    (503, {}, pgrst("PGRST000", "Database client error"), "unavailable", None, "PGRST000"),
    (504, {}, pgrst("PGRST003", "Timed out acquiring connection"), "unavailable", None, "PGRST003"),
    (502, {}, b"", "unavailable", None, "Bad Gateway"),
    (500, {}, pgrst("40001", "could not serialize access"), "unavailable", None, "40001"),
    (500, {}, pgrst("57014", "canceling statement due to statement timeout"), "unavailable", None, "57014"),
    (500, {}, pgrst("XX000", "internal error"), "unavailable", None, "XX000"),
    (520, {}, b"", "unavailable", None, "520"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "headers", "body", "kind", "retry_after", "word"), CASES)
def test_answers_are_classified_by_status_first_then_code(
    status: int, headers: dict[str, str], body: bytes, kind: ErrorKind, retry_after: float | None, word: str
) -> None:
    answer = classify_answer(status, httpx.Headers(headers), body, now=NOW)
    text = f"{answer.message}; {answer.fix}"
    print(f"{status} {headers} {body[:40]!r} -> {answer.kind} retry_after={answer.retry_after} | {text}")
    assert (answer.kind, answer.retry_after) == (kind, retry_after)
    assert word in text
    if kind == "rejected" and word == KEY:
        assert "migrations" not in text
    if kind == "unavailable":
        assert answer.fix == ""


def test_header_names_are_case_insensitive_with_httpx_headers() -> None:
    answer = classify_answer(429, httpx.Headers({"Retry-After": "7"}), b"", now=NOW)
    assert answer.retry_after == 7.0


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("22003", "bad_rows"), ("22001", "bad_rows"), ("22P02", "bad_rows"), ("22007", "bad_rows"),
        ("23502", "bad_rows"), ("23505", "bad_rows"), ("23514", "bad_rows"), ("21000", "bad_rows"),
        ("08006", "unavailable"), ("08001", "unavailable"), ("40001", "unavailable"),
        ("40P01", "unavailable"), ("53300", "unavailable"), ("55P03", "unavailable"),
        ("57014", "unavailable"), ("57P01", "unavailable"), ("25006", "unavailable"),
        ("XX000", "unavailable"),
        ("28P01", "rejected"), ("28000", "rejected"), ("42501", "rejected"), ("42P01", "rejected"),
        ("42703", "rejected"), ("3D000", "rejected"), ("P0001", "rejected"), ("0A000", "rejected"),
    ],
)  # fmt: skip
def test_sqlstates_are_classified(code: str, kind: ErrorKind) -> None:
    assert classify_sqlstate(code) == kind
