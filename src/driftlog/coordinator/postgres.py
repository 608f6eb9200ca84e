"""PostgreSQL backend of the coordinator (cluster mode): psycopg 3, async, with a pool.

Same tables as `sqlite.py` with PostgreSQL types. Migrations are applied at
open under an advisory lock, so agents starting together do not race. The
writer's group commit is one transaction: COPY of the batches, upserts of the
producer states that changed, then the fence check (which takes the lease row's
lock, ordering it against a takeover) in the statement that stores the objects.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from driftlog.coordinator.api import (
    AgentInfo,
    BatchLocation,
    CommitOutcome,
    CommittedOffset,
    CoordinatorUnavailable,
    Fenced,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.backend import (
    READ_BATCHES_PAGE,
    BatchCollector,
    BatchMove,
    Fence,
    LogStart,
    NewObject,
    ObjectBatch,
    ObjectCounts,
    ObjectRef,
    decode_outcomes,
    decode_producer_state,
    encode_configs,
    encode_producer_batches,
    high_watermark,
    outcomes_json,
    partition_offsets,
)
from driftlog.coordinator.lease import LeaseRecord
from driftlog.coordinator.sequencer import (
    PartitionKey,
    PartitionSequence,
    ProducerKey,
    SequencedObject,
    SequencerSnapshot,
)

# Applied in order; each entry moves the schema to the next version.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE cluster (
        singleton integer PRIMARY KEY CHECK (singleton = 0),
        cluster_id text NOT NULL
    );
    CREATE TABLE leases (
        shard integer PRIMARY KEY,
        holder text NOT NULL,
        address text NOT NULL,
        epoch bigint NOT NULL,
        expires_ms bigint NOT NULL
    );
    CREATE TABLE topics (
        topic_id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        partition_count integer NOT NULL,
        configs text NOT NULL
    );
    CREATE TABLE partitions (
        topic_id uuid NOT NULL,
        partition integer NOT NULL,
        log_start_offset bigint NOT NULL,
        PRIMARY KEY (topic_id, partition)
    );
    CREATE TABLE objects (
        object_id bigint PRIMARY KEY,
        key text NOT NULL UNIQUE,
        size bigint NOT NULL,
        committed_ms bigint NOT NULL,
        outcomes text NOT NULL
    );
    CREATE TABLE batches (
        topic_id uuid NOT NULL,
        partition integer NOT NULL,
        last_offset bigint NOT NULL,
        base_offset bigint NOT NULL,
        object_id bigint NOT NULL,
        byte_offset bigint NOT NULL,
        byte_length integer NOT NULL,
        max_timestamp_ms bigint NOT NULL,
        log_append_time_ms bigint NOT NULL,
        time_index_ms bigint NOT NULL,
        PRIMARY KEY (topic_id, partition, last_offset)
    );
    CREATE INDEX batches_by_time ON batches (topic_id, partition, time_index_ms, last_offset);
    CREATE TABLE producer_states (
        producer_id bigint NOT NULL,
        topic_id uuid NOT NULL,
        partition integer NOT NULL,
        epoch integer NOT NULL,
        batches text NOT NULL,
        PRIMARY KEY (producer_id, topic_id, partition)
    );
    CREATE SEQUENCE producer_ids MINVALUE 0 START 0;
    CREATE TABLE group_offsets (
        group_id text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        committed_offset bigint NOT NULL,
        leader_epoch integer NOT NULL,
        metadata text,
        PRIMARY KEY (group_id, topic, partition)
    );
    """,
    """
    CREATE TABLE agents (
        agent_id text PRIMARY KEY,
        node_id integer NOT NULL,
        host text NOT NULL,
        port integer NOT NULL,
        zone text NOT NULL,
        rpc_address text NOT NULL,
        heartbeat_ms bigint NOT NULL
    );
    """,
    # The object lifecycle. An object is dead once no batch references it (found
    # through batches_by_object); dead objects wait out a grace period, are deleted
    # from the store and stay as tombstone rows (deleted_ms) for a while.
    """
    ALTER TABLE objects ADD COLUMN level integer NOT NULL DEFAULT 0,
        ADD COLUMN dead_since_ms bigint, ADD COLUMN deleted_ms bigint;
    CREATE INDEX batches_by_object ON batches (object_id);
    CREATE INDEX objects_dead ON objects (dead_since_ms)
        WHERE dead_since_ms IS NOT NULL AND deleted_ms IS NULL;
    CREATE INDEX objects_deleted ON objects (committed_ms) WHERE deleted_ms IS NOT NULL;
    CREATE INDEX objects_compactable ON objects (size, object_id)
        WHERE dead_since_ms IS NULL;
    UPDATE objects SET dead_since_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
        WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x647269667430
_WRITER_SESSION_PREFIX = "driftlog-writer-"  # any constant shared by all agents

# Objects whose last reference a transaction removed: mark the candidates before the
# batches go, then unmark those still referenced (by the index on batches.object_id).
_UNMARK_REFERENCED = (
    b"UPDATE objects SET dead_since_ms = NULL WHERE dead_since_ms = %s AND deleted_ms IS NULL"
    b" AND EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)"
)
_DEAD_OBJECTS = (
    "SELECT object_id, key, size FROM objects WHERE dead_since_ms IS NOT NULL"
    " AND dead_since_ms < %s AND deleted_ms IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)"
    " ORDER BY dead_since_ms LIMIT %s"
)
_COMPACTION_CANDIDATES = (
    "SELECT object_id, key, size, level FROM objects WHERE dead_since_ms IS NULL"
    " AND size < %s AND committed_ms < %s ORDER BY level, object_id LIMIT %s"
)
_OBJECT_COUNTS = (
    "SELECT count(*) FILTER (WHERE dead_since_ms IS NULL),"
    " sum(size) FILTER (WHERE dead_since_ms IS NULL),"
    " count(*) FILTER (WHERE dead_since_ms IS NOT NULL AND deleted_ms IS NULL),"
    " count(*) FILTER (WHERE deleted_ms IS NOT NULL) FROM objects"
)

# The last statement of a group commit: the fence check (`_check_fence`: it takes the
# lease row's lock, ordering it against a takeover) and the round's objects, stored
# only if the fence holds; returns how many lease rows matched (0: fenced).
_STORE_OBJECTS_FENCED = (
    b"WITH fence AS (UPDATE leases SET expires_ms = greatest(expires_ms, %s)"
    b" WHERE shard = %s AND epoch = %s RETURNING 1),"
    b" stored AS (INSERT INTO objects (object_id, key, size, committed_ms, outcomes,"
    b" dead_since_ms) SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[],"
    b" %s::bigint[], %s::text[], %s::bigint[]) WHERE EXISTS (SELECT FROM fence))"
    b" SELECT count(*) FROM fence"
)

_LOCATION = (
    "o.key, b.byte_offset, b.byte_length, b.base_offset, b.last_offset,"
    " b.max_timestamp_ms, b.log_append_time_ms"
)


class PostgresBackend:
    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 8,
        timeout_s: float = 5.0,
        writer_idle_ms: int = 5_000,
    ) -> None:
        self._dsn = dsn
        self._timeout_s = timeout_s
        connect = {
            "autocommit": True,
            "connect_timeout": max(1, int(timeout_s)),
            # Notice a dead peer in seconds, not hours, on both sides.
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=timeout_s,
            kwargs=connect,
        )
        # The writer's own connections: reads (catching-up consumers) cannot starve its
        # commits and lease renewals. A writer that stops mid-transaction (paused,
        # partitioned) would hold index entries its successor needs: the server cancels
        # its statement after a lease (a COPY waiting for data counts), ends the session
        # after a lease idle in a transaction, and notices a vanished peer by keepalives.
        # A statement gets at least 10 s: a round is bounded (writer.py) and takes far less.
        # Names this process's writer sessions, so a new lease holder can end the old
        # holder's open transactions (see `_end_other_writer_transactions`).
        self._writer_session_name = f"{_WRITER_SESSION_PREFIX}{uuid.uuid4().hex}"
        server_options = (
            f"-c statement_timeout={max(2 * writer_idle_ms, 10_000)}"
            f" -c idle_in_transaction_session_timeout={writer_idle_ms}"
            " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
        )
        self._write_pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=3,
            open=False,
            timeout=timeout_s,
            kwargs={
                **connect,
                "options": server_options,
                "application_name": self._writer_session_name,
            },
        )

    # Lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._timeout_s)
            await self._write_pool.open(wait=True, timeout=self._timeout_s)
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
                )
                row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
                version = row[0] if row else 0
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the database has schema version {version}; this Driftlog knows"
                        f" {SCHEMA_VERSION} (upgrade Driftlog)"
                    )
                for migration in MIGRATIONS[version:]:
                    await conn.execute(migration.encode())
                if row is None:
                    await conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
                else:
                    await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def close(self) -> None:
        await self._write_pool.close()
        await self._pool.close()

    async def _fetch(
        self, query: str, params: Sequence[Any] = (), *, writer: bool = False
    ) -> list[tuple[Any, ...]]:
        pool = self._write_pool if writer else self._pool
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(query.encode(), params)
                return await cursor.fetchall()
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def cluster_id(self, proposed: str) -> str:
        await self._fetch(
            "INSERT INTO cluster VALUES (0, %s) ON CONFLICT DO NOTHING RETURNING 1", (proposed,)
        )
        [(cluster_id,)] = await self._fetch("SELECT cluster_id FROM cluster")
        return str(cluster_id)

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        await self._fetch(
            "INSERT INTO agents VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (agent_id)"
            " DO UPDATE SET node_id = excluded.node_id, host = excluded.host,"
            " port = excluded.port, zone = excluded.zone, rpc_address = excluded.rpc_address,"
            " heartbeat_ms = excluded.heartbeat_ms RETURNING 1",
            (
                agent.agent_id,
                agent.node_id,
                agent.host,
                agent.port,
                agent.zone,
                agent.rpc_address,
                agent.heartbeat_ms,
            ),
        )

    async def live_agents(self, since_ms: int) -> list[AgentInfo]:
        rows = await self._fetch(
            "SELECT agent_id, node_id, host, port, zone, rpc_address, heartbeat_ms FROM agents"
            " WHERE heartbeat_ms >= %s ORDER BY node_id, agent_id",
            (since_ms,),
        )
        return [AgentInfo(*row) for row in rows]

    async def remove_agent(self, agent_id: str) -> None:
        await self._fetch("DELETE FROM agents WHERE agent_id = %s RETURNING 1", (agent_id,))

    # Lease --------------------------------------------------------------------
    async def read_lease(self, shard: int) -> LeaseRecord | None:
        rows = await self._fetch(
            "SELECT shard, holder, address, epoch, expires_ms FROM leases WHERE shard = %s",
            (shard,),
        )
        return LeaseRecord(*rows[0]) if rows else None

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        row = (new.holder, new.address, new.epoch, new.expires_ms, new.shard)
        if expected is None:
            rows = await self._fetch(
                "INSERT INTO leases (holder, address, epoch, expires_ms, shard)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                row,
                writer=True,
            )
        else:
            rows = await self._fetch(
                "UPDATE leases SET holder = %s, address = %s, epoch = %s, expires_ms = %s"
                " WHERE shard = %s AND epoch = %s RETURNING 1",
                (*row, expected.epoch),
                writer=True,
            )
        if len(rows) != 1:
            return False
        await self._end_other_writer_transactions()
        return True

    async def _end_other_writer_transactions(self) -> None:
        """End every transaction another process's writer sessions have open.

        A deposed writer that stopped mid-transaction (paused, partitioned) keeps
        its uncommitted rows, and so its unique-index entries: the new writer, which
        numbers objects and offsets from what is committed, would wait on them. The
        statement timeout does not help once such a session waits for its client
        to finish a COPY. Its epoch is no longer the lease's, so nothing it has open
        could commit anyway (the fence check comes last): end those sessions now.
        Sessions outside a transaction are left alone. PostgreSQL lets a role
        terminate its own sessions; all agents connect as the same role.
        """
        await self._fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE %s"
            " AND application_name <> %s AND xact_start IS NOT NULL",
            (_WRITER_SESSION_PREFIX + "%", self._writer_session_name),
            writer=True,
        )

    async def release_lease(self, fence: Fence) -> None:
        await self._fetch(
            "UPDATE leases SET expires_ms = 0 WHERE shard = %s AND epoch = %s RETURNING 1",
            (fence.shard, fence.epoch),
            writer=True,
        )

    async def renew_lease(self, fence: Fence) -> None:
        try:
            async with self._write_pool.connection() as conn:
                await _check_fence(conn, fence)
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    # Writer -------------------------------------------------------------------
    async def load_sequencer(self, shard: int) -> SequencerSnapshot:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                topics = await _load_topics(conn)
                cursor = await conn.execute(
                    b"SELECT p.topic_id, p.partition, p.log_start_offset, b.last_offset,"
                    b" b.time_index_ms FROM partitions p LEFT JOIN LATERAL"
                    b" (SELECT last_offset, time_index_ms FROM batches"
                    b"  WHERE topic_id = p.topic_id AND partition = p.partition"
                    b"  ORDER BY last_offset DESC LIMIT 1) b ON true"
                )
                partitions: dict[PartitionKey, PartitionSequence] = {}
                for tid, partition, log_start, last, time_index in await cursor.fetchall():
                    hwm = high_watermark(log_start, last)
                    partitions[(tid, partition)] = PartitionSequence(
                        log_start, hwm, hwm, -1 if time_index is None else time_index
                    )
                cursor = await conn.execute(
                    b"SELECT producer_id, topic_id, partition, epoch, batches FROM producer_states"
                )
                producers = {
                    (pid, tid, partition): decode_producer_state(epoch, batches)
                    for pid, tid, partition, epoch, batches in await cursor.fetchall()
                }
                cursor = await conn.execute(b"SELECT coalesce(max(object_id), 0) + 1 FROM objects")
                row = await cursor.fetchone()
                assert row is not None
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        return SequencerSnapshot(topics, partitions, producers, int(row[0]))

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        rows = await self._fetch(
            "SELECT key, outcomes FROM objects WHERE key = ANY(%s)", (list(keys),), writer=True
        )
        return {key: decode_outcomes(outcomes) for key, outcomes in rows}

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await self.persist_objects_overlapping(fence, objects, None)

    async def persist_objects_overlapping(
        self,
        fence: Fence,
        objects: Sequence[SequencedObject],
        after: Awaitable[bool] | None,
    ) -> None:
        """One group commit. The batch rows go in first (one COPY); the last statement
        checks the fence and stores the objects, right before COMMIT, so the lease row
        is locked only briefly and the next round's rows can be copied while this one
        commits (`after` orders the commits). Every statement is a round trip with the
        server and costs the writer more CPU than the rows it carries, hence few."""
        updates: dict[ProducerKey, Any] = {}
        for o in objects:
            updates.update(o.producer_updates)
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                async with cursor.copy(
                    b"COPY batches (topic_id, partition, last_offset, base_offset, object_id,"
                    b" byte_offset, byte_length, max_timestamp_ms, log_append_time_ms,"
                    b" time_index_ms) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    # Fixed-size binary rows, one write for the whole round: cheaper to
                    # build than text and cheaper for the server to parse.
                    await copy.write(_batch_rows(objects))
                if updates:
                    await cursor.executemany(
                        b"INSERT INTO producer_states VALUES (%s, %s, %s, %s, %s)"
                        b" ON CONFLICT (producer_id, topic_id, partition) DO UPDATE"
                        b" SET epoch = excluded.epoch, batches = excluded.batches",
                        [
                            (pid, tid, partition, s.epoch, encode_producer_batches(s))
                            for (pid, tid, partition), s in updates.items()
                        ],
                    )
                if after is not None and not await after:
                    raise CoordinatorUnavailable("an earlier transaction failed")
                # An object whose batches were all refused (duplicates) is stored dead:
                # nothing references it.
                await cursor.execute(
                    _STORE_OBJECTS_FENCED,
                    (
                        fence.expires_ms,
                        fence.shard,
                        fence.epoch,
                        *_object_arrays(objects),
                    ),
                )
                row = await cursor.fetchone()
                if row is None or not row[0]:
                    raise Fenced(
                        f"writer epoch {fence.epoch} of shard {fence.shard} was superseded"
                    )
        except psycopg.errors.UniqueViolation as e:
            # A deposed writer's object ids collide with its successor's: say so.
            if await self._superseded(fence):
                raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} superseded") from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def _superseded(self, fence: Fence) -> bool:
        lease = await self.read_lease(fence.shard)
        return lease is None or lease.epoch != fence.epoch

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                await _check_fence(conn, fence)
                await conn.execute(
                    b"INSERT INTO topics VALUES (%s, %s, %s, %s) ON CONFLICT (topic_id) DO UPDATE"
                    b" SET partition_count = excluded.partition_count,"
                    b" configs = excluded.configs",
                    (topic.topic_id, topic.name, topic.partition_count, encode_configs(topic)),
                )
                await conn.cursor().executemany(
                    b"INSERT INTO partitions VALUES (%s, %s, 0)",
                    [
                        (topic.topic_id, p)
                        for p in range(old_partition_count, topic.partition_count)
                    ],
                )
        except psycopg.errors.UniqueViolation as e:
            raise CoordinatorUnavailable(f"topic {topic.name} exists: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                await _check_fence(conn, fence)
                await conn.execute(
                    b"UPDATE objects SET dead_since_ms = %s WHERE dead_since_ms IS NULL AND"
                    b" object_id IN (SELECT object_id FROM batches WHERE topic_id = %s)",
                    (now_ms, topic.topic_id),
                )
                for table in ("topics", "partitions", "batches", "producer_states"):
                    await conn.execute(
                        f"DELETE FROM {table} WHERE topic_id = %s".encode(), (topic.topic_id,)
                    )
                await conn.execute(_UNMARK_REFERENCED, (now_ms,))
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                await cursor.executemany(
                    b"UPDATE partitions SET log_start_offset = %s WHERE topic_id = %s"
                    b" AND partition = %s AND log_start_offset < %s",
                    [(s.log_start_offset, s.topic_id, s.partition, s.log_start_offset)
                     for s in starts],
                )  # fmt: skip
                await cursor.executemany(
                    b"UPDATE objects SET dead_since_ms = %s WHERE dead_since_ms IS NULL AND"
                    b" object_id IN (SELECT object_id FROM batches WHERE topic_id = %s"
                    b" AND partition = %s AND last_offset < %s)",
                    [(now_ms, s.topic_id, s.partition, s.log_start_offset) for s in starts],
                )
                await cursor.executemany(
                    b"DELETE FROM batches WHERE topic_id = %s AND partition = %s"
                    b" AND last_offset < %s",
                    [(s.topic_id, s.partition, s.log_start_offset) for s in starts],
                )
                await cursor.execute(_UNMARK_REFERENCED, (now_ms,))
                await _check_fence(conn, fence)
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        new_id = new_object.object_id
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                await cursor.execute(
                    b"INSERT INTO objects (object_id, key, size, committed_ms, outcomes, level)"
                    b" VALUES (%s, %s, %s, %s, '[]', %s)",
                    (
                        new_id,
                        new_object.key,
                        new_object.size,
                        new_object.committed_ms,
                        new_object.level,
                    ),
                )
                await cursor.executemany(
                    b"UPDATE batches SET object_id = %s, byte_offset = %s WHERE topic_id = %s"
                    b" AND partition = %s AND last_offset = %s AND object_id = %s",
                    [(new_id, m.byte_offset, m.topic_id, m.partition, m.last_offset,
                      m.from_object_id)
                     for m in moves],
                )  # fmt: skip
                await cursor.execute(
                    b"UPDATE objects SET dead_since_ms = %s WHERE object_id = ANY(%s)"
                    b" AND dead_since_ms IS NULL AND NOT EXISTS"
                    b" (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)",
                    (now_ms, sorted({m.from_object_id for m in moves} | {new_id})),
                )
                await cursor.execute(
                    b"SELECT count(*) FROM batches WHERE object_id = %s", (new_id,)
                )
                row = await cursor.fetchone()
                await _check_fence(conn, fence)
        except psycopg.errors.UniqueViolation as e:
            if await self._superseded(fence):
                raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} superseded") from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        assert row is not None
        return int(row[0])

    # Object lifecycle ---------------------------------------------------------
    async def dead_objects(self, dead_before_ms: int, limit: int) -> list[ObjectRef]:
        rows = await self._fetch(_DEAD_OBJECTS, (dead_before_ms, limit))
        return [ObjectRef(*row) for row in rows]

    async def mark_objects_deleted(self, object_ids: Sequence[int], now_ms: int) -> None:
        await self._fetch(
            "UPDATE objects SET deleted_ms = %s WHERE object_id = ANY(%s) AND deleted_ms IS NULL"
            " AND dead_since_ms IS NOT NULL RETURNING 1",
            (now_ms, list(object_ids)),
        )

    async def purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        rows = await self._fetch(
            "DELETE FROM objects WHERE object_id IN (SELECT object_id FROM objects"
            " WHERE deleted_ms IS NOT NULL AND committed_ms < %s AND object_id <"
            " (SELECT max(object_id) FROM objects) LIMIT %s) RETURNING 1",
            (committed_before_ms, limit),
        )
        return len(rows)

    async def known_keys(self, keys: Sequence[str]) -> set[str]:
        rows = await self._fetch("SELECT key FROM objects WHERE key = ANY(%s)", (list(keys),))
        return {key for (key,) in rows}

    async def compaction_candidates(
        self, committed_before_ms: int, smaller_than: int, limit: int
    ) -> list[ObjectRef]:
        rows = await self._fetch(_COMPACTION_CANDIDATES, (smaller_than, committed_before_ms, limit))
        return [ObjectRef(*row) for row in rows]

    async def batches_in_objects(self, object_ids: Sequence[int]) -> list[ObjectBatch]:
        rows = await self._fetch(
            "SELECT topic_id, partition, last_offset, object_id, byte_offset, byte_length"
            " FROM batches WHERE object_id = ANY(%s) ORDER BY topic_id, partition, last_offset",
            (list(object_ids),),
        )
        return [ObjectBatch(*row) for row in rows]

    async def object_counts(self) -> ObjectCounts:
        [row] = await self._fetch(_OBJECT_COUNTS)
        return ObjectCounts(*(int(v or 0) for v in row))

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        # Newest first, summing sizes: the first batch that does not fit ends the log.
        rows = await self._fetch(
            "SELECT last_offset FROM (SELECT last_offset, sum(byte_length) OVER"
            " (ORDER BY last_offset DESC) AS kept FROM batches WHERE topic_id = %s"
            " AND partition = %s AND last_offset >= %s) AS newest WHERE kept > %s"
            " ORDER BY last_offset DESC LIMIT 1",
            (topic_id, partition, start_offset, keep_bytes),
            writer=True,
        )
        return start_offset if not rows else max(start_offset, int(rows[0][0]) + 1)

    # Reads --------------------------------------------------------------------
    async def load_topics(self) -> list[TopicInfo]:
        try:
            async with self._pool.connection() as conn:
                return await _load_topics(conn)
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def load_partition_offsets(self) -> dict[PartitionKey, PartitionOffsets]:
        return partition_offsets(await self.load_sequencer(0))

    async def read_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        end_offset: int,
        max_bytes: int,
    ) -> list[BatchLocation]:
        collector = BatchCollector(max_bytes)
        position = start_offset
        while position < end_offset:
            rows = await self._fetch(
                f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
                " WHERE b.topic_id = %s AND b.partition = %s AND b.last_offset >= %s"
                " AND b.base_offset < %s ORDER BY b.last_offset LIMIT %s",
                (topic_id, partition, position, end_offset, READ_BATCHES_PAGE),
            )
            if collector.add_page([BatchLocation(*row) for row in rows]):
                break
            position = collector.next_offset
        return collector.batches

    async def first_batch_at_time(
        self,
        topic_id: uuid.UUID,
        partition: int,
        timestamp_ms: int,
        start_offset: int,
        end_offset: int,
    ) -> BatchLocation | None:
        rows = await self._fetch(
            f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
            " WHERE b.topic_id = %s AND b.partition = %s AND b.time_index_ms >= %s"
            " ORDER BY b.time_index_ms, b.last_offset LIMIT 1",
            (topic_id, partition, timestamp_ms),
        )
        if rows and BatchLocation(*rows[0]).last_offset < start_offset:
            # The time index is monotonic in offsets: past the log start, the
            # first live batch is the answer.
            rows = await self._fetch(
                f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
                " WHERE b.topic_id = %s AND b.partition = %s AND b.last_offset >= %s"
                " ORDER BY b.last_offset LIMIT 1",
                (topic_id, partition, start_offset),
            )
        if not rows:
            return None
        location = BatchLocation(*rows[0])
        return location if location.base_offset < end_offset else None

    async def last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        rows = await self._fetch(
            "SELECT time_index_ms FROM batches WHERE topic_id = %s AND partition = %s"
            " AND last_offset < %s ORDER BY last_offset DESC LIMIT 1",
            (topic_id, partition, end_offset),
        )
        return int(rows[0][0]) if rows else -1

    # Producer ids and group offsets -------------------------------------------
    async def allocate_producer_id(self) -> int:
        [(producer_id,)] = await self._fetch("SELECT nextval('producer_ids')")
        return int(producer_id)

    async def put_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.cursor().executemany(
                    b"INSERT INTO group_offsets VALUES (%s, %s, %s, %s, %s, %s)"
                    b" ON CONFLICT (group_id, topic, partition) DO UPDATE SET"
                    b" committed_offset = excluded.committed_offset,"
                    b" leader_epoch = excluded.leader_epoch, metadata = excluded.metadata",
                    [
                        (group_id, o.topic, o.partition, o.offset, o.leader_epoch, o.metadata)
                        for o in offsets
                    ],
                )
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        rows = [
            CommittedOffset(*row)
            for row in await self._fetch(
                "SELECT topic, partition, committed_offset, leader_epoch, metadata"
                " FROM group_offsets WHERE group_id = %s",
                (group_id,),
            )
        ]
        if partitions is None:
            return rows
        wanted = set(partitions)
        return [r for r in rows if (r.topic, r.partition) in wanted]

    async def delete_group(self, group_id: str) -> None:
        await self._fetch("DELETE FROM group_offsets WHERE group_id = %s RETURNING 1", (group_id,))

    async def groups_with_offsets(self) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT DISTINCT group_id FROM group_offsets")]


def _object_arrays(objects: Sequence[SequencedObject]) -> tuple[str, ...]:
    """The round's objects as array literals, column by column (`_STORE_OBJECTS_FENCED`).

    Passed as text and cast by the server: psycopg's list adapters run Python code per
    element, string formatting in C does not."""
    keys = ",".join([_array_element(o.object_key) for o in objects])
    # Outcomes are JSON arrays of integers: nothing in them needs escaping.
    outcomes = '","'.join([outcomes_json(o) for o in objects])
    return (
        "{" + ",".join([str(o.object_id) for o in objects]) + "}",
        "{" + keys + "}",
        "{" + ",".join([str(o.object_size) for o in objects]) + "}",
        "{" + ",".join([str(o.committed_ms) for o in objects]) + "}",
        '{"' + outcomes + '"}',
        "{" + ",".join(["NULL" if o.rows else str(o.committed_ms) for o in objects]) + "}",
    )


def _array_element(text: str) -> str:
    """A quoted element of a PostgreSQL array literal ("Arrays", "Array Value Input")."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# COPY's binary format (PostgreSQL docs, "COPY", "Binary Format"): a signature, flags
