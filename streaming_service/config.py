"""All settings, read from the environment and `.env` (environment wins), validated at start-up.

`load_settings()` returns a frozen `Settings` or raises `ConfigError` whose message has one line
per bad variable: its name, the value given (never for secrets) and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streaming_service.errors import ConfigError

__all__ = ["DEFAULT_DATABASE_URL", "Settings", "is_our_variable", "load_settings"]

DEFAULT_DATABASE_URL = "sqlite:///data/streamer.db"
SINK_SCHEMES = ("sqlite://", "postgresql://", "postgres://")
_SECRETS = {"schwab_app_key", "schwab_app_secret", "supabase_service_role_key"}
_HIDDEN_IN_REPR = {*_SECRETS, "database_url"}  # errors show DATABASE_URL with its password redacted
#: Prefixes of our variables: an unknown variable starting with one of them is probably a typo.
_OUR_PREFIXES = (
    "STREAM_", "BATCH_", "ROW_", "SMA_", "OPTIONS_", "SCHWAB_", "SUPABASE_", "DEAD_LETTER", "DATABASE_",
    "SKIP_", "LOG_", "SPOOL_", "SHUTDOWN_", "SINK_", "STALE_", "HEALTH_", "MAX_VOLUME",
)  # fmt: skip
#: Variables with one of those prefixes that belong to others (Supabase's own CLI, for instance).
_NOT_OURS = frozenset({"SUPABASE_ACCESS_TOKEN", "SUPABASE_DB_PASSWORD"})
#: A ticker as Schwab spells it (uppercase letters and digits, `.` or `/`, at most 10 characters).
TICKER = re.compile(r"^[A-Z][A-Z0-9./]{0,9}$")


class Settings(BaseSettings):
    """Every variable the service reads. Field descriptions double as the 'allowed' text of errors."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

    def __repr__(self) -> str:  # pydantic's repr would show DATABASE_URL's password
        shown = {name: ("<hidden>" if name in _HIDDEN_IN_REPR and value is not None else value)
                 for name, value in self.__dict__.items()}  # fmt: skip
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    __str__ = __repr__

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
    supabase_anon_key: str | None = Field(
        None, description="the anon (publishable) key of your Supabase project, for the dashboard"
    )
    dead_letter_path: Path = Field(
        Path("data/dead_letters.jsonl"), description="path of the JSON-lines file for rejected rows"
    )
    database_url: str | None = Field(
        None, description="sqlite:///path.db or postgresql://user:pass@host:port/db"
    )

    spool_path: Path = Field(
        Path("data/spool.db"), description="path of the local SQLite outbox (rows waiting for the database)"
    )
    spool_max_mb: int = Field(200, ge=1, le=100_000, description="megabytes, 1 to 100000")
    shutdown_grace: float = Field(
        10.0, ge=0, le=120, description="seconds to keep writing after SIGTERM, 0 to 120"
    )
    sink_timeout: float = Field(10.0, ge=1, le=300, description="seconds per database request, 1 to 300")
    sink_down_alert_s: float = Field(
        300.0, ge=1, le=86_400, description="seconds of failed writes before /healthz says 503, 1 to 86400"
    )
    stale_seconds: float = Field(
        60.0, ge=5, le=3600, description="seconds without a data frame before reconnecting, 5 to 3600"
    )
    max_volume_jump: float = Field(
        10.0, ge=1, le=1_000_000, description="a multiple of the day's volume so far, 1 to 1000000"
    )
    health_port: int = Field(8787, ge=0, le=65_535, description="a TCP port, 0 = no health server")
    health_host: str = Field("127.0.0.1", description="the address /healthz listens on")

    skip_market_hours: bool = Field(False, description="true or false")
    log_format: Literal["auto", "json", "console"] = Field("auto", description="auto, json or console")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR"
    )

    @field_validator("stream_ticker", mode="before")
    @classmethod
    def _split_tickers(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)
        tickers = [str(item).strip().upper() for item in items]
        bad = [t for t in tickers if not TICKER.match(t)]
        if not tickers or bad:
            raise ValueError(f"not a ticker: {bad[0] if bad else ''!r}")
        return tuple(dict.fromkeys(tickers))

    @field_validator(
        "schwab_app_key", "schwab_app_secret", "supabase_url", "supabase_service_role_key",
        "supabase_anon_key", "database_url", mode="before",
    )  # fmt: skip
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """`SCHWAB_APP_KEY=` (as .env.example leaves it) means not set, not an empty key."""
        return None if isinstance(value, str) and not value.strip() else value

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
        """A key needs the URL; the URL needs a key (the anon key alone serves only the dashboard)."""
        if self.supabase_url is None and (self.supabase_service_role_key or self.supabase_anon_key):
            raise _RuleBroken(
                "SUPABASE_URL must be set too (Supabase needs both URL and key)",
                "set SUPABASE_URL too (https://<project>.supabase.co), or remove the Supabase keys",
            )
        if self.supabase_url is not None and not (self.supabase_service_role_key or self.supabase_anon_key):
            raise _RuleBroken(
                "SUPABASE_SERVICE_ROLE_KEY must be set too (Supabase needs both URL and key)",
                "set SUPABASE_SERVICE_ROLE_KEY too (Supabase dashboard: Project Settings > API keys), "
                "or remove SUPABASE_URL",
            )
        return self

    @property
    def sink_url(self) -> str:
        """Where rows go: DATABASE_URL if set, else 'supabase' if configured, else local SQLite."""
        if self.database_url:
            return self.database_url
        if self.supabase_url:
            return "supabase"
        return DEFAULT_DATABASE_URL


