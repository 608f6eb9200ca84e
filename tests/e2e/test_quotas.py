"""Client quotas through Kafka's APIs and a real producer: AlterClientQuotas stores
them, DescribeClientQuotas shows them, and a librdkafka producer (which does not
throttle itself) is held to its producer_byte_rate by the agent's throttle."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from conftest import AgentProcess
from kio.schema.alter_client_quotas.v1 import request as alter
from kio.schema.describe_client_quotas.v1 import request as describe
from kio.schema.errors import ErrorCode
from kio.static.primitive import f64, i8
from raw_client import RawClient
from services import free_port

RATE = 400_000.0  # bytes/s
# Kafka measures a rate over 11 one-second windows (and at least 10 s), so a new client
# may burst about 10 s worth of its quota at once; the rate it is held to shows after.
SETTLE_S = 12.0
RUN_S = 26.0
VALUE = b"q" * 1000


def alter_quota(bootstrap: str, client_id: str | None, key: str, value: float | None) -> Any:
    op = alter.OpData(key=key, value=f64(float(value or 0.0)), remove=value is None)
    client = RawClient(bootstrap)
    try:
        return client.request(
            alter.AlterClientQuotasRequest(
                entries=(
                    alter.EntryData(
                        entity=(alter.EntityData(entity_type="client-id", entity_name=client_id),),
                        ops=(op,),
                    ),
                ),
                validate_only=False,
            )
        )
    finally:
        client.close()


def describe_quotas(bootstrap: str) -> Any:
    client = RawClient(bootstrap)
    try:
        return client.request(
            describe.DescribeClientQuotasRequest(
                components=(
                    describe.ComponentData(entity_type="client-id", match_type=i8(2), match=None),
                ),
                strict=False,
            )
        )
    finally:
        client.close()


def produce_for(
    bootstrap: str, client_id: str, seconds: float, settle_s: float = 0.0
) -> tuple[int, float]:
    """Produce as fast as librdkafka lets us for `seconds`; the bytes acknowledged after
    `settle_s`, and the time from then to the end."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "linger.ms": 5,
            # A small queue keeps what is in flight (and acknowledged late, after a mute)
            # small next to what the quota lets through in the measured span.
            "queue.buffering.max.kbytes": 256,
        }
    )
    acked = [0]
    started = time.monotonic()

    def delivered(err: Any, msg: Any) -> None:
        if err is None and time.monotonic() - started >= settle_s:
            acked[0] += len(msg.value())

    while time.monotonic() - started < seconds:
        try:
            producer.produce("quota-topic", value=VALUE, on_delivery=delivered)
        except BufferError:
            producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    return acked[0], time.monotonic() - started - settle_s


def test_quota_holds_a_producer_to_its_rate(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "data", free_port(), ["--flush-ms", "20"])
    agent.start()
    try:
        result = alter_quota(agent.bootstrap, "limited", "producer_byte_rate", RATE)
        assert [e.error_code for e in result.entries] == [ErrorCode.none]
        refused = alter_quota(agent.bootstrap, "limited", "request_percentage", 50.0)
        assert refused.entries[0].error_code == ErrorCode.invalid_request
        described = describe_quotas(agent.bootstrap)
        assert described.error_code == ErrorCode.none
        assert [
            (
                [(e.entity_type, e.entity_name) for e in entry.entity],
                [(v.key, v.value) for v in entry.values],
            )
            for entry in described.entries
        ] == [([("client-id", "limited")], [("producer_byte_rate", RATE)])]

        acked, elapsed = produce_for(agent.bootstrap, "limited", RUN_S, SETTLE_S)
        rate = acked / elapsed
        # Payload bytes are a little under the batch bytes the quota counts.
        assert rate <= RATE * 1.2, f"{rate:.0f} B/s against a quota of {RATE}"
        assert rate >= RATE * 0.5, f"{rate:.0f} B/s: throttled far below the quota"

        # The quota is per client id: another client is not held back.
        free_bytes, free_elapsed = produce_for(agent.bootstrap, "unlimited", 3.0)
        assert free_bytes / free_elapsed > RATE * 1.5

        removed = alter_quota(agent.bootstrap, "limited", "producer_byte_rate", None)
        assert removed.entries[0].error_code == ErrorCode.none
        assert describe_quotas(agent.bootstrap).entries == ()
    finally:
        agent.stop()
