"""All settings, read from the environment and `.env` (environment wins), validated at start-up.

`load_settings()` returns a frozen `Settings` or raises `ConfigError` whose message has one line
per bad variable: its name, the value given (never for secrets) and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streaming_service.errors import ConfigError

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "load_settings"]

DEFAULT_DATABASE_URL = "sqlite:///data/streamer.db"
SINK_SCHEMES = ("sqlite://", "postgresql://", "postgres://")
_SECRETS = {"schwab_app_key", "schwab_app_secret", "supabase_service_role_key"}
_TICKER = re.compile(r"^[A-Z][A-Z0-9./]{0,9}$")


class Settings(BaseSettings):
    """Every variable the service reads. Field descriptions double as the 'allowed' text of errors."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    stream_ticker: Annotated[tuple[str, ...], NoDecode] = Field(
        ("QQQ",), description="one or more tickers separated by commas, e.g. QQQ or QQQ,SPY"
    )
    batch_size: int = Field(10, ge=1, le=10_000, description="an integer from 1 to 10000")
    batch_interval: float = Field(60.0, gt=0, le=3600, description="seconds, > 0 and ≤ 3600")
    row_resolution: int = Field(
        1, ge=0, le=3600, description="seconds per equity row, 0 = one row per trade, ≤ 3600"
    )
    sma_period: int = Field(9, ge=1, le=500, description="bars in the SMA, 1 to 500")
    sma_bar_seconds: int = Field(60, ge=1, le=3600, description="bar length in seconds, 1 to 3600")

    options_enabled: bool = Field(True, description="true or false")
    options_expirations: int = Field(2, ge=1, le=12, description="expirations per underlying, 1 to 12")
    options_strikes: int = Field(10, ge=1, le=50, description="strikes each side of the price, 1 to 50")
    options_interval: int = Field(60, ge=1, le=3600, description="seconds between snapshots, 1 to 3600")

    schwab_app_key: SecretStr | None = Field(None, description="your Schwab app key")
    schwab_app_secret: SecretStr | None = Field(None, description="your Schwab app secret")
    schwab_redirect_uri: str = Field(
        "https://127.0.0.1:8182", description="the callback URL registered with your Schwab app"
    )
    schwab_token_path: Path = Field(
        Path("data/schwab_token.json"), description="path of the schwab-py token file"
    )

    supabase_url: str | None = Field(None, description="https://<project>.supabase.co")
    supabase_service_role_key: SecretStr | None = Field(
        None, description="the service_role key of your Supabase project"
    )
    dead_letter_path: Path = Field(
        Path("data/dead_letters.jsonl"), description="path of the JSON-lines file for rejected rows"
    )
    database_url: str | None = Field(
        None, description="sqlite:///path.db or postgresql://user:pass@host:port/db"
    )

    skip_market_hours: bool = Field(False, description="true or false")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto, json or console"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )

    @field_validator("stream_ticker", mode="before")
    @classmethod
    def _split_tickers(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        tickers = [str(item).strip().upper() for item in items]
        bad = [t for t in tickers if not _TICKER.match(t)]
        if not tickers or bad:
            raise ValueError(f"not a ticker: {bad[0] if bad else ''!r}")
        return tuple(dict.fromkeys(tickers))

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return value.upper() if value.lower() in {"debug", "info", "warning", "error"} else value

    @field_validator("supabase_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must look like https://<project>.supabase.co")
        return value.rstrip("/") if value is not None else None

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(SINK_SCHEMES):
            raise ValueError("unknown database URL scheme")
        return value

    @model_validator(mode="after")
    def _supabase_pair(self) -> Settings:
        if (self.supabase_url is None) != (self.supabase_service_role_key is None):
            missing = "SUPABASE_SERVICE_ROLE_KEY" if self.supabase_service_role_key is None else (
                "SUPABASE_URL"
            )
            raise ValueError(f"{missing} must be set too (Supabase needs both URL and key)")
        return self

    @property
    def sink_url(self) -> str:
        """Where rows go: DATABASE_URL if set, else 'supabase' if configured, else local SQLite."""
        if self.database_url:
            return self.database_url
        if self.supabase_url:
            return "supabase"
        return DEFAULT_DATABASE_URL


def load_settings(**overrides: Any) -> Settings:
    """Read the environment and `.env`, apply `overrides` (CLI flags); raise `ConfigError` if invalid."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a model-level rule; its message names the variables
            lines.append(f"config error: {error['msg'].removeprefix('Value error, ')}")
            continue
        name = str(error["loc"][0])
        field = Settings.model_fields.get(name)
        shown = "<hidden>" if name in _SECRETS else repr(_redact(error["input"]))
        allowed = field.description if field else ""
        default = field.default if field else None
        if isinstance(default, tuple):
            default = ",".join(default)
        lines.append(
            f"config error: {name.upper()}={shown} is invalid "
            f"({error['msg'].removeprefix('Value error, ')}); allowed: {allowed}"
            + (f" (default {default})" if default is not None else "")
            + ". Fix it in .env or the environment."
        )
    return "\n".join(lines)


def _redact(value: Any) -> Any:
    """Hide a password inside a URL: scheme://user:secret@host → scheme://user:***@host."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", value) if isinstance(value, str) else value
