"""Key compaction of a compacted topic: MB/s, the agent's peak memory, objects and bytes
before and after.

What it does
------------
1. Starts a Driftlog agent (embedded defaults: local-directory store, SQLite) with key
   compaction off, creates a `cleanup.policy=compact` topic of ``--partitions``
   partitions, and produces ``--mib`` MiB of ``--size``-byte random values whose keys
   are ``key-<i % distinct>`` with ``distinct`` = ``--distinct`` (10%) of the records, in
   order, so every key is written about ten times and only the last survives.
2. Stops the agent and counts the objects and bytes in the store.
3. Restarts it with key compaction every 200 ms and garbage collection every 500 ms (1 s
   grace), and waits until every partition's cleaned offset reaches its cleanable end
   (read from the agent's SQLite database; stable for 5 s) and the store holds only
   live objects. The time is from the restart to the last change of that state.
4. Reads the whole topic back and checks that each key's value is its last one.

Printed: compaction time and MB/s (record bytes, uncompressed, per second), the agent's
resident memory before compaction and its peak (VmHWM) after, objects and bytes in the
store before and after, records before and after.

    .venv/bin/python bench/compaction.py              # 1 GiB, 10% distinct keys
    .venv/bin/python bench/compaction.py --mib 128    # a quicker run
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

sys.path.insert(0, str(Path(__file__).parent))
from produce_consume import (
    driftlog_broker,
    find_driftlog,
    wait_ready_and_create_topic,
)


def store_usage(objects_dir: Path) -> tuple[int, int]:
    files = [p for p in objects_dir.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def produce(bootstrap: str, topic: str, args: argparse.Namespace) -> int:
    count = int(args.mib * 1024 * 1024 // args.size)
    distinct = max(1, int(count * args.distinct))
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
         "queue.buffering.max.kbytes": 65536, "compression.type": args.codec}
    )  # fmt: skip
    # Random values (a window of a random pool), so compressed sizes are realistic.
    pool = os.urandom(64 * 1024 * 1024)
    for i in range(count):
        k = i % distinct
        key = b"key-%d" % k
        start = (i * 7919) % (len(pool) - args.size)
        value = b"%d:" % i + pool[start : start + args.size - 12]
        while True:
            try:
                # A key always goes to the same partition, as Kafka's partitioners do.
                producer.produce(topic, key=key, value=value, partition=k % args.partitions)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(300) == 0
    return count


def cleaned(db_path: Path) -> dict[tuple[bytes, int], int]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        return {(t, p): o for t, p, o in db.execute(
            "SELECT topic_id, partition, cleaned_offset FROM key_compaction")}  # fmt: skip
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()


def read_back(bootstrap: str, topic: str, partitions: int) -> tuple[int, dict[bytes, int]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "check", "enable.partition.eof": True,
         "fetch.max.bytes": 52_428_800}
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    latest: dict[bytes, int] = {}
    records = 0
    done: set[int] = set()
    while len(done) < partitions:
        message = consumer.poll(1.0)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                done.add(message.partition())
                continue
            raise RuntimeError(error)
        records += 1
        key, value = message.key(), message.value()
        if key is not None and value is not None:
            latest[key] = int(value.split(b":", 1)[0])
    consumer.close()
    return records, latest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB of records to produce")
    parser.add_argument("--size", type=int, default=1024, help="value bytes")
    parser.add_argument("--distinct", type=float, default=0.1, help="share of distinct keys")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--codec", default="none", help="the producer's compression.type")
    parser.add_argument("--map-mib", type=int, default=64, help="--key-compaction-map-bytes")
    args = parser.parse_args(argv)
    binary = find_driftlog(None)
    if binary is None:
        print("driftlog is not installed in this environment", file=sys.stderr)
        return 2
    topic = "compacted-" + uuid.uuid4().hex[:6]
    with tempfile.TemporaryDirectory(prefix="bench-compaction-") as tmp:
        work = Path(tmp)
        broker = driftlog_broker(
            binary, work, 50, ["--key-compaction-interval-ms", "0", "--compaction-interval-ms", "0"]
        )
        broker.start(30)
        data_dir = work / "driftlog-data"
        try:
            wait_ready_and_create_topic(broker.bootstrap, topic, args.partitions, 30)
            from confluent_kafka.admin import AdminClient, ConfigResource

            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            # Every dirty byte is worth a pass, so the log ends fully compacted even when a
            # small map needs several passes (the default ratio, 0.5, would stop earlier).
            compact = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}
            resource = ConfigResource("topic", topic, set_config=compact)
            for future in admin.alter_configs([resource]).values():
                future.result(30)
            started = time.monotonic()
            count = produce(broker.bootstrap, topic, args)
            produce_s = time.monotonic() - started
        finally:
            broker.stop(60)
        objects_before, bytes_before = store_usage(data_dir / "objects")
        # The same data directory, now compacting (and collecting what compaction frees).
        argv_ = [a for a in broker.argv]
        at = argv_.index("--key-compaction-interval-ms")
        argv_[at + 1] = "200"
        argv_ += ["--key-compaction-map-bytes", str(args.map_mib * 1024 * 1024),
                  "--gc-interval-ms", "500", "--gc-delete-grace-ms", "1000"]  # fmt: skip
        broker.argv = argv_
        broker.exit_code = None
        broker.start(60)
        assert broker.proc is not None
        pid = broker.proc.pid
        try:
            rss_start_kib = proc_kib(pid, "VmRSS")
            started = time.monotonic()
            finished = None
            last: dict[tuple[bytes, int], int] = {}
            while time.monotonic() - started < 1800:
                state = cleaned(data_dir / "coordinator.sqlite3")
                if state and len(state) == args.partitions and state == last:
                    finished = finished or time.monotonic()
                    if time.monotonic() - finished > 5:
                        break
                else:
                    finished = None
                last = state
                time.sleep(0.5)
            compact_s = (finished or time.monotonic()) - started
            peak_kib = proc_kib(pid, "VmHWM")
            # Let garbage collection remove the objects compaction left dead.
            deadline = time.monotonic() + 120
            previous = (-1, -1)
            while time.monotonic() < deadline:
                usage = store_usage(data_dir / "objects")
                if usage == previous:
                    break
                previous = usage
                time.sleep(3)
            objects_after, bytes_after = store_usage(data_dir / "objects")
            records_after, latest = read_back(broker.bootstrap, topic, args.partitions)
        finally:
            broker.stop(60)
    distinct = max(1, int(count * args.distinct))
    expected = {b"key-%d" % k: max(i for i in range(k, count, distinct)) for k in range(distinct)}
    correct = latest == expected
    mib = 1024 * 1024
    print(f"{count} records of {args.size} B ({count * args.size / mib:.0f} MiB), {distinct} "
          f"distinct keys, {args.partitions} partitions, codec {args.codec}")  # fmt: skip
    print(f"produced in {produce_s:.1f} s")
    log_mb = count * args.size / 1e6
    print(f"compaction: {compact_s:.1f} s, {log_mb / compact_s:.1f} MB/s of records")
    print(f"agent RSS: {rss_start_kib / 1024:.0f} MiB at start, peak {peak_kib / 1024:.0f} MiB")
    print(f"store before: {objects_before} objects, {bytes_before / mib:.1f} MiB")
    print(f"store after:  {objects_after} objects, {bytes_after / mib:.1f} MiB")
    print(f"records read back: {records_after} (latest value of every key: "
          f"{'correct' if correct else 'WRONG'})")  # fmt: skip
    return 0 if correct else 1


if __name__ == "__main__":
    raise SystemExit(main())
