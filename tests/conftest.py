"""Shared fixtures. Keep each group together under its banner."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from pg_cluster import PgCluster, fresh_database
from supabase_db import bootstrap_roles, prepare_database

from streaming_service.config import is_our_variable

# --- Hermetic: the user's settings never reach a test, a test never writes where it runs -----------
# Every variable the service reads (DATABASE_URL, SUPABASE_*, ...) is removed from this process's
# environment before any test, so neither the service under test nor a subprocess it starts can
# write to the user's database; every test runs in its own empty working directory, so `./.env` is
# never read and a relative default path (data/streamer.db) lands in a temporary folder.


def pytest_configure(config: pytest.Config) -> None:
    for name in [name for name in os.environ if is_our_variable(name)]:
        del os.environ[name]
    if config.getoption("--clock", None):  # subprocesses pin their clock too (pinned_clock/)
        site = str(Path(__file__).parent / "pinned_clock")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# --- Pinned clock: `pytest --clock 2026-11-26T09:29` -------------------------------------------------
# Each test starts with the wall clock at that instant (New York time unless an offset is given) and
# ticking, in this process (time-machine) and in every Python process it starts. The monotonic clock
# (asyncio's) is untouched, and so are the clocks of Postgres, Docker and Chromium. `scripts/test-any-day`
# runs the suite at a set of such instants.

NEW_YORK = ZoneInfo("America/New_York")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock", metavar="YYYY-MM-DDTHH:MM", default=None, type=_pinned_instant,
        help="start every test with the wall clock at this time (New York unless it has an offset)",
    )  # fmt: skip


def _pinned_instant(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise pytest.UsageError(f"--clock {text!r} is not a time; write it as 2026-11-26T09:29") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=NEW_YORK)


@pytest.fixture(autouse=True)
def _pinned_clock(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    instant: datetime | None = request.config.getoption("--clock")
    if instant is None:
        yield
        return
    monkeypatch.setenv("PINNED_CLOCK_OFFSET_S", str(instant.timestamp() - time.time()))
    with time_machine.travel(instant, tick=True):
        yield


# --- Real PostgreSQL ----------------------------------------------------------------------------
# `pg_cluster`: one throwaway server for the whole session (started on first use, stopped at the
# end; tests may `restart()` it). `postgres_dsn`: a fresh, empty database per test, dropped after.


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A running PostgreSQL server on 127.0.0.1 (trust auth, superuser `postgres`)."""
    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """The DSN of a new empty database on the plain server (no Supabase roles)."""
    with fresh_database(pg_cluster) as dsn:
        yield dsn


@pytest.fixture(scope="module")
def durable_cluster() -> Iterator[PgCluster]:
    """A crash-safe PostgreSQL server of the test module's own: its tests stop it and start it."""
    with PgCluster(durable=True) as cluster:
        yield cluster


@pytest.fixture
def durable_dsn(durable_cluster: PgCluster) -> Iterator[str]:
    """A new empty database on `durable_cluster`, started again if a test left it stopped."""
    if not durable_cluster.running:
        durable_cluster.start()
    with fresh_database(durable_cluster) as dsn:
        yield dsn


# --- Supabase-flavoured PostgreSQL ----------------------------------------------------------------
# A second server with Supabase's roles; `supabase_dsn` is a new database with Supabase's grants and
# every migration applied as `supabase db push` would. Kept apart from `pg_cluster` so the plain
# server never has those roles (the migrations must also work without them).


@pytest.fixture(scope="session")
def supabase_cluster() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        bootstrap_roles(cluster.dsn())
        yield cluster


@pytest.fixture
def supabase_dsn(supabase_cluster: PgCluster) -> Iterator[str]:
    """Superuser DSN of a new database with Supabase's grants and all migrations applied."""
    with fresh_database(supabase_cluster) as dsn:
        prepare_database(dsn)
        yield dsn


# --- (end of real PostgreSQL fixtures) ----------------------------------------------------------
