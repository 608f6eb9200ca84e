"""Real agents with --cluster-secret-file: agents that share the secret form a cluster,
and anything else on the RPC port is refused without effect."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer
from conftest import Cluster
from services import free_port


def test_agents_with_the_secret_cluster_and_strangers_are_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    secret = tmp_path / "cluster.secret"
    secret.write_text(uuid.uuid4().hex + uuid.uuid4().hex + "\n")
    rpc_ports = [free_port(), free_port()]
    for port in rpc_ports:
        cluster.add("a", "--cluster-secret-file", str(secret), "--rpc-port", str(port))
    cluster.wait_for_members()

    # Produce through both agents: the one that is not the writer commits over the RPC.
    topic = f"secret-{uuid.uuid4().hex[:8]}"
    failures: list[object] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for agent in cluster.agents:
        producer = Producer({"bootstrap.servers": agent.bootstrap, "enable.idempotence": True})
        for i in range(50):
            producer.produce(topic, value=str(i).encode(), on_delivery=delivered)
        assert producer.flush(60) == 0
    assert failures == []

    # A stranger on each RPC port gets the server's hello (40 bytes) and, whatever it
    # sends instead of a proof, a closed connection.
    for port in rpc_ports:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stranger:
            hello = b""
            while len(hello) < 40:
                chunk = stranger.recv(40 - len(hello))
                assert chunk, "closed before the hello"
                hello += chunk
            assert hello.startswith(b"DLRPC/1S")
            stranger.sendall(b"DLRPC/1C" + bytes(64) + b"garbage after a wrong proof")
            stranger.settimeout(10)
            deadline = time.monotonic() + 10
            closed = False
            while time.monotonic() < deadline:
                try:
                    if stranger.recv(4096) == b"":
                        closed = True
                        break
                except ConnectionResetError:
                    closed = True
                    break
            assert closed
    assert any("refused" in a.log_text() or "handshake" in a.log_text() for a in cluster.agents)
