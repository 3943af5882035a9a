"""The dashboard's JSON API over real HTTP, against rows the real SQLite and Postgres sinks wrote;
its downsampling; config.json and the static build; the `dashboard` command in a subprocess."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import command_env
from pg_cluster import free_port
from postgrest_double import make_key

from streaming_service.config import Settings
from streaming_service.dashboard.api import Dashboard, page_config, static_files, write_static_site
from streaming_service.dashboard.queries import DashboardReader, Point, day_bounds, downsample
from streaming_service.http import HealthServer
from streaming_service.models import Batch, EquityRow, GapRow, IndicatorRow, OptionRow
from streaming_service.sinks import PostgresSink, Sink, SQLiteSink

DAY = date(2026, 11, 27)  # a Friday
EARLIER = date(2026, 11, 25)
OPEN = datetime(2026, 11, 27, 14, 30, tzinfo=UTC)  # 09:30 New York


@dataclass
class Recorded:
    """What was written: the rows of DAY and EARLIER (time order), and where to read them."""

    url: str
    day_rows: list[EquityRow]
    indicators: dict[datetime, IndicatorRow]
    earlier_rows: list[EquityRow]
    snapshot_at: datetime
    options: list[OptionRow]
    gaps: list[GapRow]


def _equity(start: datetime, count: int, step_s: float, rng: random.Random) -> list[EquityRow]:
    price, rows = 500.0, []
    for i in range(count):
        price = round(price + rng.uniform(-0.5, 0.5), 2)
        rows.append(EquityRow("QQQ", start + timedelta(seconds=i * step_s), price, rng.randint(1, 900) * 100))
    return rows


def _options(at: datetime) -> list[OptionRow]:
    rows = []
    for expiration in (date(2026, 11, 27), date(2026, 12, 4)):
        for kind in ("CALL", "PUT"):
            for strike in (495.0, 500.0, 505.0):
                iv = 0.2 + abs(strike - 500) / 100
                symbol = f"QQQ   {expiration:%y%m%d}{kind[0]}{int(strike * 1000):08d}"
                rows.append(OptionRow(
                    "QQQ", at, kind, strike, expiration, 2.5, 2.4, 2.6, 10, 1000, iv,  # type: ignore[arg-type]
                    0.5 if kind == "CALL" else -0.5, 0.01, -0.1, 0.2, symbol,
                ))  # fmt: skip
    return rows


async def _record(sink: Sink, url: str) -> Recorded:
    rng = random.Random(7)
    day_rows = _equity(OPEN, 1200, 1.0, rng)
    # 23:30 New York on DAY is 04:30 UTC the next day: still DAY's row.
    day_rows.append(EquityRow("QQQ", datetime(2026, 11, 28, 4, 30, tzinfo=UTC), 499.0, 300))
    # 23:00 New York on EARLIER's next day... 04:00 UTC on DAY is 23:00 the day before: not DAY's.
    earlier_rows = _equity(datetime(2026, 11, 25, 15, 0, tzinfo=UTC), 50, 60.0, rng)
    stray = EquityRow("QQQ", datetime(2026, 11, 27, 4, 0, tzinfo=UTC), 498.0, 100)
    indicators = {
        row.timestamp: IndicatorRow(
            "QQQ", row.timestamp, None if i < 9 else row.price - 0.1, row.price + 0.05
        )
        for i, row in enumerate(day_rows)
    }
    snapshot_at = OPEN + timedelta(minutes=15)
    options = _options(OPEN + timedelta(minutes=10)) + _options(snapshot_at)
    gaps = [
        GapRow("QQQ", OPEN + timedelta(minutes=5), OPEN + timedelta(minutes=6, seconds=30),
               "restart", 1, 2000, False),
        GapRow("QQQ", datetime(2026, 11, 25, 16, 0, tzinfo=UTC), datetime(2026, 11, 25, 16, 5, tzinfo=UTC),
               "disconnect", 4, None, True),
    ]  # fmt: skip
    await sink.write(Batch(
        equity=(*earlier_rows, stray, *day_rows),
        indicators=tuple(indicators.values()),
        options=tuple(options),
        gaps=tuple(gaps),
    ))  # fmt: skip
    return Recorded(url, day_rows, indicators, [*earlier_rows, stray], snapshot_at, options[12:], gaps[:1])


@pytest.fixture(params=["sqlite", "postgres"])
async def recorded(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Recorded]:
    if request.param == "sqlite":
        path = tmp_path / "rows.db"
        url = f"sqlite:///{path}"
        sink: Sink = SQLiteSink(path)
    else:
        url = request.getfixturevalue("postgres_dsn")
        sink = PostgresSink(url, timeout=5)
    await sink.open()
    try:
        yield await _record(sink, url)
    finally:
        await sink.aclose()


@pytest.fixture
async def api(recorded: Recorded) -> AsyncIterator[Api]:
    dashboard = Dashboard({"source": "api", "tickers": ["QQQ", "SPY"]}, DashboardReader.for_url(recorded.url))
    async with HealthServer("127.0.0.1", 0, lambda: (200, {"ok": True}), pages=dashboard.answer) as server:
        yield Api(server.port)
    await dashboard.aclose()


@dataclass
class Api:
    port: int

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        return await asyncio.to_thread(_get, self.port, path, method)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(data) if kind.startswith("application/json") and data else data


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds")


# --- series ----------------------------------------------------------------------------------------


async def test_series_returns_every_row_of_the_day_with_its_indicators(recorded: Recorded, api: Api) -> None:
    status, body = await api.get(f"/api/series?ticker=QQQ&day={DAY}&points=5000")
    assert status == 200, body
    assert (body["day"], body["rows"], body["downsampled"]) == (str(DAY), len(recorded.day_rows), False)
    expected = [
        {"timestamp": _iso(r.timestamp), "price": r.price, "volume": r.volume,
         "sma9": recorded.indicators[r.timestamp].sma9, "vwap": recorded.indicators[r.timestamp].vwap}
        for r in recorded.day_rows
    ]  # fmt: skip
    assert [_rounded(p) for p in body["points"]] == [_rounded(p) for p in expected]


def _rounded(point: dict[str, Any]) -> dict[str, Any]:
    """`point` with its floats as stored (Postgres keeps 4 decimals)."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}


