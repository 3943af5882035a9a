"""A throwaway PostgreSQL server for integration tests.

`PgCluster` runs `initdb` and `pg_ctl` against a temporary directory and listens on a free
TCP port on 127.0.0.1 with trust authentication (no password), fsync off unless `durable`. `initdb` and
`postgres` refuse to run as root, so as root every server command goes through
`runuser -u nobody --` and the directory is owned by `nobody`.

Every failure raises `PgClusterError` with the command's output and the tail of the server
log; nothing is skipped silently.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

__all__ = ["PgCluster", "PgClusterError", "find_pg_bin", "fresh_database"]

_SERVER_USER = "nobody"
_START_TIMEOUT_S = 30
_SETTINGS = ("listen_addresses = '127.0.0.1'", "max_connections = 50", "log_min_messages = warning")
#: Fast but not crash-safe: an immediate stop loses commits already acknowledged.
_NOT_DURABLE = ("fsync = off", "synchronous_commit = off", "full_page_writes = off")


class PgClusterError(RuntimeError):
    """The test server could not be created, started or stopped."""


def find_pg_bin() -> Path:
    """Return the directory holding `initdb` and `pg_ctl` (PATH first, then Debian's layout).

    Raises `PgClusterError` if neither has them.
    """
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    for candidate in reversed(candidates):
        if (Path(candidate) / "pg_ctl").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install them with `apt-get install postgresql-15`."
    )


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgCluster:
    """One PostgreSQL server in a temporary directory; use as a context manager or call
    `start()` / `close()`.

    `start()` creates the cluster on first use; `stop()` and `restart()` keep its data;
    `close()` stops it and deletes the directory. The superuser is `postgres`, no password.
    """

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, *, durable: bool = False) -> None:
        """`durable`: keep Postgres's crash safety (fsync, synchronous commit), for tests that stop
        the server with `-m immediate` and count on what it acknowledged; off by default (faster)."""
        self._durable = durable
        self._bin = find_pg_bin()
        self._as_root = os.geteuid() == 0
        self.base_dir = Path(tempfile.mkdtemp(prefix="pgtest-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "server.log"
        self.port = free_port()
        self._initialised = False
        self.running = False

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` on this server."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def start(self) -> None:
        """Create the cluster if needed and start the server; returns once it accepts connections."""
        if not self._initialised:
            self._init()
        self._pg_ctl("start", "-l", str(self.log_file), "-t", str(_START_TIMEOUT_S))
        self.running = True

    def stop(self) -> None:
        """Stop the server at once (`-m immediate`: no checkpoint; clients are cut off)."""
        if self.running:
            self._pg_ctl("stop", "-m", "immediate")
            self.running = False

    def restart(self) -> None:
        """Restart the server, terminating every client connection; returns once it is up again."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file), "-t", str(_START_TIMEOUT_S))
        self.running = True

    def close(self) -> None:
        """Stop the server and remove its directory; idempotent."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _init(self) -> None:
        self.base_dir.chmod(0o755)  # mkdtemp makes it 0700; `nobody` must traverse it
        self.socket_dir.mkdir()
        if self._as_root:
            shutil.chown(self.base_dir, _SERVER_USER)
            shutil.chown(self.socket_dir, _SERVER_USER)
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", self.user,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
        )  # fmt: skip
        speed = () if self._durable else _NOT_DURABLE
        where = (f"port = {self.port}", f"unix_socket_directories = '{self.socket_dir}'")
        settings = (*_SETTINGS, *speed, *where)
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# pg_cluster.py\n" + "\n".join(settings) + "\n")
        self._initialised = True

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data_dir), "-w", *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._as_root:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base_dir,
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT_S + 30,
            check=False,
        )
        if result.returncode != 0:
            raise PgClusterError(
                f"`{' '.join(command)}` exited with {result.returncode}\n"
                f"--- output ---\n{result.stdout}{result.stderr}\n"
                f"--- server log (tail) ---\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server log, or a note if there is none yet."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no server log yet)"
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def fresh_database(cluster: PgCluster) -> Iterator[str]:
    """Create database `test_<hex>` on `cluster`, yield its DSN, drop it (connections forced out)."""
    name = f"test_{uuid.uuid4().hex}"
    if not cluster.running:
        cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield cluster.dsn(name)
    if not cluster.running:  # a test stopped the server; bring it back for the next one
        cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
