"""Make a plain PostgreSQL look like a Supabase project's database, for tests.

`bootstrap_roles(dsn)` creates Supabase's roles once per server (anon and authenticated NOLOGIN,
service_role NOLOGIN BYPASSRLS, and `authenticator`, the login PostgREST uses to switch roles).
`prepare_database(dsn)` gives one database Supabase's schema grants and default privileges (ALL on
new public tables to anon/authenticated/service_role, so RLS is what protects writes), then applies
`supabase/migrations/*.sql` the way `supabase db push` does: in file-name order, each file in one
transaction, its version recorded in `supabase_migrations.schema_migrations`.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

__all__ = ["AUTHENTICATOR", "MIGRATIONS", "apply_migrations", "bootstrap_roles", "prepare_database"]

MIGRATIONS = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
AUTHENTICATOR = "authenticator"

_ROLES = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{AUTHENTICATOR}') THEN
        CREATE ROLE {AUTHENTICATOR} LOGIN NOINHERIT;
    END IF;
END
$$;
GRANT anon, authenticated, service_role TO {AUTHENTICATOR};
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
"""

_DATABASE = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
CREATE SCHEMA IF NOT EXISTS supabase_migrations;
CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations (
    version text PRIMARY KEY, statements text[], name text
);
"""


def bootstrap_roles(dsn: str) -> None:
    """Create Supabase's roles on the server behind `dsn` (a superuser connection); idempotent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_ROLES.encode())


def apply_migrations(dsn: str, files: list[Path] | None = None) -> list[str]:
    """Apply `files` (default: every migration, in name order), each in one transaction, skipping
    versions already recorded; return the versions applied."""
    applied: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in files if files is not None else sorted(MIGRATIONS.glob("*.sql")):
            version, _, name = path.stem.partition("_")
            done = conn.execute(
                "SELECT 1 FROM supabase_migrations.schema_migrations WHERE version = %s", [version]
            ).fetchone()
            if done:
                continue
            with conn.transaction():
                conn.execute(path.read_bytes())
                conn.execute(
                    "INSERT INTO supabase_migrations.schema_migrations (version, name) VALUES (%s, %s)",
                    [version, name],
                )
            applied.append(version)
    return applied


def prepare_database(dsn: str) -> list[str]:
    """Give the database Supabase's grants and apply the migrations; return the versions applied."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DATABASE.encode())
    return apply_migrations(dsn)