async def test_series_without_a_day_is_the_latest_day_and_an_earlier_day_is_only_its_own(
    recorded: Recorded, api: Api
) -> None:
    status, latest = await api.get("/api/series?ticker=QQQ&points=5000")
    assert status == 200 and latest["day"] == str(DAY) and latest["rows"] == len(recorded.day_rows)
    status, earlier = await api.get(f"/api/series?ticker=QQQ&day={EARLIER + timedelta(days=1)}")
    # 04:00 UTC on DAY is 23:00 New York the evening before: that day's only row.
    assert [p["timestamp"] for p in earlier["points"]] == [_iso(recorded.earlier_rows[-1].timestamp)]
    status, earlier = await api.get(f"/api/series?ticker=QQQ&day={EARLIER}")
    assert earlier["rows"] == 50 and earlier["points"][0]["sma9"] is None
    status, none = await api.get("/api/series?ticker=SPY")
    assert status == 200 and none["rows"] == 0 and none["points"] == []


async def test_series_since_returns_the_rows_from_that_time(recorded: Recorded, api: Api) -> None:
    since = recorded.day_rows[-30].timestamp
    status, body = await api.get(f"/api/series?ticker=QQQ&day={DAY}&since={_iso(since).replace('+', '%2B')}")
    assert status == 200, body
    assert [p["timestamp"] for p in body["points"]] == [_iso(r.timestamp) for r in recorded.day_rows[-30:]]


