"""Real backing services for tests: a throwaway PostgreSQL 15 cluster and a moto S3 server.

Both run as separate processes on free loopback ports and are torn down with `cleanup()` /
`stop()` (or by using them as context managers). Tests run as root here and in CI;
PostgreSQL refuses to run as root, so its tools are started as the `postgres` user through
`runuser`. As any other user they run directly, and the cluster belongs to that user.

`make system-deps` installs Debian's postgresql-15; moto_server comes with the dev extras.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    """Until something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


class PostgresServer:
    """A PostgreSQL 15 cluster in a fresh temporary directory, listening on 127.0.0.1.

    `start()` runs initdb the first time (trust authentication, database `driftlog`) and
    starts the postmaster with `pg_ctl`; the cluster keeps its port and data across `stop()`,
    `restart()` and `kill9()`. fsync and synchronous_commit keep their defaults, so a kill
    loses exactly what PostgreSQL would lose.
    """

    def __init__(self, *, max_connections: int = 200, database: str = "driftlog") -> None:
        self.max_connections = max_connections
        self.database = database
        self.port = 0
        self.base_dir: Path | None = None
        self._as_postgres = os.geteuid() == 0

    # -- paths and addresses ------------------------------------------------------------------

    def _base(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("PostgresServer was not started")
        return self.base_dir

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_path(self) -> Path:
        return self._base() / "postgres.log"

    @property
    def dsn(self) -> str:
        """postgresql://postgres@127.0.0.1:PORT/driftlog"""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------

    def _run(self, *args: str, timeout_s: float = 120.0) -> None:
        """Run a PostgreSQL tool (as `postgres` when we are root); raise with its output."""
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        # cwd: the tools chdir back to it, and root's working directory may be closed to them.
        done = subprocess.run(
            cmd,
            cwd=self._base(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(
                f"{' '.join(cmd)} exited {done.returncode}:\n{out}\n--- log ---\n{self.log_text()}"
            )

    def _init_cluster(self) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"{PG_BIN / 'initdb'} is missing: run `make system-deps`")
        # Directly under /tmp: pytest's own temporary directories are closed to other users.
        self.base_dir = Path(tempfile.mkdtemp(prefix="driftlog-pg-"))
        self.socket_dir.mkdir()
        if self._as_postgres:
            for path in (self.base_dir, self.socket_dir):
                shutil.chown(path, PG_USER, PG_USER)
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", PG_USER, "-E", "UTF8",
                  "--no-locale", "--no-instructions")  # fmt: skip

    def _options(self) -> str:
        return (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
            f"-c max_connections={self.max_connections}"
        )

    def _pg_ctl_start(self) -> None:
        self._clear_stale_lock()
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                  "-w", "-t", "60", "-o", self._options())  # fmt: skip

    def start(self) -> None:
        """initdb on first call, then start the postmaster and wait until it accepts queries."""
        if self.base_dir is not None:
            self._pg_ctl_start()
            return
        try:
            self._init_cluster()
            # The port is picked before the postmaster binds it: retry if another took it since.
            for attempt in range(5):
                self.port = free_port()
                try:
                    self._pg_ctl_start()
                    break
                except RuntimeError:
                    if attempt == 4 or "already in use" not in self.log_text():
                        raise
            self.create_database(self.database)
        except BaseException:
            self.cleanup()
            raise

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid, if that process is still running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.base_dir is not None and self.postmaster_pid() is not None

    def stop(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m smart|fast|immediate`; nothing if the server is not running."""
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def restart(self, mode: str = "fast") -> None:
        """Stop (if running) and start again on the same port and data."""
        self.stop(mode)
        self.start()

    def kill9(self) -> None:
        """SIGKILL the postmaster and then its backends, as if the machine had died.

        The next `start()` runs crash recovery. Backends are killed too because an orphaned
        backend keeps the old shared memory attached, which stops a new postmaster starting.
        """
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while any(_pid_alive(p) for p in (pid, *children)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"postmaster {pid} or its backends survived SIGKILL")
            time.sleep(0.01)

    def _clear_stale_lock(self) -> None:
        # A SIGKILLed postmaster whose parent never reaps it stays a zombie, and PostgreSQL
        # takes a zombie's pid in postmaster.pid for a live server: remove its lock files.
        lock = self.data_dir / "postmaster.pid"
        if lock.exists() and self.postmaster_pid() is None:
            lock.unlink()
            (self.socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def create_database(self, name: str) -> str:
        """Create an empty database (a copy of template1) and return its DSN."""
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))

    def cleanup(self) -> None:
        """Stop the server (immediately, killing it if need be) and delete its directory."""
        if self.base_dir is None:
            return
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill9()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class MotoServer:
    """moto's standalone S3-compatible server (the venv's `moto_server`) on a free port.

    Buckets live in the server's memory until `stop()` (or `reset()`).
    """

    ACCESS_KEY = "testing"
    SECRET_KEY = "testing"
    REGION = "us-east-1"

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What an agent (obstore) or boto3 needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_REGION": self.REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout_s: float = 30.0) -> None:
        # Next to the interpreter, not resolved: .venv/bin/python is a symlink out of the venv.
        binary = Path(sys.executable).parent / "moto_server"
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: install the dev extras (`make test`)")
        self.port = free_port()
        fd, log = tempfile.mkstemp(prefix="driftlog-moto-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as out:
            self.process = subprocess.Popen(
                [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"moto_server not answering after {timeout_s}s:\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer means it is serving
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def create_bucket(self, name: str) -> None:
        import boto3  # here: a slow import, and only the S3 tests need it

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            region_name=self.REGION,
        )
        client.create_bucket(Bucket=name)

    def reset(self) -> None:
        """Forget every bucket and object."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
