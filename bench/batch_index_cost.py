"""What the index on batches(object_id) costs PostgreSQL per group commit.

What it measures
----------------
The writer's group commit (`PostgresBackend.persist_objects`, one round at a time) on a
throwaway PostgreSQL 15, in sequential rounds of `--objects` objects of 20
batches over 1,000 partitions, once on a database as migrated and once on one
where `batches_by_object` was dropped (a scratch database: Driftlog needs the
index for garbage collection and compaction). Printed per run: the CPU seconds
of the database's backend processes per 1,000 commits (user + system from
/proc), per batch row, the index's size, and the wall time per commit. Runs
alternate, so a busy machine affects both alike.

How to run
----------
    .venv/bin/python bench/batch_index_cost.py
    .venv/bin/python bench/batch_index_cost.py --runs 5 --rounds 1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from services import PostgresServer

from driftlog.coordinator.api import BatchToCommit, TopicInfo
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.sequencer import Sequencer
from driftlog.coordinator.engines.backend import Fence
from driftlog.coordinator.engines.postgres import PostgresBackend

WARMUP_ROUNDS = 20


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(dsn: str, drop: bool, rounds: int, objects: int) -> str:
    backend = PostgresBackend(dsn)
    await backend.open()
    if drop:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP INDEX batches_by_object")
    topic = TopicInfo("t", uuid.uuid4(), 1000, {})
    await backend.try_acquire_lease(None, LeaseRecord(0, "bench", "", 1, 2**62))
    fence = Fence(0, 1, 2**61)
    await backend.put_topic(fence, topic, 0)
    sequencer = Sequencer(await backend.load_sequencer(0))
    rng = random.Random(1)

    def batches() -> list[BatchToCommit]:
        chosen = sorted(rng.sample(range(1000), 20))
        return [
            BatchToCommit(topic.topic_id, p, i * 1000, 1000, 10, 1_700_000_000_000,
                          1_700_000_000_010)
            for i, p in enumerate(chosen)
        ]  # fmt: skip

    rounds_ = [
        [sequencer.sequence(f"k/{uuid.uuid4().hex}", 20_000, batches(), 0) for _ in range(objects)]
        for _ in range(rounds + WARMUP_ROUNDS)
    ]
    for round_ in rounds_[:WARMUP_ROUNDS]:
        await backend.persist_objects(fence, round_)
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            int(row[0])
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
    cpu_before, started = sum(map(cpu_s, pids)), time.perf_counter()
    for round_ in rounds_[WARMUP_ROUNDS:]:
        await backend.persist_objects(fence, round_)
    cpu, elapsed = sum(map(cpu_s, pids)) - cpu_before, time.perf_counter() - started
    await backend.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(pg_relation_size(to_regclass('batches_by_object')), 0),"
            " (SELECT count(*) FROM batches)"
        ).fetchone()
        assert row is not None
    commits = rounds * objects
    return (
        f"index {'dropped' if drop else 'kept   '}: PostgreSQL backends"
        f" {1000 * cpu / commits:.3f} CPU s per 1,000 commits"
        f" ({1e6 * cpu / (commits * 20):.1f} µs per batch row),"
        f" {1000 * elapsed / commits:.2f} ms wall per commit;"
        f" {row[1]} rows, index {row[0] / 1e6:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs")
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--objects", type=int, default=10, help="objects per round")
    args = parser.parse_args()
    pg = PostgresServer(max_connections=50)
    pg.start()
    try:
        for _ in range(args.runs):
            for drop in (False, True):
                dsn = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
                print(asyncio.run(run(dsn, drop, args.rounds, args.objects)), flush=True)
    finally:
        pg.cleanup()


if __name__ == "__main__":
    main()
