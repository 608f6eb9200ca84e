"""Shared fixtures: a real `driftlog serve` process on a free loopback port.

Tests talk to it through real sockets with real clients. The process can be
killed with SIGKILL and restarted on the same data directory, which is how the
durability tests simulate a crash.

Also real backing services (see services.py): a session PostgreSQL 15 server with a fresh
database per test (`postgres_dsn`), and a session moto S3 server (`moto_server`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from raw_client import metadata_node_ids
from services import MotoServer, PostgresServer, free_port, wait_for_port

DRIFTLOG = [sys.executable, "-m", "driftlog.cli.main"]


@dataclass
class AgentProcess:
    """A running agent; `restart()` brings it back on the same port and data."""

    data_dir: Path
    port: int
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.data_dir.parent / f"agent-{self.port}-{self.starts}.log"
        log = self.log_path.open("wb")
        args = [
            *DRIFTLOG,
            "serve",
            "--listen",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
        )
        wait_for_port(self.port)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def restart(self) -> None:
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _agent(tmp_path: Path, extra: list[str] | None = None) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path / "data", free_port(), extra or [])
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """A fresh agent with a short flush interval so tests run quickly."""
    yield from _agent(tmp_path, ["--flush-ms", "20", "--default-partitions", "3"])


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[AgentFactory]:
    """`make(*args, env={})` starts an agent with extra CLI arguments; all stop at teardown."""
    started: list[AgentProcess] = []

    def make(*extra: str, env: dict[str, str] | None = None) -> AgentProcess:
        a = AgentProcess(tmp_path / f"data-{len(started)}", free_port(), list(extra), env or {})
        a.start()
        started.append(a)
        return a

    try:
        yield make
    finally:
        for a in started:
            a.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL 15 cluster for the session (initdb'd in /tmp, deleted at the end).

    Tests that stop, restart or kill9 the server should start their own `PostgresServer`
    (`with PostgresServer() as pg:`, about a second) rather than disturb this one.
    """
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A brand-new empty database on the session server, dropped (connections and all) after."""
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto S3 server for the session; give each test its own bucket (`create_bucket`)."""
    with MotoServer() as server:
        yield server


@dataclass
class Cluster:
    """Agents sharing one PostgreSQL database and one S3 bucket (moto), on loopback."""

    dsn: str
    bucket: str
    env: dict[str, str]
    root: Path
    agents: list[AgentProcess] = field(default_factory=list)
    # Short timings so failover tests run in seconds (defaults are for production). The
    # agent timeout leaves room for heartbeats delayed on a loaded 2-core machine:
    # membership that flaps moves group coordinators and restarts rebalances.
    timing_args: tuple[str, ...] = (
        "--lease-ms", "2000", "--heartbeat-ms", "250", "--agent-timeout-ms", "3000",
    )  # fmt: skip

    def add(self, zone: str = "a", *extra: str) -> AgentProcess:
        node_id = len(self.agents) + 1
        agent = AgentProcess(
            self.root / f"agent-{node_id}",
            free_port(),
            [
                "--coordinator", self.dsn,
                "--object-store", f"s3://{self.bucket}",
                "--node-id", str(node_id),
                "--agent-id", f"agent-{node_id}",
                "--zone", zone,
                "--flush-ms", "20",
                "--default-partitions", "3",
                *self.timing_args,
                *extra,
            ],
            self.env,
        )  # fmt: skip
        agent.start()
        self.agents.append(agent)
        return agent

    @property
    def bootstrap(self) -> str:
        return ",".join(a.bootstrap for a in self.agents)

    def wait_for_members(self) -> None:
        """Until every agent's Metadata lists every agent (a heartbeat or two after the
        last one started). Until then agents disagree on the cluster's brokers, and a
        client that asks both can see a broker vanish under a request in flight
        (librdkafka: "Broker handle destroyed without termination")."""
        expected = {i + 1 for i in range(len(self.agents))}
        for agent in self.agents:
            seen: set[int] = set()
            deadline = time.monotonic() + 15
            while seen != expected and time.monotonic() < deadline:
                seen = metadata_node_ids(agent.bootstrap)
                if seen != expected:
                    time.sleep(0.1)
            assert seen == expected, f"{agent.bootstrap} lists {seen}"

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def cluster(postgres_dsn: str, moto_server: MotoServer, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with no agents yet: `cluster.add(zone)` starts one."""
    bucket = f"cluster-{uuid.uuid4().hex[:12]}"
    moto_server.create_bucket(bucket)
    c = Cluster(postgres_dsn, bucket, moto_server.env(), tmp_path)
    try:
        yield c
    finally:
        c.stop()
