"""The dashboard page in a real browser (headless Chromium, tests/browser.py), against the real
server: a running demo (SQLite, live updates), `streaming-service dashboard` over Postgres, and
Supabase's REST API (the PostgREST double) read with the anon key, served by the `dashboard`
command and as a static build under a sub-path; config.json's error, and New York day bounds in
another time zone. Run them alone with `pytest -k browser`.

The page's test hook is `window.dashboard` (see the top of static/dashboard.js). Every wait polls
the page with a deadline (`browser.wait_for`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from browser import browser, page_errors, wait_for
from harness import command_env
from pg_cluster import free_port
from postgrest_double import PostgrestDouble, make_key
from selenium import webdriver

from streaming_service.dashboard.api import write_static_site
from streaming_service.dashboard.queries import day_bounds

__all__ = ["browser"]  # the fixture, imported for pytest

#: What the page must have drawn before a test looks at it.
DRAWN = "window.dashboard && window.dashboard.ready && window.dashboard.counts().price > 0"
#: Every (expiration, type) in the option table, as "expiration|type".
TABLE_LINES = """
return [...new Set([...document.querySelectorAll('#options-table tbody tr')].map(
    (tr) => tr.cells[2].textContent + '|' + tr.cells[1].textContent))]
"""


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@contextlib.contextmanager
def _service(args: list[str], cwd: Path, env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run `streaming-service ARGS` until the block ends; return once http://127.0.0.1:PORT/ serves
    config.json (fails with the log's tail if it exits or takes over 30 s)."""
    log = cwd / f"{args[0]}.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [sys.executable, "-m", "streaming_service", *args], cwd=cwd, env=env, stdout=out, stderr=out
        ) as process,
    ):
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    pytest.fail(f"{args[0]} exited {process.returncode}: {log.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    if _get(f"http://127.0.0.1:{port}/config.json")[0] == 200:
                        break
                assert time.monotonic() < deadline, f"not serving after 30 s: {log.read_text()[-2000:]}"
                time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            process.wait(30)


def _record_demo(database_url: str, cwd: Path, speed: int = 120) -> None:
    """Record 8 s of demo (16 simulated minutes at speed 120: SMA9 has values) into `database_url`."""
    subprocess.run(
        [sys.executable, "-m", "streaming_service", "demo", "--speed", str(speed), "--duration", "8",
         "--database-url", database_url],
        cwd=cwd, env=command_env(HEALTH_PORT="0"), capture_output=True, timeout=60, check=True,
    )  # fmt: skip


def _store_proof(dsn: str) -> str:
    """Store a daily proof of the recorded day in volume_checks; the header badge that says it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ((day,),) = conn.execute(
            "INSERT INTO volume_checks (ticker, day, minutes_checked, minutes_matching, shares_recorded, "
            "shares_candles, worst_minute, worst_minute_diff, minutes_filled, checked_at) SELECT 'QQQ', "
            "(max(timestamp) AT TIME ZONE 'America/New_York')::date, 390, 389, 12345678, 12345700, "
            "max(timestamp), -22, 1, now() FROM equity_data RETURNING day"
        ).fetchall()
    return f"proof {day:%b} {day.day}: 389/390 minutes match, 12,345,678 of 12,345,700 shares, 1 filled"


def _assert_proof_badge(driver: webdriver.Chrome, expected: str) -> None:
    wait_for(driver, "window.dashboard.proof !== null", 10, "the daily proof badge")
    badge = driver.find_element("id", "proof")
    assert badge.is_displayed() and badge.text == expected == driver.execute_script(
        "return window.dashboard.proof"
    )
    assert "bad" in str(badge.get_attribute("class"))  # a minute differs


def _open(driver: webdriver.Chrome, url: str, within: float = 30.0) -> float:
    """Load `url`, mark the window (a reload would lose the mark), wait until a chart is drawn;
    the seconds that took."""
    started = time.monotonic()
    driver.get(url)
    driver.execute_script("window.__sameDocument = true;")
    wait_for(driver, DRAWN, within, "the page draws price points")
    return time.monotonic() - started


def _state(driver: webdriver.Chrome) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(
        "const d = window.dashboard; return {source: d.source, ticker: d.ticker, day: d.day, live: d.live,"
        " lastTimestamp: d.lastTimestamp, updates: d.updates, loadMs: d.loadMs, error: d.error,"
        " counts: d.counts(), smile: d.smile(), gaps: d.gaps()};"
    )
    return state


def _status(driver: webdriver.Chrome) -> dict[str, Any]:
    """What the page says of the service: the header's health line, the chart's subtitle, `live`."""
    status: dict[str, Any] = driver.execute_script(
        "return {health: document.getElementById('health').textContent,"
        " subtitle: document.getElementById('subtitle').textContent, live: window.dashboard.live};"
    )
    return status


def _assert_smile_matches_table(driver: webdriver.Chrome) -> dict[str, Any]:
    """Every expiration of the option table has a CALL and a PUT line with points; the state."""
    wait_for(driver, "window.dashboard.smile().length > 0", 30, "the smile is drawn")
    state = _state(driver)
    lines = {f"{s['expiration']}|{s['type']}": s["points"] for s in state["smile"]}
    table = set(driver.execute_script(TABLE_LINES))
    expirations = {line.split("|")[0] for line in table}
    assert expirations, "the option table is empty"
    for expiration in expirations:
        for kind in ("CALL", "PUT"):
            assert lines.get(f"{expiration}|{kind}", 0) > 0, (expiration, kind, lines)
    return state


def _assert_no_script_errors(driver: webdriver.Chrome) -> None:
    """Nothing but failed resource loads (a 503 /healthz is a normal answer) at SEVERE level."""
    errors = [m for m in page_errors(driver) if "Failed to load resource" not in m]
    assert not errors, errors


def test_browser_demo_page_draws_and_updates_live(browser: webdriver.Chrome, tmp_path: Path) -> None:
    port = free_port()
    args = ["demo", "--speed", "60", "--database-url", f"sqlite:///{tmp_path / 'demo.db'}"]
    with _service(args, tmp_path, command_env(HEALTH_PORT=str(port)), port) as service:
        load_s = _open(browser, f"http://127.0.0.1:{port}/")
        wait_for(browser, "window.dashboard.counts().sma9 > 0 && window.dashboard.counts().vwap > 0", 30,
                 "SMA9 and VWAP lines have points")  # fmt: skip
        wait_for(browser, "document.getElementById('health').textContent.startsWith('streaming')", 15,
                 "the health line says streaming")  # fmt: skip
        before = _state(browser)
        assert before["source"] == "api" and before["live"] and before["error"] is None, before
        started = time.monotonic()
        wait_for(
            browser,
            f"Date.parse(window.dashboard.lastTimestamp) > Date.parse({json.dumps(before['lastTimestamp'])})"
            f" || window.dashboard.counts().price > {before['counts']['price']}",
            30,
            "a newer row appears without a reload",
        )
        update_s = time.monotonic() - started
        assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
        assert browser.execute_script("return performance.getEntriesByType('navigation').length") == 1
        after = _assert_smile_matches_table(browser)
        assert after["updates"] >= 1 and after["error"] is None, after
        shot = tmp_path / "dashboard-demo.png"
        browser.save_screenshot(str(shot))
        _assert_no_script_errors(browser)
        assert _status(browser)["subtitle"].endswith("· live"), _status(browser)

        # The service stops: its health cannot be read, and the page no longer says live.
        service.terminate()
        service.wait(30)
        wait_for(browser, "document.getElementById('health').textContent === 'service not reachable'", 15,
                 "the health line says the service is not reachable")  # fmt: skip
        status = _status(browser)
        assert "live" not in status["subtitle"] and not status["live"], status
    print(f"\nscreenshot: {shot}")
    print(
        f"demo page: drawn {load_s:.2f} s after navigation (first load {before['loadMs']} ms); "
        f"{before['counts']} points, then {after['counts']['price']} price points after "
        f"{after['updates']} live refreshes; a newer row showed {update_s:.1f} s after looking; "
        f"smile lines {[(s['expiration'], s['type'], s['points']) for s in after['smile']]}"
    )


def test_browser_dashboard_command_reads_postgres(
    browser: webdriver.Chrome, postgres_dsn: str, tmp_path: Path
) -> None:
    _record_demo(postgres_dsn, tmp_path)
    proof = _store_proof(postgres_dsn)
    port = free_port()
    env = command_env(DATABASE_URL=postgres_dsn, HEALTH_PORT=str(free_port()))
    with _service(["dashboard", "--port", str(port)], tmp_path, env, port):
        load_s = _open(browser, f"http://127.0.0.1:{port}/")
        _assert_proof_badge(browser, proof)
        wait_for(browser, "window.dashboard.counts().sma9 > 0", 10, "the SMA9 line has points")
        state = _assert_smile_matches_table(browser)
        assert state["source"] == "api" and state["error"] is None, state
        # No recording service answers: /healthz is a 503 the page reads as "not running".
        wait_for(browser, "document.getElementById('health').textContent.startsWith('not running')", 15,
                 "the health line says not running")  # fmt: skip
        # The day before has no rows: a message, not an empty chart.
        before = (date.fromisoformat(state["day"]) - timedelta(days=1)).isoformat()
        browser.execute_script(
            "const input = document.getElementById('day'); input.value = arguments[0];"
            "input.dispatchEvent(new Event('change'));",
            before,
        )
        wait_for(browser, f"window.dashboard.day === '{before}' && window.dashboard.ready", 15, "day changed")
        message = browser.find_element("id", "message")
        assert message.is_displayed() and message.text == f"no rows for QQQ on {before}", message.text
        assert not browser.find_element("id", "chart-wrap").is_displayed()
        assert not browser.execute_script("return window.dashboard.live")
        _assert_no_script_errors(browser)
    lines = len(state["smile"])
    print(f"\npostgres page: drawn in {load_s:.2f} s; {state['counts']} points; {lines} smile lines")


#: The option table's cells, row by row, as shown.
TABLE_CELLS = """
return [...document.querySelectorAll('#options-table tbody tr')].map(
    (tr) => [...tr.cells].map((td) => td.textContent))
"""


def _assert_deltas_read_right(driver: webdriver.Chrome, contracts: list[dict[str, Any]]) -> None:
    """The table's delta column: 3 decimals within rounding of the stored delta (`contracts`, the
    API's), never "-0.000": a put's delta that rounds to zero shows 0.000 (the page's number format
    is also tried on such values, whether or not the day has one)."""
    shown = driver.execute_script(
        "return [-0.0004, -0, 0.0004, -0.0006, 0.0006, -0.25, null].map((v) => window.dashboard.format(v, 3))"
    )
    assert shown == ["0.000", "0.000", "0.000", "-0.001", "0.001", "-0.250", "—"], shown
    stored = {
        (float(c["strike_price"]), c["option_type"], c["expiration_date"]): c["delta"] for c in contracts
    }
    rows = driver.execute_script(TABLE_CELLS)
    assert len(rows) == len(stored)
    for strike, kind, expiration, *_, shown in rows:
        delta = stored[(float(strike), kind, expiration)]
        assert re.fullmatch(r"-?\d\.\d{3}", shown), (strike, kind, shown)
        assert not re.fullmatch(r"-0\.0+", shown), (strike, kind, shown)  # negative zero
        assert abs(float(shown) - delta) <= 0.0005 + 1e-9, (strike, kind, expiration, shown, delta)
        if delta <= -0.0005:
            assert shown.startswith("-"), (strike, kind, shown, delta)


def _assert_volume_below_price(driver: webdriver.Chrome) -> None:
    """Volume bars fill a band of their own in the bottom quarter or so of the plot, and price
    (its line and its axis) stays above that band."""
    layout = driver.execute_script("return window.dashboard.layout()")
    (plot_top, plot_bottom), height = layout["plot"], layout["plot"][1] - layout["plot"][0]
    volume_top, volume_base = layout["volume"]
    assert plot_bottom - 0.32 * height <= volume_top and volume_base <= plot_bottom + 1, layout
    assert volume_base - volume_top >= 0.15 * height, layout  # the tallest bar neither vanishes nor dwarfs
    price_top, price_bottom = layout["price"]
    assert plot_top <= price_top and price_bottom <= volume_top, layout
    assert price_bottom - price_top >= 0.4 * height, layout  # price is not squashed
    assert layout["priceAxis"][1] <= volume_top + 2, layout  # no price label beside the volume bars


#: The time axis's labels as drawn: `labels`, the [left, right] of each run of text pixels (CSS
#: px, runs split by 5 px of blank); `rows`, the [top, bottom] of all of them; the axis `width`
#: and `height`; `reference`, the width "00:00" inks in the axis's font.
TIME_AXIS_INK = """
const ratio = window.devicePixelRatio;
const canvases = [...document.querySelectorAll('#chart canvas')];
const lowest = Math.max(...canvases.map((c) => c.getBoundingClientRect().top));
const axis = canvases.filter((c) => c.getBoundingClientRect().top === lowest && c.width > 300);
const { width, height } = axis[0];
const inked = (data, x, y) => {
  const i = (y * width + x) * 4;
  return data[i + 3] > 128 && data[i] + data[i + 1] + data[i + 2] < 3 * 160;
};
const columns = new Array(width).fill(false);
let top = height;
let bottom = -1;
for (const canvas of axis) {
  const data = canvas.getContext('2d').getImageData(0, 0, width, height).data;
  for (let y = Math.ceil(3 * ratio); y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!inked(data, x, y)) continue;
      columns[x] = true;
      top = Math.min(top, y);
      bottom = Math.max(bottom, y);
    }
  }
}
const labels = [];
let blank = Infinity;
columns.forEach((ink, x) => {
  if (!ink) { blank++; return; }
  if (blank >= 5 * ratio) labels.push([x, x]);
  else labels[labels.length - 1][1] = x;
  blank = 0;
});
const sample = document.createElement('canvas');
sample.width = 200 * ratio;
sample.height = 40 * ratio;
const context = sample.getContext('2d');
context.scale(ratio, ratio);
context.font = "12px -apple-system, BlinkMacSystemFont, 'Trebuchet MS', Roboto, Ubuntu, sans-serif";
context.fillStyle = '#000';
context.fillText('00:00', 10, 20);
const pixels = context.getImageData(0, 0, sample.width, sample.height).data;
const xs = [];
for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 128) xs.push(((i - 3) / 4) % sample.width);
return {
  labels: labels.map(([a, b]) => [a / ratio, (b + 1) / ratio]), rows: [top / ratio, (bottom + 1) / ratio],
  width: width / ratio, height: height / ratio, reference: (Math.max(...xs) + 1 - Math.min(...xs)) / ratio,
};
"""


def _assert_time_labels_whole(driver: webdriver.Chrome) -> None:
    """Every label of the price chart's time axis is drawn whole: none is narrower than "00:00"
    (one cut at either edge is), and none touches the axis's bottom."""
    ink = driver.execute_script(TIME_AXIS_INK)
    assert len(ink["labels"]) >= 3, ink
    narrow = [label for label in ink["labels"] if label[1] - label[0] < ink["reference"] - 1]
    assert not narrow, ink
    assert ink["rows"][1] < ink["height"] - 1, ink


