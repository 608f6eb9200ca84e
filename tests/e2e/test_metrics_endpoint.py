"""The Prometheus endpoint of a real agent: it parses with prometheus_client's parser,
its counters move under real produce and consume traffic, and health answers."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer
from conftest import AgentProcess
from prometheus_client.parser import text_string_to_metric_families
from services import free_port

RECORDS = 200


def scrape(port: int) -> dict[str, float]:
    """Every sample as `name{label="v",...}` (labels sorted) to its value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def status(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return int(response.status)


def test_metrics_parse_and_move_under_load(tmp_path: Path) -> None:
    metrics_port = free_port()
    agent = AgentProcess(
        tmp_path / "data",
        free_port(),
        ["--flush-ms", "20", "--metrics-listen", f"127.0.0.1:{metrics_port}"],
    )
    agent.start()
    try:
        assert status(metrics_port, "/healthz") == 200
        assert status(metrics_port, "/readyz") == 200
        before = scrape(metrics_port)
        assert before["driftlog_produce_records_total"] == 0

        producer = Producer({"bootstrap.servers": agent.bootstrap, "linger.ms": 5})
        for i in range(RECORDS):
            producer.produce("metered", value=f"value-{i}".encode())
        assert producer.flush(30) == 0
        consumer = Consumer(
            {
                "bootstrap.servers": agent.bootstrap,
                "group.id": "metered-group",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe(["metered"])
        seen = 0
        deadline = time.monotonic() + 30
        while seen < RECORDS // 2 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen += 1
        assert seen >= RECORDS // 2
        consumer.commit(asynchronous=False)  # commits what was consumed: the rest is lag
        consumer.close()

        after = scrape(metrics_port)
        assert after["driftlog_produce_records_total"] == RECORDS
        assert after["driftlog_produce_bytes_total"] > RECORDS * len(b"value-0")
        assert after["driftlog_fetch_bytes_total"] > 0
        assert after['driftlog_requests_total{api="produce"}'] >= 1
        assert after['driftlog_requests_total{api="fetch"}'] >= 1
        assert after['driftlog_request_duration_seconds_count{api="produce"}'] >= 1
        assert after['driftlog_object_store_requests_total{operation="put"}'] >= 1
        assert after['driftlog_object_store_bytes_total{operation="put"}'] > 0
        assert after["driftlog_coordinator_is_writer"] == 1
        lag = {k: v for k, v in after.items() if k.startswith("driftlog_consumer_group_lag{")}
        assert lag, "the committed group reports its lag"
        assert sum(lag.values()) == RECORDS - seen
    finally:
        agent.stop()
