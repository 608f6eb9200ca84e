"""The storage lifecycle on real files, through a real agent and real clients.

Garbage collection removes the objects of deleted topics, of data that retention or
DeleteRecords dropped, and orphans (uploads no commit names), while objects that
are still referenced stay. Compaction merges small objects and every record reads
back the same, offset, key, value, headers and timestamp, before and after; the
old objects then go too. Grace periods are shortened here so the test runs in
seconds; the rules are the same as with the defaults.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from conftest import AgentFactory, AgentProcess

# Short periods so the test takes seconds. The orphan grace must exceed twice the
# slowest commit (the writer refuses objects older than half of it).
FAST_GC = [
    "--gc-interval-ms", "200",
    "--gc-delete-grace-ms", "500",
    "--gc-orphan-grace-ms", "20000",
    "--gc-orphan-scan-ms", "200",
]  # fmt: skip
NO_COMPACTION = ["--compaction-interval-ms", "0"]

Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]], tuple[int, int]]


def object_files(agent: AgentProcess) -> set[str]:
    root = agent.data_dir / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def referenced_keys(agent: AgentProcess) -> set[str]:
    """Keys of the objects some batch row names, read from the agent's SQLite file."""
    with sqlite3.connect(f"file:{agent.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT DISTINCT o.key FROM batches b JOIN objects o ON o.object_id = b.object_id"
        ).fetchall()
    return {key for (key,) in rows}


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


def produce(bootstrap: str, topic: str, count: int, partitions: int, *, one_by_one: bool) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    errors: list[object] = []
    for i in range(count):
        producer.produce(
            topic,
            key=b"k%d" % i,
            value=b"value-%06d-" % i + b"x" * (i % 50),
            partition=i % partitions,
            headers=[("h", b"%d" % i)],
            timestamp=1_700_000_000_000 + i,
            on_delivery=lambda e, m: errors.append(e) if e else None,
        )
        if one_by_one:
            producer.flush(10)  # each record its own request, so its own small object
    assert producer.flush(30) == 0
    assert not errors


def read_all(bootstrap: str, topic: str, partitions: int) -> dict[int, list[Record]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "lifecycle", "enable.auto.commit": False}
    )
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(partitions)
    }
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got: dict[int, list[Record]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(len(got[p]) < ends[p] for p in got):
        m = consumer.poll(0.2)
        if m is None:
            continue
        assert not m.error(), m.error()
        headers = [(k, bytes(v or b"")) for k, v in (m.headers() or [])]
        got[m.partition()].append((m.offset(), m.key(), m.value(), headers, m.timestamp()))
    consumer.close()
    for p, records in got.items():
        assert [r[0] for r in records] == list(range(ends[p])), f"partition {p} has gaps"
    return got


@pytest.mark.timeout(120)
def test_deleted_topics_expired_data_and_orphans_leave_the_store(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory("--flush-ms", "20", *FAST_GC, *NO_COMPACTION)
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    for name in ("doomed", "trimmed", "kept"):
        admin.create_topics([NewTopic(name, 2)])[name].result(10)

    # Orphans: an old upload no commit names, and one too young to judge yet.
    objects_dir = agent.data_dir / "objects" / "objects"
    objects_dir.mkdir(parents=True, exist_ok=True)
    old_ms = int(time.time() * 1000) - 3_600_000
    old_orphan = objects_dir / f"{old_ms:013d}-{'0' * 32}"
    young_orphan = objects_dir / f"{int(time.time() * 1000):013d}-{'1' * 32}"
    foreign = objects_dir / "not-a-driftlog-key"
    for path in (old_orphan, young_orphan, foreign):
        path.write_bytes(b"junk")
    # The store reports modification times: make the old one old there too.
    os.utime(old_orphan, (old_ms / 1000, old_ms / 1000))

    produce(agent.bootstrap, "doomed", 40, 2, one_by_one=True)
    produce(agent.bootstrap, "trimmed", 40, 2, one_by_one=True)
    produce(agent.bootstrap, "kept", 40, 2, one_by_one=True)
    before = object_files(agent)
    referenced = referenced_keys(agent)
    assert len(referenced) >= 100, "each record should have been its own object"

    # Delete a topic, and everything but the last records of another.
    admin.delete_topics(["doomed"])["doomed"].result(10)
    trimmed = [TopicPartition("trimmed", p, 19) for p in range(2)]
    for future in admin.delete_records(trimmed).values():
        future.result(10)

    def settled() -> bool:
        return object_files(agent) == referenced_keys(agent) | {
            f"objects/{young_orphan.name}",
            f"objects/{foreign.name}",
        }

    wait_until("only referenced objects (and the young or foreign files) remain", settled)
    after = object_files(agent)
    assert f"objects/{old_orphan.name}" not in after
    assert f"objects/{young_orphan.name}" in after, "a young upload may still be committed"
    assert f"objects/{foreign.name}" in after, "keys Driftlog did not make are never orphans"
    assert len(after) < len(before) - 60
    # What is left reads back whole.
    kept = read_all(agent.bootstrap, "kept", 2)
    assert sum(len(r) for r in kept.values()) == 40
    consumer = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "low"})
    low = [consumer.get_watermark_offsets(tp, timeout=10)[0] for tp in trimmed]
    consumer.close()
    assert low == [19, 19]