async def test_downsampled_series_keeps_first_last_min_max_and_all_the_volume(
    recorded: Recorded, api: Api
) -> None:
    status, body = await api.get(f"/api/series?ticker=QQQ&day={DAY}&points=100")
    assert status == 200, body
    points, rows = body["points"], recorded.day_rows
    print(f"downsampled {len(rows)} rows to {len(points)} points (asked 100)")
    assert body["downsampled"] and body["rows"] == len(rows) and len(points) <= 100
    times = [p["timestamp"] for p in points]
    assert times == sorted(set(times))
    assert (points[0]["timestamp"], points[-1]["timestamp"]) == (
        _iso(rows[0].timestamp),
        _iso(rows[-1].timestamp),
    )
    prices = [p["price"] for p in points]
    assert min(prices) == min(r.price for r in rows) and max(prices) == max(r.price for r in rows)
    assert sum(p["volume"] for p in points) == sum(r.volume for r in rows)
    by_time = {_iso(r.timestamp): r for r in rows}
    for point in points:  # every point is a recorded row, with its own indicators
        row = by_time[point["timestamp"]]
        assert point["price"] == row.price
        assert point["vwap"] == pytest.approx(recorded.indicators[row.timestamp].vwap)


def test_downsample_keeps_extremes_and_volume_over_random_days() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        start = datetime(2026, 1, 2, 14, 30, tzinfo=UTC)
        rows = [(start + timedelta(seconds=rng.uniform(0, 23_400)), round(rng.uniform(1, 9), 2),
                 rng.randint(0, 500), None, None) for _ in range(rng.randint(1, 3000))]  # fmt: skip
        rows.sort(key=lambda r: r[0])
        buckets = rng.randint(1, 200)
        points = downsample(rows, rows[0][0], rows[-1][0], buckets)
        assert len(points) <= 4 * buckets
        assert points[0] == Point(*rows[0][:3], None, None) or points[0].timestamp == rows[0][0]
        assert points[-1].timestamp == rows[-1][0]
        assert min(p.price for p in points) == min(r[1] for r in rows)
        assert max(p.price for p in points) == max(r[1] for r in rows)
        assert sum(p.volume for p in points) == sum(r[2] for r in rows)
        assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(points))


# --- options, gaps, tickers ---------------------------------------------------------------------------


async def test_options_are_the_latest_snapshot_of_the_day(recorded: Recorded, api: Api) -> None:
    status, body = await api.get(f"/api/options?ticker=QQQ&day={DAY}")
    assert status == 200, body
    assert body["timestamp"] == _iso(recorded.snapshot_at)
    got = {(c["expiration_date"], c["option_type"], c["strike_price"]): c for c in body["contracts"]}
    assert len(got) == len(recorded.options) == 12
    for row in recorded.options:
        contract = got[(str(row.expiration_date), row.option_type, row.strike_price)]
        assert contract["implied_volatility"] == pytest.approx(row.implied_volatility)
        assert (contract["option_symbol"], contract["bid"], contract["ask"]) == (
            row.option_symbol,
            row.bid,
            row.ask,
        )
    status, empty = await api.get(f"/api/options?ticker=QQQ&day={EARLIER}")
    assert status == 200 and empty["timestamp"] is None and empty["contracts"] == []


async def test_gaps_of_the_day_and_a_missing_gaps_table(recorded: Recorded, api: Api) -> None:
    status, body = await api.get(f"/api/gaps?ticker=QQQ&day={DAY}")
    assert status == 200 and body["table"] is True
    (gap,) = recorded.gaps
    assert body["gaps"] == [{
        "started_at": _iso(gap.started_at), "ended_at": _iso(gap.ended_at), "cause": "restart",
        "equity_backfilled_rows": 1, "volume_missing": 2000, "options_missed": False,
    }]  # fmt: skip
    _sql(recorded.url, "DROP TABLE stream_gaps")
    status, body = await api.get(f"/api/gaps?ticker=QQQ&day={DAY}")
    assert (status, body["table"], body["gaps"]) == (200, False, [])


async def test_tickers_are_the_configured_and_the_recorded_ones(recorded: Recorded, api: Api) -> None:
    _sql(recorded.url, "INSERT INTO equity_data (ticker, timestamp, price, volume) VALUES ('AAPL', "
         "'2026-11-27T15:00:00.000+00:00', 1, 1)")  # fmt: skip
    assert await api.get("/api/tickers") == (200, {"tickers": ["QQQ", "SPY", "AAPL"]})


