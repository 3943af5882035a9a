"""A test double for Supabase's REST API (PostgREST), over a real PostgreSQL database.

It speaks the subset supabase-py uses, as captured in shared/reference/supabase-py.md:

- `POST /rest/v1/<table>?on_conflict=a,b&columns="x","y"` with `Prefer: return=minimal|representation,
  resolution=merge-duplicates|ignore-duplicates[, missing=default]`: one `INSERT ... SELECT FROM
  json_to_recordset(body) ON CONFLICT (...) DO UPDATE|DO NOTHING` in one transaction (all or nothing);
  201, or 200 when merge-duplicates inserted no row. (`missing=default` is accepted and ignored:
  a key absent from a row inserts NULL.)
- `GET /rest/v1/<table>?select=a,b&<column>=<op>.<value>&order=a.asc,b.desc&limit=n&offset=m`: rows
  as a JSON array, the filters ANDed (`eq`, `neq`, `gt`, `gte`, `lt`, `lte`; a column may have
  several), at most `max_rows` of them (PostgREST's `db-max-rows`; Supabase's default is 1000)
  whatever `limit` asks for.

Each request runs as the role named by the JWT in `Authorization: Bearer` (HS256, `JWT_SECRET`):
the double logs in as `authenticator` and `SET LOCAL ROLE`s, so grants and RLS are Postgres's own.
Errors are `{"code","details","hint","message"}` with PostgREST's SQLSTATE → HTTP status mapping;
a lost database connection is 503 PGRST000.

Browsers may call it: every answer carries `Access-Control-Allow-Origin: *` and `OPTIONS`
preflights are answered, as Supabase's gateway does.

Faults on demand, without touching the database: `fail_next(n, "503" | "timeout" | "close",
table=None)` makes the next n requests (for `table`, if given) answer 503 PGRST000, hang until the
client gives up, or drop the connection; `answer_next(n, status, body, headers=..., table=None)`
makes them answer exactly that (a gateway's 401 `{"message":"Invalid API key"}`, a 429 with
`Retry-After`, a proxy's 503 HTML page). Faults are taken in the order they were queued.
Every request is recorded in `requests` (method, path, query, headers, body).

Database connections are pooled (idle ones kept for the next request; a broken one is dropped), as
PostgREST's are. `delay_s` adds that many seconds to every answer: a network round trip, for
benchmarks.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import jwt
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["JWT_SECRET", "Answer", "PostgrestDouble", "Recorded", "make_key"]

JWT_SECRET = "test-secret-with-at-least-32-characters!!"
#: Query parameters that are not filters.
_NOT_FILTERS = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns"})
_OPERATORS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


@dataclass(frozen=True, slots=True)
class Answer:
    """A canned HTTP answer: `body` is sent as is (bytes or text) or as JSON (dict or list)."""

    status: int
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: tuple[tuple[str, str], ...] = ()

    def encoded(self) -> tuple[bytes, list[tuple[str, str]]]:
        headers = list(self.headers)
        if isinstance(self.body, bytes):
            return self.body, headers
        if isinstance(self.body, str):
            return self.body.encode(), headers
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json; charset=utf-8"))
        return json.dumps(self.body).encode(), headers


Fault = Literal["503", "timeout", "close"] | Answer


def make_key(role: str, secret: str = JWT_SECRET) -> str:
    """A Supabase-style API key: a JWT whose `role` claim picks the database role."""
    return jwt.encode({"role": role, "iss": "supabase-test"}, secret, algorithm="HS256")


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class _ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None
    ):
        super().__init__(message)
        self.status, self.body = status, {"code": code, "details": details, "hint": hint, "message": message}


def status_for(sqlstate: str, role: str) -> int:
    """PostgREST's mapping of a SQLSTATE to an HTTP status (Error.hs `mapSQLtoHTTP`)."""
    exact = {"23503": 409, "23505": 409, "25006": 405, "42883": 404, "42P01": 404, "42P17": 500,
             "21000": 500, "53400": 500, "57P01": 503, "P0001": 400}  # fmt: skip
    if sqlstate in exact:
        return exact[sqlstate]
    if sqlstate == "42501":
        return 401 if role == "anon" else 403
    prefixes = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500, "38": 500,
                "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500, "57": 500, "58": 500,
                "F0": 500, "HV": 500, "P0": 500, "XX": 500}  # fmt: skip
    return prefixes.get(sqlstate[:2], 400)


