"""Every configuration error names the variable, the value and what is allowed; exit code 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streaming_service.config import DEFAULT_DATABASE_URL, Settings, load_settings
from streaming_service.errors import ConfigError

ALL_VARS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_match_the_spec() -> None:
    settings = load_settings()
    assert settings.stream_ticker == ("QQQ",)
    assert settings.batch_size == 10
    assert settings.batch_interval == 60
    assert settings.skip_market_hours is False
    assert settings.sink_url == DEFAULT_DATABASE_URL


def test_ticker_list_is_split_uppercased_and_deduplicated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_TICKER", " qqq, SPY ,QQQ")
    assert load_settings().stream_ticker == ("QQQ", "SPY")


def test_dotenv_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BATCH_SIZE=25\nBATCH_INTERVAL=30\n")
    monkeypatch.setenv("BATCH_INTERVAL", "15")
    settings = load_settings()
    assert (settings.batch_size, settings.batch_interval) == (25, 15)


@pytest.mark.parametrize(
    ("name", "value", "allowed"),
    [
        ("BATCH_SIZE", "0", "1 to 10000"),
        ("BATCH_SIZE", "ten", "1 to 10000"),
        ("BATCH_INTERVAL", "-5", "> 0"),
        ("STREAM_TICKER", "", "tickers separated by commas"),
        ("STREAM_TICKER", "QQ Q", "tickers separated by commas"),
        ("STREAM_TICKER", "QQQ,,SPY", "tickers separated by commas"),
        ("DATABASE_URL", "mysql://db/x", "sqlite:///"),
        ("ROW_RESOLUTION", "-1", "0 = one row per trade"),
        ("SKIP_MARKET_HOURS", "maybe", "true or false"),
        ("LOG_FORMAT", "xml", "json"),
    ],
)
def test_bad_value_names_variable_value_and_allowed(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{name}={value!r}" in message
    assert allowed in message
    assert len(message.splitlines()) == 1


def test_password_in_a_bad_url_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://user:hunter2@db/x")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)
    assert "user:***@" in str(caught.value)


def test_supabase_needs_url_and_key_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
        load_settings()


def test_secrets_never_appear_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://x.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "very-secret-key")
    monkeypatch.setenv("SCHWAB_APP_SECRET", "app-secret-value")
    settings = load_settings()
    assert "very-secret-key" not in repr(settings)
    assert "app-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE='0'"),
        ({"STREAM_TICKER": "QQ Q"}, "STREAM_TICKER='QQ Q'"),
    ],
)
def test_cli_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streaming_service", "run"],
        env={**os.environ, **env},  # conftest removed our variables from it
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_bad_argument_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streaming_service", "demo", "--duration", "-3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--duration" in result.stderr and "greater than 0" in result.stderr


def test_run_without_token_file_says_how_to_create_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streaming_service", "run"],
        env={
            **os.environ,
            "SCHWAB_APP_KEY": "k",
            "SCHWAB_APP_SECRET": "s",
            "SCHWAB_TOKEN_PATH": str(tmp_path / "missing.json"),
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert "missing.json does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_env_example_documents_every_setting_and_loads_as_is(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    text = example.read_text()
    documented = set(re.findall(r"^#? ?([A-Z_]+)=", text, flags=re.MULTILINE))
    assert set(ALL_VARS) <= documented, set(ALL_VARS) - documented
    (tmp_path / ".env").write_text(text)
    settings = load_settings()
    assert settings.batch_size == 10 and settings.sink_url == DEFAULT_DATABASE_URL


@pytest.mark.parametrize("url", ["xxx.supabase.co", "ftp://x.supabase.co", "https://"])
def test_supabase_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigError, match="SUPABASE_URL") as error:
        load_settings(supabase_url=url, supabase_service_role_key="k")
    assert url in str(error.value) and "https://<project>.supabase.co" in str(error.value)


def test_supabase_is_the_sink_when_configured_and_database_url_is_not() -> None:
    settings = load_settings(supabase_url="https://abc.supabase.co/", supabase_service_role_key="secret-key")
    assert settings.sink_url == "supabase"
    assert settings.supabase_url == "https://abc.supabase.co"
    assert "secret-key" not in repr(settings)


@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_unknown_variable_like_ours_is_an_error_naming_the_closest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    if where == "environment":
        monkeypatch.setenv("STREAM_TICKERS", "SPY")
    else:
        (tmp_path / ".env").write_text("# STREAM_TICKERX=commented out is fine\nSTREAM_TICKERS=SPY\n")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "STREAM_TICKERS" in str(caught.value)
    assert "did you mean STREAM_TICKER?" in str(caught.value)
    assert "STREAM_TICKERX" not in str(caught.value)


def test_variables_of_other_tools_are_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_ACCESS_TOKEN", "cli-token")  # the Supabase CLI's own
    monkeypatch.setenv("PGPASSWORD", "x")
    assert load_settings().stream_ticker == ("QQQ",)


def test_database_url_password_is_not_in_repr() -> None:
    settings = load_settings(database_url="postgresql://user:hunter2@db:5432/x")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert settings.database_url == "postgresql://user:hunter2@db:5432/x"


@pytest.mark.parametrize(
    ("name", "value"),
    [("SHUTDOWN_GRACE", "500"), ("STALE_SECONDS", "1"), ("SINK_TIMEOUT", "0"), ("SPOOL_MAX_MB", "0")],
)
def test_timeouts_and_limits_are_bounded(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
