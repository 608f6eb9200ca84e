"""Transactional against idempotent produce throughput, and EndTxn latency.

What it measures
----------------
A fresh Driftlog agent (embedded defaults: local-directory store, SQLite) on a free
loopback port, one topic of ``--partitions`` partitions, then two phases of
``--seconds`` each on the same workload (``--size``-byte random values, round-robin
partitions, linger.ms 5, acks=all, a client queue of ``--queue-kb``, confluent-kafka in
this process):

1. idempotent: ``enable.idempotence=true``, produced as fast as the producer can,
   with ``flush()`` at the end; records/s counts acknowledged records.
2. transactional: ``transactional.id`` set; every ``--txn-ms`` (100 ms) the producer
   commits the open transaction and begins the next one, producing as fast as it can
   in between. records/s counts committed records; each ``commit_transaction`` call's
   duration is recorded: a ``flush()`` (every record acknowledged, as
   commit_transaction itself would wait for) then ``commit_transaction`` (EndTxn),
   each timed, so the EndTxn figure is the commit alone.

Printed: records/s and MB/s of both phases, their ratio (target: at least 0.8),
commit_transaction p50/p99/max and the EndTxn-only p50/p99 (target p99 under
flush interval + 50 ms).

    .venv/bin/python bench/transactions.py --seconds 20 --flush-ms 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).parent))
from produce_consume import (
    driftlog_broker,
    find_driftlog,
    percentile,
    wait_ready_and_create_topic,
)


def _producer(bootstrap: str, queue_kb: int, **extra: Any) -> Producer:
    # A bounded client queue: what a commit must flush is what is queued, so at full speed
    # an unbounded queue would make every commit wait for seconds of queued records.
    return Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
         "queue.buffering.max.kbytes": queue_kb, **extra}
    )  # fmt: skip


def idempotent_phase(bootstrap: str, topic: str, args: argparse.Namespace) -> float:
    producer = _producer(bootstrap, args.queue_kb, **{"enable.idempotence": True})
    value = os.urandom(args.size)
    acked = 0

    def delivered(error: Any, _message: Any) -> None:
        nonlocal acked
        if error is None:
            acked += 1

    start = time.monotonic()
    end = start + args.seconds
    i = 0
    while time.monotonic() < end:
        try:
            producer.produce(topic, value, partition=i % args.partitions, on_delivery=delivered)
            i += 1
        except BufferError:
            producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    return acked / (time.monotonic() - start)


def transactional_phase(
    bootstrap: str, topic: str, args: argparse.Namespace
) -> tuple[float, list[float], list[float]]:
    producer = _producer(
        bootstrap, args.queue_kb, **{"transactional.id": "bench-" + uuid.uuid4().hex[:8]}
    )
    producer.init_transactions(30)
    value = os.urandom(args.size)
    committed = 0
    commit_ms: list[float] = []
    end_txn_ms: list[float] = []
    start = time.monotonic()
    end = start + args.seconds
    i = 0
    while time.monotonic() < end:
        producer.begin_transaction()
        in_txn = 0
        txn_end = time.monotonic() + args.txn_ms / 1000
        while time.monotonic() < txn_end:
            try:
                producer.produce(topic, value, partition=i % args.partitions)
                i += 1
                in_txn += 1
            except BufferError:
                producer.poll(0.01)
            if i % 1000 == 0:
                producer.poll(0)
        started = time.monotonic()
        producer.flush(60)  # what commit_transaction does first
        flushed = time.monotonic()
        producer.commit_transaction(60)
        done = time.monotonic()
        commit_ms.append((done - started) * 1000)
        end_txn_ms.append((done - flushed) * 1000)
        committed += in_txn
    return committed / (time.monotonic() - start), commit_ms, end_txn_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=1024, help="record value bytes")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--txn-ms", type=int, default=100, help="commit interval")
    parser.add_argument("--flush-ms", type=int, default=250, help="the agent's --flush-ms")
    parser.add_argument(
        "--queue-kb", type=int, default=4096, help="the producers' queue.buffering.max.kbytes"
    )
    parser.add_argument("--driftlog-arg", action="append", default=[])
    args = parser.parse_args(argv)
    binary = find_driftlog(None)
    if binary is None:
        print("driftlog is not installed in this environment", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-txn-") as tmp:
        broker = driftlog_broker(binary, Path(tmp), args.flush_ms, args.driftlog_arg)
        broker.start(30)
        try:
            results: dict[str, tuple[float, list[float], list[float]]] = {}
            for phase in ("idempotent", "transactional"):
                topic = f"{phase}-{uuid.uuid4().hex[:6]}"
                wait_ready_and_create_topic(broker.bootstrap, topic, args.partitions, 30)
                if phase == "idempotent":
                    results[phase] = (idempotent_phase(broker.bootstrap, topic, args), [], [])
                else:
                    results[phase] = transactional_phase(broker.bootstrap, topic, args)
        finally:
            broker.stop(30)
    idem = results["idempotent"][0]
    txn, commits, end_txns = results["transactional"]
    commits.sort()
    end_txns.sort()
    mb = args.size / 1e6
    print(f"flush-ms {args.flush_ms}, {args.partitions} partitions, {args.size} B records, "
          f"commit every {args.txn_ms} ms, {args.seconds:g} s per phase")  # fmt: skip
    print(f"idempotent:    {idem:10.0f} records/s {idem * mb:8.1f} MB/s")
    print(f"transactional: {txn:10.0f} records/s {txn * mb:8.1f} MB/s  ({len(commits)} commits)")
    print(f"ratio transactional / idempotent: {txn / idem:.2f} (target >= 0.8)")
    print(
        f"commit_transaction ms (flush + EndTxn): p50 {percentile(commits, 50):.1f}"
        f" p99 {percentile(commits, 99):.1f} max {commits[-1]:.1f}"
    )
    print(
        f"EndTxn ms (after the flush): p50 {percentile(end_txns, 50):.1f}"
        f" p99 {percentile(end_txns, 99):.1f} max {end_txns[-1]:.1f}"
        f" (target p99 < flush-ms + 50 = {args.flush_ms + 50})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
