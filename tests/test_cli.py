"""The command line as a person runs it (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata


def test_version_prints_the_installed_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streaming_service", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"streaming-service {metadata.version('schwab-supabase-streamer')}"