@pytest.mark.timeout(180)
def test_compaction_keeps_every_record_byte_for_byte(agent_factory: AgentFactory) -> None:
    args = [
        "--flush-ms", "5",
        *FAST_GC,
        "--compaction-interval-ms", "300",
        "--compaction-min-age-ms", "0",
        "--compaction-small-object-bytes", "65536",
    ]  # fmt: skip
    agent = agent_factory(*args, "--compaction-interval-ms", "0")  # none while producing
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("small", 3)])["small"].result(10)
    admin.create_topics([NewTopic("other", 1)])["other"].result(10)
    produce(agent.bootstrap, "small", 150, 3, one_by_one=True)
    produce(agent.bootstrap, "other", 30, 1, one_by_one=True)
    before = read_all(agent.bootstrap, "small", 3)
    before_other = read_all(agent.bootstrap, "other", 1)
    objects_before = len(referenced_keys(agent))
    assert objects_before >= 150

    agent.terminate()
    agent.extra_args = args  # compaction on
    agent.restart()

    def compacted() -> bool:
        return len(referenced_keys(agent)) <= 2

    wait_until("the small objects are compacted", compacted, 60)
    wait_until("the compacted objects are deleted", lambda: len(object_files(agent)) <= 2, 30)
    assert read_all(agent.bootstrap, "small", 3) == before
    assert read_all(agent.bootstrap, "other", 1) == before_other
    # Appending after compaction continues the offsets.
    produce(agent.bootstrap, "small", 3, 3, one_by_one=False)
    after = read_all(agent.bootstrap, "small", 3)
    for p in range(3):
        assert after[p][: len(before[p])] == before[p]
        assert len(after[p]) == len(before[p]) + 1


@pytest.mark.timeout(240)
def test_kill9_during_compaction_and_gc_loses_nothing(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    args = [
        "--flush-ms", "5",
        *FAST_GC,
        "--gc-interval-ms", "50",
        "--compaction-interval-ms", "50",
        "--compaction-min-age-ms", "0",
        "--compaction-small-object-bytes", "65536",
        "--compaction-target-bytes", "20000",
    ]  # fmt: skip
    agent = agent_factory(*args)
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.create_topics([NewTopic("churn", 2)])["churn"].result(10)
    produced = 0
    for round_ in range(6):
        produce(agent.bootstrap, "churn", 60, 2, one_by_one=True)
        produced += 60
        # Let compaction and GC get going, then pull the plug at an arbitrary moment.
        time.sleep(0.05 + 0.07 * round_)
        agent.kill9()
        agent.restart()
    wait_until("compaction caught up", lambda: len(referenced_keys(agent)) <= 40, 60)
    # The last kill's orphans are deleted 20 s (the orphan grace) after their upload;
    # on a loaded machine the compaction and GC passes that get there take longer.
    wait_until(
        "only referenced objects remain",
        lambda: object_files(agent) == referenced_keys(agent),
        90,
    )
    records = read_all(agent.bootstrap, "churn", 2)
    values = sorted(r[2] or b"" for rs in records.values() for r in rs)
    assert len(values) == produced
    expected = sorted(b"value-%06d-" % i + b"x" * (i % 50) for i in range(60) for _ in range(6))
    assert values == expected
