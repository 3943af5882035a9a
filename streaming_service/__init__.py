"""schwab-supabase streamer: records Schwab's live market data into Supabase/Postgres/SQLite."""

__all__ = ["__version__"]

__version__ = "0.1.0"
