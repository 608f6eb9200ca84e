"""A PostgreSQL database written by an earlier Driftlog is migrated in place at start."""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from driftlog.clock import FakeClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest
from driftlog.coordinator.engines import postgres
from driftlog.coordinator.runtime.service import LocalCoordinator


def test_a_version_3_database_is_upgraded_and_keeps_its_data(postgres_dsn: str) -> None:
    # Version 3: the object lifecycle, before the one-statement group commit (4).
    topic_id = uuid.uuid4()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        for migration in postgres.MIGRATIONS[:3]:
            conn.execute(migration.encode())
        conn.execute("INSERT INTO schema_version VALUES (3)")
        conn.execute("INSERT INTO topics VALUES (%s, 't', 1, '{}')", (topic_id,))
        conn.execute("INSERT INTO partitions VALUES (%s, 0, 0)", (topic_id,))
        conn.execute(
            "INSERT INTO objects (object_id, key, size, committed_ms, outcomes)"
            " VALUES (1, 'old', 10, 0, '[]')"
        )
        conn.execute(
            "INSERT INTO batches VALUES (%s, 0, 4, 0, 1, 0, 10, 1005, -1, 1005)", (topic_id,)
        )

    async def scenario() -> None:
        coordinator = LocalCoordinator(
            postgres.PostgresBackend(postgres_dsn), FakeClock(), holder="a", lease_ms=5_000
        )
        await coordinator.start(wait_for_writer_s=5.0)
        [outcome] = await coordinator.submit_commit(
            CommitRequest("new", 10, [BatchToCommit(topic_id, 0, 0, 10, 3, 2000, 2007)])
        )
        assert outcome.base_offset == 5  # after the batch the old version stored
        old = await coordinator.batch_at_timestamp(topic_id, 0, 1000)
        new = await coordinator.batch_at_timestamp(topic_id, 0, 1006)
        assert (old and old.object_key, new and new.object_key) == ("old", "new")
        await coordinator.close()

    asyncio.run(scenario())
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (postgres.SCHEMA_VERSION,)
        ]
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'batches'"
            )
        }
    assert indexes == {"batches_pkey", "batches_by_object"}