class PostgrestDouble:
    """Serve the REST subset on 127.0.0.1 over the database at `dsn` (a superuser DSN; requests log
    in as `authenticator` on the same server). Use as a context manager; `url` is the project URL.
    `max_rows` caps the rows of a GET (None: no cap)."""

    def __init__(self, dsn: str, *, max_rows: int | None = 1000, delay_s: float = 0.0) -> None:
        params = conninfo_to_dict(dsn)
        params["user"] = "authenticator"
        self._dsn = make_conninfo(**params)  # type: ignore[arg-type]
        self.max_rows = max_rows
        self.delay_s = delay_s
        self._idle: list[psycopg.Connection] = []
        self.requests: list[Recorded] = []
        self._faults: list[tuple[Fault, str | None]] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="postgrest-double", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PostgrestDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()  # let hung "timeout" requests go
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def fail_next(self, count: int, fault: Fault, *, table: str | None = None) -> None:
        """Fail the next `count` requests (only those for `table`, if given) with `fault`."""
        with self._lock:
            self._faults.extend([(fault, table)] * count)

    def answer_next(
        self,
        count: int,
        status: int,
        body: bytes | str | dict[str, Any] | list[Any] = b"",
        *,
        headers: dict[str, str] | None = None,
        table: str | None = None,
    ) -> None:
        """Answer the next `count` requests (for `table`, if given) with exactly this status, body
        and headers (a JSON body for a dict or list, else the bytes or text as they are)."""
        self.fail_next(count, Answer(status, body, tuple((headers or {}).items())), table=table)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for index, (fault, table) in enumerate(self._faults):
                if table is None or path == f"/rest/v1/{table}":
                    del self._faults[index]
                    return fault
            return None

    # --- request handling (server threads) -------------------------------------------------------

    def _role(self, headers: dict[str, str]) -> str:
        if "apikey" not in headers:
            raise _ApiError(401, "401", "No API key found in request", hint="No `apikey` request header")
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        try:
            claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise _ApiError(401, "PGRST301", f"JWT invalid: {exc}") from None
        return str(claims.get("role", "anon"))

    def _columns(self, conn: psycopg.Connection, table: str) -> dict[str, str]:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            [table],
        ).fetchall()
        if not rows:
            raise _ApiError(404, "PGRST205", f"Could not find the table 'public.{table}' in the schema cache")
        return {str(name): str(kind) for name, kind in rows}

    def _run(self, role: str, work: Any) -> Any:
        try:
            return self._pooled(role, work)
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None:
                raise _ApiError(503, "PGRST000", "Database client error. Retrying the connection.",
                                details=str(exc)) from None  # fmt: skip
            raise _sql_error(exc, role) from None
        except psycopg.Error as exc:
            raise _sql_error(exc, role) from None

    def _pooled(self, role: str, work: Any) -> Any:
        """`work(conn)` in one transaction as `role`, on an idle pooled connection or a new one; the
        connection goes back to the pool unless it broke."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = psycopg.connect(self._dsn, connect_timeout=5, autocommit=True)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                return work(conn)
        finally:
            if conn.closed or conn.broken:
                conn.close()
            else:
                with self._lock:
                    self._idle.append(conn)

    def upsert(
        self, role: str, table: str, query: dict[str, list[str]], prefer: set[str], body: Any
    ) -> tuple[int, Any]:
        if isinstance(body, dict):  # a single object is one row
            body = [body]
        if not isinstance(body, list) or not all(isinstance(row, dict) for row in body):
            raise _ApiError(400, "PGRST102", "Empty or invalid json")
        on_conflict = [c for c in (query.get("on_conflict") or [""])[0].split(",") if c]
        listed = (query.get("columns") or [""])[0]
        names = (
            [c.strip().strip('"') for c in listed.split(",") if c.strip()]
            if listed
            else sorted({k for row in body for k in row})
        )
        representation = "return=representation" in prefer
        ignore = "resolution=ignore-duplicates" in prefer

        def work(conn: psycopg.Connection) -> tuple[int, Any]:
            types = self._columns(conn, table)
            for name in names:
                if name not in types:
                    raise _ApiError(
                        400,
                        "PGRST204",
                        f"Could not find the '{name}' column of '{table}' in the schema cache",
                    )
            if not names:
                return (200 if not ignore else 201), ([] if representation else None)
            cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
            record = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names
            )
            statement = sql.SQL(
                "INSERT INTO {} ({}) SELECT {} FROM json_to_recordset(%s::json) AS _({})"
            ).format(sql.Identifier("public", table), cols, cols, record)
            if on_conflict:
                target = sql.SQL(", ").join(sql.Identifier(c) for c in on_conflict)
                if ignore:
                    action = sql.SQL("DO NOTHING")
                else:
                    action = sql.SQL("DO UPDATE SET ") + sql.SQL(", ").join(
                        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n))
                        for n in names
                    )
                statement += sql.SQL(" ON CONFLICT ({}) ").format(target) + action
            statement += sql.SQL(" RETURNING (xmax = 0) AS _inserted, row_to_json({}.*) AS _row").format(
                sql.Identifier(table)
            )
            rows = conn.execute(statement, [json.dumps(body)]).fetchall()
            inserted = sum(1 for flag, _ in rows if flag)
            status = 200 if (on_conflict and not ignore and inserted == 0) else 201
            return status, ([r for _, r in rows] if representation else None)

        result: tuple[int, Any] = self._run(role, work)
        return result

    def select(self, role: str, table: str, query: dict[str, list[str]]) -> list[Any]:
        wanted = [c for c in (query.get("select") or ["*"])[0].split(",") if c]
        caps = [int(query["limit"][0])] if "limit" in query else []
        if self.max_rows is not None:
            caps.append(self.max_rows)
        offset = int((query.get("offset") or ["0"])[0])

        def work(conn: psycopg.Connection) -> list[Any]:
            types = self._columns(conn, table)
            for name in wanted:
                if name != "*" and name not in types:
                    raise _ApiError(400, "42703", f"column {table}.{name} does not exist")
            cols = sql.SQL("*") if wanted == ["*"] else sql.SQL(", ").join(sql.Identifier(c) for c in wanted)
            where, params = _filters(table, types, query)
            statement = sql.SQL("SELECT {} FROM {} WHERE {}").format(
                cols, sql.Identifier("public", table), where
            ) + _order(table, types, query)
            if caps:
                statement += sql.SQL(" LIMIT %s")
                params.append(min(caps))
            statement += sql.SQL(" OFFSET %s")
            params.append(offset)
            wrapped = sql.SQL("SELECT row_to_json(t) FROM ({}) t").format(statement)
            return [r[0] for r in conn.execute(wrapped, params).fetchall()]

        result: list[Any] = self._run(role, work)
        return result


def _filters(
    table: str, types: dict[str, str], query: dict[str, list[str]]
) -> tuple[sql.Composable, list[Any]]:
    """The WHERE condition (`true` without filters) and its parameters, each value cast to its
    column's type as PostgREST does."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    for column, values in query.items():
        if column in _NOT_FILTERS:
            continue
        if column not in types:
            raise _ApiError(400, "42703", f"column {table}.{column} does not exist")
        for value in values:
            op, _, operand = value.partition(".")
            if op not in _OPERATORS:
                raise _ApiError(400, "PGRST100", f'"failed to parse filter ({value})" (line 1, column 1)')
            operator, kind = sql.SQL(_OPERATORS[op]), sql.SQL(types[column])
            conditions.append(sql.SQL("{} {} %s::{}").format(sql.Identifier(column), operator, kind))
            params.append(operand)
    return sql.SQL(" AND ").join(conditions), params


