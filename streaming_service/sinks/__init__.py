"""Where batches are stored. `sink_for(settings)` picks the configured sink: DATABASE_URL if set,
else Supabase's REST API if SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are, else local SQLite.
`sink_from_url` picks the sink for a database URL:

- `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` → `SQLiteSink`
- `postgresql://user:password@host:port/dbname` (or `postgres://…`) → `PostgresSink`

Every sink is given the dead-letter file (rows the database refuses, `sinks.dead_letters`) and a
timeout (seconds per database request; SQLite: how long a write waits for another process's lock).
The sink modules are imported on first use, so psycopg is only loaded when Postgres is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from streaming_service.errors import ConfigError
from streaming_service.sinks.base import Sink

if TYPE_CHECKING:
    from streaming_service.config import Settings
    from streaming_service.sinks.postgres import PostgresSink
    from streaming_service.sinks.sqlite import SQLiteSink

__all__ = ["PostgresSink", "SQLiteSink", "Sink", "sink_for", "sink_from_url"]

_ALLOWED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql://user:password@host:port/dbname (or postgres://...)"
)


def sink_for(settings: Settings) -> Sink:
    """Return the unopened sink `settings` select (see the module docstring), with
    DEAD_LETTER_PATH and SINK_TIMEOUT."""
    if settings.sink_url == "supabase":
        from streaming_service.sinks.supabase import SupabaseSink

        assert settings.supabase_url is not None
        if settings.supabase_service_role_key is None:
            raise ConfigError(
                "config error: SUPABASE_SERVICE_ROLE_KEY is not set: the service writes to Supabase with "
                "the service_role key (SUPABASE_ANON_KEY can only read, for the dashboard)"
            )
        return SupabaseSink(
            settings.supabase_url,
            settings.supabase_service_role_key.get_secret_value(),
            dead_letter_path=settings.dead_letter_path,
            timeout=settings.sink_timeout,
        )
    return sink_from_url(
        settings.sink_url, dead_letter_path=settings.dead_letter_path, timeout=settings.sink_timeout
    )


def sink_from_url(url: str, *, dead_letter_path: Path | None = None, timeout: float | None = None) -> Sink:
    """Return an unopened sink for `url`; raises `ConfigError` naming the value (password hidden)
    and the allowed forms if the URL is not one of them. `dead_letter_path` None means
    `data/dead_letters.jsonl`; `timeout` None means the sink's default (Postgres 30 s, SQLite 5 s).
    """
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")  # a fourth slash is the root of an absolute path
        if path and not path.endswith("/") and "?" not in path:
            from streaming_service.sinks.sqlite import SQLiteSink

            if timeout is None:
                return SQLiteSink(Path(path), dead_letter_path=dead_letter_path)
            return SQLiteSink(Path(path), busy_timeout=timeout, dead_letter_path=dead_letter_path)
    elif url.startswith(("postgresql://", "postgres://")):
        from streaming_service.sinks.postgres import PostgresSink

        try:
            if timeout is None:
                return PostgresSink(url, dead_letter_path=dead_letter_path)
            return PostgresSink(url, timeout=timeout, dead_letter_path=dead_letter_path)
        except ConfigError:
            raise ConfigError(
                f"invalid database URL {_redact(url)!r}: libpq cannot parse it; use one of: {_ALLOWED}"
            ) from None
    raise ConfigError(f"unsupported database URL {_redact(url)!r}; use one of: {_ALLOWED}")


def _redact(url: str) -> str:
    """`url` with any password replaced by `***`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


def __getattr__(name: str) -> Any:
    if name == "SQLiteSink":
        from streaming_service.sinks.sqlite import SQLiteSink

        return SQLiteSink
    if name == "PostgresSink":
        from streaming_service.sinks.postgres import PostgresSink

        return PostgresSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
