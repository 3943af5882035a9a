"""The stubs' shared state (one JSON file, locked while changed) and their call log."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

HOME_OF_BOX = "home/ubuntu"


def state_path() -> Path:
    return Path(os.environ["STUB_STATE"])


@contextlib.contextmanager
def changing() -> Iterator[dict[str, Any]]:
    """The state, saved again when the block ends; other stub processes wait meanwhile."""
    path = state_path()
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text())
        yield state
        path.with_suffix(".tmp").write_text(json.dumps(state, indent=1))
        path.with_suffix(".tmp").replace(path)


def read() -> dict[str, Any]:
    path = state_path()
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        state: dict[str, Any] = json.loads(path.read_text())
        return state


def record(tool: str, argv: list[str], **extra: Any) -> None:
    """Append one call to calls.jsonl (a single short write, so concurrent stubs do not interleave)."""
    side = os.environ.get("STUB_SIDE", "local")
    line = json.dumps(
        {"tool": tool, "side": side, "argv": argv, "cwd": os.getcwd(), "at": time.time(), **extra}
    )
    line += "\n"
    with open(state_path().parent / "calls.jsonl", "a") as log:
        log.write(line)


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(message if message.endswith("\n") else message + "\n")
    sys.exit(code)


def box_root() -> Path:
    return state_path().parent / "box"


def reset_box(state: dict[str, Any]) -> None:
    """A fresh machine: empty disk (but the ssh user's home), no images, no container."""
    root = box_root()
    shutil.rmtree(root, ignore_errors=True)
    (root / HOME_OF_BOX).mkdir(parents=True)
    state["box"] = {"images": [], "container": None, "health_probes": 0, "loads": 0, "created": 0}


def public_ip(state: dict[str, Any], instance: dict[str, Any]) -> str | None:
    """The instance's public address as get-instance gives it: None unless running, else its static IP
    if one is attached, else its dynamic one (fault `never_ip`: always None)."""
    if instance["state"] != "running" or state["faults"].get("never_ip"):
        return None
    for ip in state["static_ips"].values():
        if ip["attached_to"] == instance["name"]:
            return str(ip["ip"])
    return str(instance["dynamic_ip"])
