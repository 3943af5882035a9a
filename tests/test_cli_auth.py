"""`streaming-service auth` as a person runs it (the login itself is tested in test_token.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streaming_service.simulator import write_token_file


def auth(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)  # conftest removed our variables
    env.update(SCHWAB_TOKEN_PATH=str(tmp_path / "token.json"), SCHWAB_APP_KEY="k", SCHWAB_APP_SECRET="s")
    command = [sys.executable, "-m", "streaming_service", "auth", *args]
    return subprocess.run(
        command, cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def test_auth_status_says_when_the_refresh_token_expires(tmp_path: Path) -> None:
    write_token_file(tmp_path / "token.json")
    result = auth(tmp_path, "--status")
    assert result.returncode == 0, result.stderr
    assert "refresh token expires" in result.stdout and "(in 6 d 23 h)" in result.stdout


def test_auth_status_without_a_token_file_exits_3_naming_the_fix(tmp_path: Path) -> None:
    result = auth(tmp_path, "--status")
    assert result.returncode == 3
    assert "does not exist" in result.stderr and "streaming-service auth" in result.stderr


def test_auth_with_nothing_pasted_exits_3_and_leaves_no_file(tmp_path: Path) -> None:
    result = auth(tmp_path)
    assert result.returncode == 3, result.stderr
    assert "https://api.schwabapi.com/v1/oauth/authorize?" in result.stdout  # the URL to open
    assert "no address was pasted" in result.stderr
    assert not (tmp_path / "token.json").exists()
