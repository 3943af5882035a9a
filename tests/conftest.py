"""Shared fixtures. Keep each group together under its banner."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_cluster import PgCluster, fresh_database
from supabase_db import bootstrap_roles, prepare_database

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
