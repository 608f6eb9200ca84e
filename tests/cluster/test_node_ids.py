"""Node ids that assign themselves: a cluster started without --node-id (and without
--agent-id) gives every agent its own id, keeps it across restarts, and works with
librdkafka; an explicit --node-id that a live agent holds stops the start, naming it."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from conftest import DRIFTLOG, AgentProcess, Cluster
from raw_client import metadata_node_ids
from services import free_port

RECORDS = 300


def start_unnamed(cluster: Cluster, index: int, *extra: str) -> AgentProcess:
    """An agent with neither --node-id nor --agent-id, as a new user starts one."""
    agent = AgentProcess(
        cluster.root / f"unnamed-{index}",
        free_port(),
        [
            "--coordinator", cluster.dsn,
            "--object-store", f"s3://{cluster.bucket}",
            "--flush-ms", "20",
            "--default-partitions", "3",
            *cluster.timing_args,
            *extra,
        ],
        cluster.env,
    )  # fmt: skip
    agent.start()
    cluster.agents.append(agent)
    return agent


def wait_for_node_ids(agents: list[AgentProcess], count: int) -> set[int]:
    deadline = time.monotonic() + 20
    seen: list[set[int]] = []
    while time.monotonic() < deadline:
        seen = [metadata_node_ids(a.bootstrap) for a in agents]
        if all(len(s) == count for s in seen) and all(s == seen[0] for s in seen):
            return seen[0]
        time.sleep(0.1)
    raise AssertionError(f"agents never agreed on {count} node ids: {seen}")


def test_cluster_without_node_ids_works_with_librdkafka(cluster: Cluster) -> None:
    agents = [start_unnamed(cluster, i) for i in range(3)]
    node_ids = wait_for_node_ids(agents, 3)
    assert node_ids == {0, 1, 2}

    topic = f"unnamed-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    delivered: list[int] = []
    for i in range(RECORDS):
        producer.produce(
            topic,
            value=str(i).encode(),
            on_delivery=lambda err, msg: (
                delivered.append(int(msg.value())) if err is None else None
            ),
        )
    assert producer.flush(60) == 0
    assert sorted(delivered) == list(range(RECORDS))

    consumer = Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while len(seen) < RECORDS and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            seen.append(int(message.value()))
    consumer.close()
    assert sorted(seen) == list(range(RECORDS))

    # A restarted agent (same address, so the same agent id) keeps its node id.
    before = metadata_node_ids(agents[1].bootstrap)
    agents[1].stop()
    agents[1].start()
    assert wait_for_node_ids(agents, 3) == before


def test_explicit_node_id_held_by_a_live_agent_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    holder = cluster.add("a")  # --node-id 1 --agent-id agent-1
    wait_for_node_ids([holder], 1)
    port = free_port()
    result = subprocess.run(
        [
            *DRIFTLOG, "serve",
            "--listen", f"127.0.0.1:{port}",
            "--data-dir", str(tmp_path / "second"),
            "--coordinator", cluster.dsn,
            "--object-store", f"s3://{cluster.bucket}",
            "--node-id", "1",
            "--agent-id", "intruder",
            *cluster.timing_args,
        ],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "node id 1 is held by agent 'agent-1'" in result.stderr
    # The holder goes on serving as node 1 alone.
    assert metadata_node_ids(holder.bootstrap) == {1}