def _sql(url: str, statement: str) -> None:
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None) as conn:
            conn.execute(statement)
        conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(statement.encode())


# --- bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("/api/series", "ticker"),
        ("/api/series?ticker=qq%20q", "ticker"),
        ("/api/series?ticker=QQQ&day=2026-13-01", "YYYY-MM-DD"),
        ("/api/series?ticker=QQQ&since=2026-11-27T14:30:00", "since"),
        ("/api/series?ticker=QQQ&points=5", "points"),
        ("/api/series?ticker=QQQ&points=abc", "points"),
        ("/api/series?ticker=QQQ&tickr=QQQ", "'tickr'"),
        ("/api/series?ticker=QQQ&ticker=SPY", "more than once"),
        ("/api/options?ticker=QQQ&points=10", "'points'"),
        ("/api/gaps?ticker=QQQ;DROP%20TABLE%20equity_data", "ticker"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(api: Api, query: str, names: str) -> None:
    status, body = await api.get(query)
    assert status == 400 and names in body["error"], body


async def test_unknown_paths_and_methods(api: Api) -> None:
    assert (await api.get("/api/nothing"))[0] == 404
    assert (await api.get("/../pyproject.toml"))[0] == 404
    assert (await api.get("/api/series?ticker=QQQ", method="POST"))[0] == 405
    status, health = await api.get("/healthz")
    assert (status, health) == (200, {"ok": True})


async def test_a_database_that_cannot_answer_is_a_503_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-yet.db"
    dashboard = Dashboard({"source": "api"}, DashboardReader.for_url(f"sqlite:///{missing}"))
    async with HealthServer("127.0.0.1", 0, lambda: (200, {}), pages=dashboard.answer) as server:
        status, body = await Api(server.port).get("/api/series?ticker=QQQ")
    assert status == 503 and "nothing-yet.db does not exist yet" in body["error"]
    assert not missing.exists()  # a reader never creates the database


# --- the page, config.json, the static build -------------------------------------------------------


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_config_for_supabase_carries_the_anon_key_and_never_the_service_role_key() -> None:
    service_key = make_key("service_role")
    settings = _settings(
        supabase_url="https://p.supabase.co", supabase_service_role_key=service_key,
        supabase_anon_key="anon-key", stream_ticker="QQQ,SPY",
    )  # fmt: skip
    config = page_config(settings)
    assert config["source"] == "supabase" and config["anon_key"] == "anon-key"
    assert config["supabase_url"] == "https://p.supabase.co" and config["tickers"] == ["QQQ", "SPY"]
    assert service_key not in json.dumps(config)
    without = page_config(_settings(supabase_url="https://p.supabase.co", supabase_service_role_key="k"))
    assert "SUPABASE_ANON_KEY" in without["error"] and "anon_key" not in without
    assert page_config(_settings(database_url="sqlite:///x.db"))["source"] == "api"


async def test_the_page_and_its_files_are_served(api: Api) -> None:
    files = static_files()
    assert {"index.html", "dashboard.js", "dashboard.css"} <= set(files)
    status, page = await api.get("/")
    assert status == 200 and page == files["index.html"].read_bytes()
    for name in files:
        status, data = await api.get(f"/{name}")
        assert status == 200 and data == files[name].read_bytes(), name
    status, config = await api.get("/config.json")
    assert status == 200 and config["source"] == "api"


def test_static_build_writes_the_page_and_a_supabase_config(tmp_path: Path) -> None:
    config = page_config(
        _settings(supabase_url="https://p.supabase.co", supabase_anon_key="anon"), health=None
    )
    written = write_static_site(tmp_path / "site", config)
    assert {p.name for p in written} == {*static_files(), "config.json"}
    assert json.loads((tmp_path / "site" / "config.json").read_text())["health"] is None


# --- the command ----------------------------------------------------------------------------------


def test_dashboard_command_serves_the_recorded_database(recorded: Recorded, tmp_path: Path) -> None:
    port = free_port()
    env = command_env(DATABASE_URL=recorded.url, HEALTH_PORT=str(free_port()))
    with subprocess.Popen(
        [sys.executable, "-m", "streaming_service", "dashboard", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith(f"dashboard: http://127.0.0.1:{port}/ reading "), line
            assert "password" not in line
            status, body = _get(port, f"/api/series?ticker=QQQ&day={DAY}&points=5000")
            assert status == 200 and body["rows"] == len(recorded.day_rows)
            status, health = _get(port, "/healthz")
            assert status == 503 and health["state"] == "not_running"
        finally:
            process.terminate()
            _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err


def test_dashboard_command_errors_name_the_fix(tmp_path: Path) -> None:
    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streaming_service", "dashboard", *args],
            cwd=tmp_path, env=command_env(**env), capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    built = run("--build", str(tmp_path / "site"))
    assert built.returncode == 2 and "SUPABASE_ANON_KEY" in built.stderr
    built = run(
        "--build", str(tmp_path / "site"), SUPABASE_URL="https://p.supabase.co", SUPABASE_ANON_KEY="a"
    )
    assert built.returncode == 0 and (tmp_path / "site" / "index.html").exists(), built.stderr
    bad = run("--port", "99999")
    assert bad.returncode == 2 and "--port" in bad.stderr and "99999" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = run("--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "--port" in busy.stderr and "already at http://127.0.0.1:" in busy.stderr


def test_demo_serves_the_dashboard_on_its_health_port(tmp_path: Path) -> None:
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "streaming_service", "demo", "--speed", "120"],
        cwd=tmp_path, env=command_env(HEALTH_PORT=str(port)), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(2)]
            assert f"dashboard: http://127.0.0.1:{port}/\n" in lines, lines

            def rows() -> int:
                status, body = _get(port, "/api/series?ticker=QQQ")
                return int(body["rows"]) if status == 200 else 0

            first = _poll(rows, lambda n: n > 0)
            later = _poll(rows, lambda n: n > first)
            print(f"demo dashboard: {first} rows, then {later}, read while the demo writes")
            _poll(lambda: len(_get(port, "/api/options?ticker=QQQ")[1]["contracts"]), lambda n: n > 0)
            status, options = _get(port, "/api/options?ticker=QQQ")
            assert status == 200 and {c["option_type"] for c in options["contracts"]} == {"CALL", "PUT"}
        finally:
            process.terminate()
            process.wait(30)
    assert process.returncode == 0


def _poll(read: Callable[[], int], done: Callable[[int], bool], within: float = 30.0) -> int:
    """Call `read()` until `done(value)`; the value, or an AssertionError after `within` seconds."""
    deadline = time.monotonic() + within
    while not done(value := read()):
        assert time.monotonic() < deadline, f"still {value} after {within} s"
        time.sleep(0.2)
    return value


def test_day_bounds_follow_new_york_daylight_saving() -> None:
    assert day_bounds(date(2026, 3, 8)) == (
        datetime(2026, 3, 8, 5, tzinfo=UTC),
        datetime(2026, 3, 9, 4, tzinfo=UTC),
    )
    assert day_bounds(DAY) == (datetime(2026, 11, 27, 5, tzinfo=UTC), datetime(2026, 11, 28, 5, tzinfo=UTC))


async def test_the_anon_key_alone_serves_the_dashboard_but_never_writes() -> None:
    from streaming_service.check import check_database
    from streaming_service.errors import ConfigError
    from streaming_service.sinks import sink_for

    settings = _settings(supabase_url="https://p.supabase.co", supabase_anon_key="anon")
    assert page_config(settings)["anon_key"] == "anon"
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY is not set"):
        sink_for(settings)
    (result,) = await check_database(settings)
    assert not result.ok and "SUPABASE_SERVICE_ROLE_KEY" in result.fix
    with pytest.raises(ValueError, match="SUPABASE_URL must be set too"):
        _settings(supabase_anon_key="anon")