# and header extension length, then per row the field count and each field as a
# length and its big-endian value, then -1 as the trailer.
_COPY_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_BINARY_TRAILER = struct.pack(">h", -1)
# A batches row: topic_id uuid, partition integer, last_offset, base_offset, object_id,
# byte_offset bigint, byte_length integer, max_timestamp_ms, log_append_time_ms,
# time_index_ms bigint.
_BATCH_ROW = struct.Struct(">h i16s ii iq iq iq iq ii iq iq iq")


def _batch_rows(objects: Sequence[SequencedObject]) -> bytes:
    pack = _BATCH_ROW.pack
    rows = [_COPY_BINARY_HEADER]
    last_topic: uuid.UUID | None = None
    tid = b""
    for o in objects:
        object_id = o.object_id
        for topic_id, partition, loc, time_index_ms in o.rows:
            if topic_id is not last_topic:  # rows come in runs of a topic
                last_topic, tid = topic_id, topic_id.bytes
            rows.append(
                pack(10, 16, tid, 4, partition, 8, loc.last_offset, 8, loc.base_offset,
                     8, object_id, 8, loc.byte_offset, 4, loc.byte_length,
                     8, loc.max_timestamp_ms, 8, loc.log_append_time_ms, 8, time_index_ms)
            )  # fmt: skip
    rows.append(_COPY_BINARY_TRAILER)
    return b"".join(rows)


async def _check_fence(conn: psycopg.AsyncConnection[Any], fence: Fence) -> None:
    # Takes the lease row's lock: a concurrent takeover waits for this
    # transaction, or this one finds the new epoch and is refused.
    cursor = await conn.execute(
        b"UPDATE leases SET expires_ms = greatest(expires_ms, %s)"
        b" WHERE shard = %s AND epoch = %s RETURNING 1",
        (fence.expires_ms, fence.shard, fence.epoch),
    )
    if await cursor.fetchone() is None:
        raise _superseded_error(fence)


def _superseded_error(fence: Fence) -> Fenced:
    return Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} was superseded")


async def _load_topics(conn: psycopg.AsyncConnection[Any]) -> list[TopicInfo]:
    cursor = await conn.execute(b"SELECT topic_id, name, partition_count, configs FROM topics")
    return [
        TopicInfo(name, tid, count, json.loads(configs))
        for tid, name, count, configs in await cursor.fetchall()
    ]