def test_browser_recorded_day_reads_clearly(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """A recorded demo day served by `streaming-service dashboard` from SQLite, with nothing
    recording: volume has a band of its own below price, the time axis's labels are whole, the
    option table's numbers read as they should, and the page does not say live."""
    database_url = f"sqlite:///{tmp_path / 'demo.db'}"
    _record_demo(database_url, tmp_path)
    port = free_port()
    env = command_env(DATABASE_URL=database_url, HEALTH_PORT=str(free_port()))
    with _service(["dashboard", "--port", str(port)], tmp_path, env, port):
        _open(browser, f"http://127.0.0.1:{port}/")
        state = _assert_smile_matches_table(browser)
        options = _get(f"http://127.0.0.1:{port}/api/options?ticker=QQQ&day={state['day']}")[1]
        _assert_deltas_read_right(browser, options["contracts"])
        _assert_volume_below_price(browser)
        _assert_time_labels_whole(browser)
        # The latest day is shown, but nothing records it: the page does not call it live.
        wait_for(browser, "document.getElementById('health').textContent.startsWith('not running')", 15,
                 "the health line says not running")  # fmt: skip
        status = _status(browser)
        assert "live" not in status["subtitle"] and not status["live"], status
        _assert_no_script_errors(browser)


def _write_refused(double_url: str, key: str) -> tuple[int, Any]:
    row = {"ticker": "QQQ", "timestamp": "2026-01-02T15:00:00+00:00", "price": 1.0, "volume": 1}
    headers = {"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return _get(f"{double_url}/rest/v1/equity_data", json.dumps([row]).encode(), headers)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def _static_host(root: Path) -> Iterator[int]:
    """A plain static file server for `root` (no API, no config of its own); its port."""
    handler = functools.partial(_Quiet, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def test_browser_reads_supabase_with_the_anon_key(
    browser: webdriver.Chrome, supabase_dsn: str, tmp_path: Path
) -> None:
    _record_demo(supabase_dsn, tmp_path, speed=240)  # over 1000 rows: the page reads them in pages
    proof = _store_proof(supabase_dsn)
    with psycopg.connect(supabase_dsn) as conn:
        ((rows,),) = conn.execute("SELECT count(*) FROM equity_data").fetchall()
    assert rows > 1000
    anon, service_role = make_key("anon"), make_key("service_role")
    with PostgrestDouble(supabase_dsn) as double:
        status, body = _write_refused(double.url, anon)
        assert status in (401, 403) and body["code"] == "42501", (status, body)

        port = free_port()
        env = command_env(SUPABASE_URL=double.url, SUPABASE_ANON_KEY=anon,
                          SUPABASE_SERVICE_ROLE_KEY=service_role, HEALTH_PORT=str(free_port()))  # fmt: skip
        with _service(["dashboard", "--port", str(port)], tmp_path, env, port):
            config = _get(f"http://127.0.0.1:{port}/config.json")[1]
            assert config["source"] == "supabase" and config["anon_key"] == anon
            assert service_role not in json.dumps(config)
            served_s = _open(browser, f"http://127.0.0.1:{port}/")
            _assert_proof_badge(browser, proof)  # volume_checks read with the anon key (RLS)
            served = _assert_smile_matches_table(browser)
            assert served["source"] == "supabase" and served["error"] is None, served
            assert served["counts"]["price"] == rows, (served, rows)  # every page read, each row once

        # The same page as a static build, under a sub-path of a plain file server.
        site = tmp_path / "www" / "some" / "path"
        subprocess.run(
            [sys.executable, "-m", "streaming_service", "dashboard", "--build", str(site)],
            cwd=tmp_path, env=env, capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        with _static_host(tmp_path / "www") as static_port:
            static_s = _open(browser, f"http://127.0.0.1:{static_port}/some/path/")
            built = _assert_smile_matches_table(browser)
            assert built["source"] == "supabase" and built["error"] is None, built
            assert built["counts"] == served["counts"], (built, served)
            assert not browser.find_element("id", "health").is_displayed()  # health: null
            _assert_no_script_errors(browser)

        reads = [r for r in double.requests if r.method == "GET"]
        assert reads and all(r.headers.get("authorization") == f"Bearer {anon}" for r in reads)
        assert all(r.headers.get("apikey") == anon for r in reads)
        assert not [r for r in double.requests if r.method == "POST" and r.headers.get("apikey") != anon]
        equity = [r for r in reads if r.path == "/rest/v1/equity_data"]
        paged = [r for r in equity if r.query.get("offset", ["0"]) != ["0"]]
        assert paged, "no second page asked for"
    print(
        f"\nsupabase page: drawn in {served_s:.2f} s from the dashboard command, {static_s:.2f} s as a "
        f"static build; {rows} rows, {served['counts']} points; {len(reads)} GETs to the double "
        f"({len(paged)} equity pages past the first); anon write refused with {status} {body['code']}"
    )


def test_browser_config_error_and_new_york_days_in_any_time_zone(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """config.json's error is what the page says; the day bounds of its Supabase reads are the
    server's (DST days included) whatever the browser's own time zone."""
    message = "set SUPABASE_ANON_KEY to see the chart"
    config = {"source": "supabase", "error": message, "health": None, "refresh_s": 5, "tickers": ["QQQ"]}
    write_static_site(tmp_path / "site", config)
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    with _static_host(tmp_path / "site") as port:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(browser, "window.dashboard && window.dashboard.error", 15, "the config error is shown")
        banner = browser.find_element("id", "error")
        assert banner.is_displayed() and banner.text == message
        assert browser.execute_script("return window.dashboard.ready") is False
        assert browser.execute_script("return new Date(0).getTimezoneOffset()") == -540  # Tokyo
        for day in ("2026-03-07", "2026-03-08", "2026-03-09", "2026-06-15", "2026-11-01", "2026-11-02",
                    "2026-12-31"):  # fmt: skip
            start, end = browser.execute_script("return window.dashboard.dayBounds(arguments[0])", day)
            expected = day_bounds(date.fromisoformat(day))
            assert (datetime.fromisoformat(start), datetime.fromisoformat(end)) == expected, day
        _assert_no_script_errors(browser)
