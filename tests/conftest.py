"""Shared fixtures. Keep each group together under its banner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pg_cluster import PgCluster
from psycopg import sql

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
    """The DSN of a new empty database `test_<hex>`; dropped (connections forced out) after the test."""
    name = f"test_{uuid.uuid4().hex}"
    if not pg_cluster.running:
        pg_cluster.start()
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield pg_cluster.dsn(name)
    if not pg_cluster.running:  # a test stopped the server; bring it back for the next one
        pg_cluster.start()
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# --- (end of real PostgreSQL fixtures) ----------------------------------------------------------
