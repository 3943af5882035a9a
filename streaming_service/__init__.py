"""schwab-supabase streamer: records Schwab's live market data into Supabase/Postgres/SQLite."""

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__ = metadata.version("schwab-supabase-streamer")  # pyproject.toml's, as installed
except metadata.PackageNotFoundError:
    __version__ = "unknown (not installed)"
