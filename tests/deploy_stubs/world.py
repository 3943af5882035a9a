"""A test world for deploy.sh: a copy of the project's deploy files, stub tools first on PATH, a fake
AWS account and box in one state file, and every call recorded. `World.run` runs deploy.sh."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STUBS = Path(__file__).resolve().parent
LOCAL_TOOLS = {"aws": "aws.py", "ssh": "ssh.py", "scp": "ssh.py", "docker": "docker.py", "curl": "box.py"}
BOX_TOOLS = {"docker": "docker.py", "cloud-init": "box.py", "curl": "box.py"}
# sudo on the box runs its command as is (the tests run as one user); a shell script, as it is called often
SUDO = '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n'
# Every wait bounded to a few seconds (deploy.sh counts whole seconds: a limit of N waits N-1 to N s);
# the health wait is longest, as each look at the box costs a few stub processes.
FAST = {
    "DEPLOY_POLL_INTERVAL": "0.05",
    "DEPLOY_STATE_TIMEOUT": "3",
    "DEPLOY_IP_TIMEOUT": "3",
    "DEPLOY_SSH_TIMEOUT": "3",
    "DEPLOY_CLOUD_INIT_TIMEOUT": "1",
    "DEPLOY_HEALTH_TIMEOUT": "5",
    "DEPLOY_SSH_CONNECT_TIMEOUT": "2",
}
DAY = 86400


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    calls: list[dict[str, Any]] = field(default_factory=list)

    def of(self, tool: str, *words: str, side: str | None = None) -> list[dict[str, Any]]:
        """The calls of `tool` with `words` in their arguments, in order ("lightsail", "create-instances")."""
        return [
            c
            for c in self.calls
            if c["tool"] == tool and _contains(c["argv"], words) and (side is None or c["side"] == side)
        ]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for c in self.calls:
            key = c["tool"] + (" " + _operation(c["argv"]) if c["tool"] in ("aws", "docker") else "")
            counts[key] = counts.get(key, 0) + 1
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
        command = " ".join(("deploy.sh", *self.args))
        return f"{command}: exit {self.returncode} in {self.seconds:.2f}s, {len(self.calls)} calls ({listed})"


def _contains(argv: list[str], words: tuple[str, ...]) -> bool:
    position = 0
    for word in words:
        try:
            position = argv.index(word, position) + 1
        except ValueError:
            return False
    return True


def _operation(argv: list[str]) -> str:
    bare = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg.startswith("--"):
            skip = arg in ("--region", "--query", "--output", "--format")
        elif not arg.startswith("-"):
            bare.append(arg)
    return " ".join(bare[:2])


class World:
    def __init__(self, tmp: Path, *, empty: bool = True) -> None:
        """A world in `tmp`: the project's files, stubs, and no AWS resources (unless not `empty`:
        then `tmp` already holds one, see `copy_of`)."""
        self.tmp = tmp
        self.project = tmp / "project"
        self.home = tmp / "home"
        self.state_file = tmp / "stubs" / "state.json"
        self.remote_dir = tmp / "stubs" / "box" / "opt" / "streaming-service"
        self.env = {
            "PATH": f"{tmp / 'stubs' / 'bin'}:{os.environ['PATH']}",
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "STUB_STATE": str(self.state_file),
            "REMOTE_DIR": str(self.remote_dir),
            **FAST,
        }
        if not empty:
            return
        self._lay_out_project()
        self._install_stubs()
        self.state_file.write_text(
            json.dumps(
                {
                    "faults": {},
                    "instances": {},
                    "static_ips": {},
                    "instances_created": [],
                    "static_ips_allocated": [],
                    "local": {"arch": "amd64", "images": {}, "build_version": "1", "builds": 0},
                    "box": {"images": [], "container": None, "health_probes": 0, "loads": 0, "created": 0},
                }
            )
        )

    @classmethod
    def copy_of(cls, template: World, tmp: Path) -> World:
        """A copy of `template` (files, box, AWS state) in `tmp`, with an empty call log: many tests
        start from one deployment made once by the real deploy.sh."""
        shutil.copytree(template.tmp, tmp, symlinks=True, dirs_exist_ok=True)
        world = cls(tmp, empty=False)
        world.state_file.write_text(world.state_file.read_text().replace(str(template.tmp), str(tmp)))
        (tmp / "stubs" / "calls.jsonl").unlink(missing_ok=True)
        return world

    def _lay_out_project(self) -> None:
        (self.project / "infrastructure" / "lightsail").mkdir(parents=True)
        (self.project / "data").mkdir()
        shutil.copy2(REPO / "deploy.sh", self.project / "deploy.sh")
        for name in ("user-data.sh",):
            shutil.copy2(
                REPO / "infrastructure" / "lightsail" / name, self.project / "infrastructure" / "lightsail"
            )
        shutil.copy2(REPO / "docker-compose.yml", self.project / "docker-compose.yml")
        (self.project / "Dockerfile").write_text("FROM python:3.11-slim\n")
        (self.project / ".env").write_text(
            "STREAM_TICKER=QQQ\nSCHWAB_APP_KEY=key\nSCHWAB_APP_SECRET=secret\n"
        )
        (self.project / ".env").chmod(0o644)  # as an editor leaves it: deploy.sh must not copy this mode
        self.write_local_token(created=time.time() - DAY)
        key = self.home / ".ssh" / "LightsailDefaultKey-us-east-1.pem"
        key.parent.mkdir(parents=True)
        key.write_text("-----BEGIN RSA PRIVATE KEY-----\nstub\n-----END RSA PRIVATE KEY-----\n")
        key.chmod(0o600)

    def _install_stubs(self) -> None:
        for directory, tools in (("bin", LOCAL_TOOLS), ("boxbin", BOX_TOOLS)):
            (self.tmp / "stubs" / directory).mkdir(parents=True, exist_ok=True)
            for tool, module in tools.items():
                path = self.tmp / "stubs" / directory / tool
                path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{STUBS / module}" {tool} "$@"\n')
                path.chmod(0o755)
        sudo = self.tmp / "stubs" / "boxbin" / "sudo"
        sudo.write_text(SUDO)
        sudo.chmod(0o755)

    # --- files
    def write_local_token(self, created: float) -> None:
        token = {"creation_timestamp": int(created), "token": {"access_token": "a", "refresh_token": "local"}}
        (self.project / "data" / "schwab_token.json").write_text(json.dumps(token))

    def box_token(self) -> dict[str, Any]:
        return dict(json.loads((self.remote_dir / "data" / "schwab_token.json").read_text()))

    def write_box_token(self, created: float) -> None:
        path = self.remote_dir / "data" / "schwab_token.json"
        token = {"creation_timestamp": int(created), "token": {"access_token": "b", "refresh_token": "box"}}
        path.write_text(json.dumps(token))
        path.chmod(0o600)

    @staticmethod
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    # --- state
    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text()))

    def set(self, section: str, **values: Any) -> None:
        """Change the stubs' state, e.g. set("faults", health="unhealthy")."""
        state = self.state
        state[section].update(values)
        self.state_file.write_text(json.dumps(state))

    def calls(self) -> list[dict[str, Any]]:
        log = self.state_file.parent / "calls.jsonl"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    # --- running deploy.sh
    def run(self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str) -> Run:
        before = len(self.calls())
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(self.project / "deploy.sh"), *args],
            cwd=self.tmp,
            env={**self.env, **env},
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        run = Run(
            args,
            result.returncode,
            result.stdout,
            result.stderr,
            time.monotonic() - started,
            self.calls()[before:],
        )
        print(run.summary())
        return run
