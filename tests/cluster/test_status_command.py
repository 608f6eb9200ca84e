"""`driftlog status` against a running cluster's coordinator database."""

from __future__ import annotations

import os
import subprocess
import uuid

from confluent_kafka import Producer
from conftest import DRIFTLOG, Cluster


def test_status_lists_agents_writer_topics_and_objects(cluster: Cluster) -> None:
    cluster.add("a")
    cluster.add("b")
    cluster.wait_for_members()
    topic = f"status-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": cluster.bootstrap})
    for i in range(10):
        producer.produce(topic, value=str(i).encode(), partition=0)
    assert producer.flush(30) == 0

    result = subprocess.run(
        [*DRIFTLOG, "status", "--coordinator", cluster.dsn],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert "agents (2 live):" in out
    assert "node 1  agent-1  zone a" in out and "node 2  agent-2  zone b" in out
    assert "writer: agent-" in out and "lease live" in out
    assert f"  {topic}  3 partitions  10 offsets retained" in out
    assert "0: log start 0, end 10" in out
    assert "objects: " in out and " live (" in out