def _order(table: str, types: dict[str, str], query: dict[str, list[str]]) -> sql.Composable:
    """` ORDER BY ...` from `order=a.asc,b.desc` (empty without it)."""
    terms: list[sql.Composable] = []
    for term in (query.get("order") or [""])[0].split(","):
        if not term:
            continue
        column, _, direction = term.partition(".")
        if column not in types:
            raise _ApiError(400, "42703", f"column {table}.{column} does not exist")
        descending = direction.split(".")[0] == "desc"
        terms.append(sql.Identifier(column) + sql.SQL(" DESC" if descending else " ASC"))
    return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms) if terms else sql.SQL("")


def _sql_error(exc: psycopg.Error, role: str) -> _ApiError:
    state = exc.sqlstate or "XX000"
    diag = exc.diag
    return _ApiError(
        status_for(state, role),
        state,
        diag.message_primary or str(exc),
        diag.message_detail,
        diag.message_hint,
    )


def _handler(double: PostgrestDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as two writes: without this, Nagle + delayed ACK add ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_OPTIONS(self) -> None:
            """A browser's CORS preflight, answered as Supabase's gateway does: any origin."""
            self._send(200, b"", [
                ("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", self.headers.get("Access-Control-Request-Headers", "*")),
                ("Access-Control-Max-Age", "3600"),
            ])  # fmt: skip

        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            headers = {k.lower(): v for k, v in self.headers.items()}
            raw = self.rfile.read(int(headers.get("content-length") or 0))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            double.requests.append(Recorded(method, url.path, query, headers, body))
            fault = double._take_fault(url.path)
            if fault == "close":
                self.close_connection = True
                self.connection.close()
                return
            if fault == "timeout":
                double._release.wait(timeout=60)  # hang until the client gives up (or the double stops)
                self.close_connection = True
                return
            if isinstance(fault, Answer):
                self._send(fault.status, *fault.encoded())
                return
            if double.delay_s:
                time.sleep(double.delay_s)  # a network round trip (benchmarks)
            try:
                if fault == "503":
                    raise _ApiError(503, "PGRST000", "Database client error. Retrying the connection.")
                status, payload = self._dispatch(method, url.path, query, headers, body)
            except _ApiError as err:
                self._reply(err.status, err.body, error=True)
                return
            self._reply(status, payload)

        def _dispatch(
            self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any
        ) -> tuple[int, Any]:
            if not path.startswith("/rest/v1/"):
                raise _ApiError(404, "404", f"no route {path}")
            role = double._role(headers)
            table = path.removeprefix("/rest/v1/")
            if method == "GET":
                return 200, double.select(role, table, query)
            prefer = {p.strip() for p in headers.get("prefer", "").split(",") if p.strip()}
            return double.upsert(role, table, query, prefer, body)

        def _reply(self, status: int, payload: Any, *, error: bool = False) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            headers: list[tuple[str, str]] = []
            if data:
                headers.append(("Content-Type", "application/json; charset=utf-8"))
            if error:
                headers.append(("Proxy-Status", f"PostgREST; error={payload['code']}"))
            self._send(status, data, headers)

        def _send(self, status: int, data: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            self.send_header("Access-Control-Allow-Origin", "*")  # Supabase answers any origin
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler
