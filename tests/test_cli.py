"""The command line as a person runs it (subprocesses)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streaming_service", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"streaming-service {metadata.version('schwab-supabase-streamer')}"


# --- demo: what it reads, how it ends, what it leaves --------------------------------------------


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment without any of our variables (a clean user shell), plus `values`."""
    env = dict(os.environ)  # conftest removed our variables
    return {**env, "HEALTH_PORT": "0", "LOG_FORMAT": "json", **values}


def _demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming_service", "demo", "--speed", "300", *args],
        cwd=tmp_path, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _summary(output: str) -> dict[str, int]:
    match = re.search(
        r"traded (\d+) shares; simulator sent (\d+) trades \((\d+) shares\); (\d+) ticks", output
    )
    assert match, output
    return dict(zip(("market", "trades", "shares", "ticks"), map(int, match.groups()), strict=True))


def _db(path: Path) -> tuple[int, set[str]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        volume = conn.execute("SELECT coalesce(sum(volume), 0) FROM equity_data").fetchone()[0]
        tickers = {t for (t,) in conn.execute("SELECT DISTINCT ticker FROM equity_data")}
    return int(volume), tickers


def test_demo_reads_only_health_and_log_settings_from_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "SUPABASE_URL=https://x.supabase.co\nSTREAM_TICKER=SPY\nBATCH_SIZE=abc\nSTREAM_TICKERS=Q\n"
        "DATABASE_URL=postgresql://nobody@127.0.0.1:1/x\nLOG_FORMAT=json\n"
    )
    done = _demo(tmp_path, "--duration", "2")
    assert done.returncode == 0, done.stderr
    volume, tickers = _db(tmp_path / "data" / "demo.db")
    assert tickers == {"QQQ"} and volume == _summary(done.stdout)["market"]


def test_a_bad_flag_is_named_as_the_flag(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--database-url", "mysql://x")
    assert done.returncode == 2
    assert done.stderr.startswith("config error: --database-url 'mysql://x' is invalid"), done.stderr
    assert "DATABASE_URL=" not in done.stderr and ".env" not in done.stderr


def test_a_bad_variable_says_whether_it_came_from_the_environment_or_dotenv(tmp_path: Path) -> None:
    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streaming_service", "check"],
            cwd=tmp_path, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    from_env = check(BATCH_SIZE="abc")
    assert from_env.returncode == 2 and from_env.stderr == "", from_env.stderr
    problem, fix = from_env.stdout.splitlines()[:2]
    assert problem.startswith("✗ configuration: BATCH_SIZE='abc' is invalid")
    assert fix.startswith("    fix: set BATCH_SIZE in the environment (it overrides .env) to ")
    assert from_env.stdout.count("BATCH_SIZE") == 2 and " .env to " not in from_env.stdout
    (tmp_path / ".env").write_text("BATCH_SIZE=abc\n")
    from_file = check()
    assert from_file.returncode == 2 and "fix: set BATCH_SIZE in .env to " in from_file.stdout


def test_rerunning_the_demo_starts_a_fresh_file_unless_keep(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--duration", "2", "--seed", "1")
    second = _demo(tmp_path, "--duration", "2", "--seed", "2")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "a fresh file" in second.stdout
    volume, _ = _db(tmp_path / "data" / "demo.db")
    assert volume == _summary(second.stdout)["market"] != _summary(first.stdout)["market"]
    kept = _demo(tmp_path, "--duration", "2", "--seed", "3", "--keep")
    assert kept.returncode == 0 and "a fresh file" not in kept.stdout
    assert _db(tmp_path / "data" / "demo.db")[0] != _summary(kept.stdout)["market"]  # merged into run 2's


def test_ctrl_c_ends_the_demo_with_every_sent_trade_recorded(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "streaming_service", "demo", "--speed", "120", "--status-every", "0.5"],
        cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as demo:  # fmt: skip
        assert demo.stdout is not None
        for line in demo.stdout:  # the first status line with trades in it
            if re.match(r"streaming ticks=[1-9]", line):
                break
        demo.send_signal(signal.SIGINT)
        output = demo.stdout.read()
    assert demo.returncode == 0, output
    summary = _summary(output)
    print(f"Ctrl-C: {summary}")
    assert summary["ticks"] == summary["trades"] and summary["shares"] == summary["market"]
    assert _db(tmp_path / "data" / "demo.db")[0] == summary["market"]


def test_demo_against_an_unreachable_database_says_where_the_rows_are(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--duration", "1", "--database-url", "postgresql://u:p@127.0.0.1:1/db")
    assert "never awaited" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert re.search(r"; \d+ rows were not written: the database did not take", done.stdout), done.stdout


def test_demo_with_a_database_that_refuses_the_login_exits_4_with_one_message(
    tmp_path: Path, postgres_dsn: str
) -> None:
    missing = postgres_dsn.rsplit("/", 1)[0] + "/no_such_database"
    done = _demo(tmp_path, "--duration", "3", "--database-url", missing)
    assert done.returncode == 4, done.stderr
    assert 'database "no_such_database" does not exist' in done.stderr.splitlines()[-1]
    for noise in ("Traceback", "never awaited", "websockets", "Exception occurred"):
        assert noise not in done.stderr, done.stderr