_KNOWN = frozenset(name.upper() for name in Settings.model_fields)


class _RuleBroken(ValueError):
    """A rule across variables is broken: the message says which, `fix` what to change."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class _Problem(NamedTuple):
    """One bad variable: the line of `ConfigError`'s message, and what is wrong and what to change."""

    line: str
    what: str
    fix: str


def load_settings(
    flags: dict[str, str] | None = None, *, check_unknown: bool = True, **overrides: Any
) -> Settings:
    """Read the environment and `.env`, apply `overrides`; raise `ConfigError` if invalid or if a
    variable looks like ours but is unknown (`STREAM_TICKERS`), with every such problem at once.
    `flags` maps an override that came from a command-line flag to the flag's name, so an error
    names the flag, not the variable; `check_unknown=False` skips the unknown-variable check (for
    commands that read few variables)."""
    problems: list[_Problem] = []
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = _describe(exc, flags or {})
    if check_unknown:
        problems += _unknown_variables()
    if problems:
        raise ConfigError("\n".join(p.line for p in problems), [(p.what, p.fix) for p in problems])
    return settings


def is_our_variable(name: str) -> bool:
    """True for a setting's variable (`DATABASE_URL`) and for anything that looks like one (a typo
    such as `STREAM_TICKERS`): the variables this service reads or would complain about."""
    upper = name.upper()
    return upper not in _NOT_OURS and (upper in _KNOWN or upper.startswith(_OUR_PREFIXES))


def _unknown_variables(env_file: Path = Path(".env")) -> list[_Problem]:
    """One problem per variable of the environment or `.env` that starts like ours but is not."""
    names: dict[str, str] = {name: "the environment" for name in os.environ}
    names.update(dict.fromkeys(_dotenv_names(env_file), str(env_file)))
    problems = []
    for name, where in sorted(names.items()):
        upper = name.upper()
        if upper in _KNOWN or not is_our_variable(upper):
            continue
        close = difflib.get_close_matches(upper, sorted(_KNOWN), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see .env.example for the known variables"
        what = f"{name} (in {where}) is not a setting of this service"
        fix = (f"rename {name} to {close[0]} in {where}" if close
               else f"remove {name} from {where} (.env.example lists the known variables)")  # fmt: skip
        problems.append(_Problem(f"config error: {what}; {hint}", what, fix))
    return problems


def _describe(exc: ValidationError, flags: dict[str, str]) -> list[_Problem]:
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a model-level rule; its message names the variables
            cause = (error.get("ctx") or {}).get("error")
            fix = cause.fix if isinstance(cause, _RuleBroken) else "change the variables named here"
            problems.append(_Problem(f"config error: {message}", message, fix))
            continue
        name = str(error["loc"][0])
        field = Settings.model_fields.get(name)
        shown = "<hidden>" if name in _SECRETS else repr(_redact(error["input"]))
        allowed = field.description if field else ""
        default = field.default if field else None
        if isinstance(default, tuple):
            default = ",".join(default)
        problem = f"is invalid ({message}); allowed: {allowed}"
        if name in flags:
            flag = f"{flags[name]} {shown}"
            problems.append(_Problem(f"config error: {flag} {problem}.", f"{flag} is invalid ({message})",
                                     f"give {flags[name]} {allowed}"))  # fmt: skip
            continue
        variable, where = name.upper(), _where_set(name.upper())
        reset = "remove it" if default is None else f"remove it for the default ({default})"
        problems.append(_Problem(
            f"config error: {variable}={shown} {problem}"
            + (f" (default {default})" if default is not None else "")
            + f". Fix it in {where}.",
            f"{variable}={shown} is invalid ({message})",
            f"set {variable} in {where} to {allowed}, or {reset}",
        ))  # fmt: skip
    return problems


def _where_set(variable: str, env_file: Path = Path(".env")) -> str:
    """Where a variable's value came from, as far as can be told: the environment wins over .env."""
    if any(name.upper() == variable for name in os.environ):
        return "the environment (it overrides .env)"
    if any(name.upper() == variable for name in _dotenv_names(env_file)):
        return str(env_file)
    return ".env or the environment"


def _dotenv_names(env_file: Path) -> list[str]:
    """The variable names `env_file` sets (none if it cannot be read)."""
    try:
        lines = env_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [
        line.split("=", 1)[0].removeprefix("export ").strip()
        for line in lines
        if "=" in line and not line.lstrip().startswith("#")
    ]


def _redact(value: Any) -> Any:
    """Hide a password inside a URL: scheme://user:secret@host → scheme://user:***@host."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", value) if isinstance(value, str) else value
