"""PostgreSQL backend of the coordinator (cluster mode): psycopg 3, async, with a pool.

Same tables as `sqlite.py` with PostgreSQL types. Migrations are applied at
open under an advisory lock, so agents starting together do not race. The
writer's group commit is one transaction, pipelined: the batch rows and the producer
states that changed, then the fence check (which takes the lease row's lock,
ordering it against a takeover) in the statement that stores the objects.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from driftlog.coordinator.api import (
    AclBinding,
    AgentInfo,
    BatchLocation,
    CommitOutcome,
    CommittedOffset,
    CoordinatorUnavailable,
    Fenced,
    GroupClaim,
    GroupFenced,
    PartitionOffsets,
    QuotaEntity,
    QuotaEntry,
    ScramCredential,
    TopicInfo,
)
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.node_ids import NodeIdTaken, smallest_free
from driftlog.coordinator.core.sequencer import (
    PartitionKey,
    PartitionSequence,
    ProducerKey,
    SequencedObject,
    SequencerSnapshot,
)
from driftlog.coordinator.core.transactions import AbortedTxn, Transaction
from driftlog.coordinator.engines import pg_arrays
from driftlog.coordinator.engines.backend import (
    CLUSTER_SECRET_BYTES,
    MARKER_LEVEL,
    MAX_ROUNDS_IN_FLIGHT,
    READ_BATCHES_PAGE,
    TRANSACTION_COLUMNS,
    BatchCollector,
    BatchMove,
    BatchRef,
    BatchRemoval,
    BatchRewrite,
    Fence,
    KeyCleanState,
    LogStart,
    NewObject,
    ObjectBatch,
    ObjectCounts,
    ObjectRef,
    TxnWrite,
    acl_row,
    agent_from_row,
    check_scram_mechanisms,
    decode_outcomes,
    decode_passes,
    decode_producer_state,
    encode_configs,
    encode_listeners,
    encode_producer_batches,
    encode_quota_entity,
    encode_roles,
    high_watermark,
    outcomes_json,
    partition_offsets,
    quota_entries,
    transaction_from_row,
    transaction_row,
    unique_offsets,
)
from driftlog.coordinator.engines.pg_arrays import int4_array, int8_array, uuid_array

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
    # A group commit (`persist_objects_overlapping`): one statement, so one round trip.
    # It takes the round's lock (an advisory lock: 1685219956 is "drft", then the
    # round's last object id) and says so, inserts the batch rows, then waits for the
    # previous round's lock and goes on only if that round's last object committed.
    # Then the producer states, the fence check, which takes the lease row's lock
    # (ordering it against a takeover) and raises if the writer was deposed, and the
    # objects. The waits and checks need READ COMMITTED (a snapshot per statement).
    # Lookups by time go through the primary key (`_FIRST_BATCH_AT_TIME`).
    """
    CREATE FUNCTION driftlog_commit_round(
        p_round bigint, p_after bigint, p_shard integer, p_epoch bigint, p_expires_ms bigint,
        b_topic_ids uuid[], b_partitions integer[], b_last_offsets bigint[],
        b_base_offsets bigint[], b_object_ids bigint[], b_byte_offsets bigint[],
        b_byte_lengths integer[], b_max_timestamps bigint[], b_append_times bigint[],
        b_time_indexes bigint[],
        s_producer_ids bigint[], s_topic_ids uuid[], s_partitions integer[],
        s_epochs integer[], s_batches text[],
        o_ids bigint[], o_keys text[], o_sizes bigint[], o_committed_ms bigint[],
        o_outcomes text[], o_dead_since_ms bigint[]
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        -- A deposed writer stops here, before it inserts rows its successor may
        -- wait for (the fence below is what orders this round against a takeover).
        IF NOT EXISTS (SELECT FROM leases WHERE shard = p_shard AND epoch = p_epoch) THEN
            RAISE EXCEPTION 'writer epoch % of shard % was superseded', p_epoch, p_shard
                USING ERRCODE = 'DLF01';
        END IF;
        PERFORM pg_advisory_xact_lock(1685219956, (p_round % 2147483648)::integer);
        RAISE NOTICE 'driftlog round % holds its lock', p_round;
        INSERT INTO batches (topic_id, partition, last_offset, base_offset, object_id,
                byte_offset, byte_length, max_timestamp_ms, log_append_time_ms, time_index_ms)
            SELECT * FROM unnest(b_topic_ids, b_partitions, b_last_offsets, b_base_offsets,
                b_object_ids, b_byte_offsets, b_byte_lengths, b_max_timestamps,
                b_append_times, b_time_indexes);
        IF p_after IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock_shared(1685219956, (p_after % 2147483648)::integer);
            IF NOT EXISTS (SELECT FROM objects WHERE object_id = p_after) THEN
                RAISE EXCEPTION 'the previous round (object %) did not commit', p_after
                    USING ERRCODE = 'DLF02';
            END IF;
        END IF;
        -- Producer states are rows an earlier round may update too: only once it is
        -- done (before the wait, two rounds of one producer would deadlock).
        INSERT INTO producer_states (producer_id, topic_id, partition, epoch, batches)
            SELECT * FROM unnest(s_producer_ids, s_topic_ids, s_partitions, s_epochs, s_batches)
            ON CONFLICT (producer_id, topic_id, partition) DO UPDATE
            SET epoch = excluded.epoch, batches = excluded.batches;
        UPDATE leases SET expires_ms = greatest(expires_ms, p_expires_ms)
            WHERE shard = p_shard AND epoch = p_epoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'writer epoch % of shard % was superseded', p_epoch, p_shard
                USING ERRCODE = 'DLF01';
        END IF;
        INSERT INTO objects (object_id, key, size, committed_ms, outcomes, dead_since_ms)
            SELECT * FROM unnest(o_ids, o_keys, o_sizes, o_committed_ms, o_outcomes,
                o_dead_since_ms);
    END
    $$;
    DROP INDEX batches_by_time;
    """,
    # Transactions (coordinator/core/transactions.py): their state by transactional id, the
    # aborted-transaction index read_committed fetches return, and offsets committed in
    # transactions until they end.
    """
    CREATE TABLE transactions (
        transactional_id text PRIMARY KEY,
        producer_id bigint NOT NULL,
        epoch integer NOT NULL,
        state text NOT NULL,
        timeout_ms bigint NOT NULL,
        start_ms bigint NOT NULL,
        updated_ms bigint NOT NULL,
        partitions text NOT NULL,
        groups text NOT NULL,
        last_producer_id bigint NOT NULL,
        last_epoch integer NOT NULL
    );
    CREATE TABLE aborted_txns (
        topic_id uuid NOT NULL,
        partition integer NOT NULL,
        last_offset bigint NOT NULL,
        producer_id bigint NOT NULL,
        first_offset bigint NOT NULL,
        PRIMARY KEY (topic_id, partition, last_offset)
    );
    CREATE TABLE txn_offsets (
        group_id text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        producer_id bigint NOT NULL,
        committed_offset bigint NOT NULL,
        leader_epoch integer NOT NULL,
        metadata text,
        PRIMARY KEY (group_id, topic, partition, producer_id)
    );
    CREATE INDEX txn_offsets_by_producer ON txn_offsets (producer_id);
    CREATE TABLE broker_configs (
        resource text PRIMARY KEY,
        configs text NOT NULL
    );
    CREATE TABLE key_compaction (
        topic_id uuid NOT NULL,
        partition integer NOT NULL,
        cleaned_offset bigint NOT NULL,
        passes text NOT NULL,
        PRIMARY KEY (topic_id, partition)
    );
    """,
    # Security and self-configuring agents. The secret of the agents' RPC; SCRAM
    # credentials, ACLs and client quotas as Kafka keeps them, with one counter every
    # change of theirs moves (agents poll it); node ids by agent id (node_ids.py); the
    # listeners each agent advertises.
    """
    CREATE TABLE cluster_secret (
        singleton integer PRIMARY KEY CHECK (singleton = 0),
        secret bytea NOT NULL
    );
    CREATE TABLE security_version (
        singleton integer PRIMARY KEY CHECK (singleton = 0),
        version bigint NOT NULL
    );
    INSERT INTO security_version VALUES (0, 0);
    CREATE TABLE scram_credentials (
        user_name text NOT NULL,
        mechanism text NOT NULL CHECK (mechanism IN ('SCRAM-SHA-256', 'SCRAM-SHA-512')),
        salt bytea NOT NULL,
        stored_key bytea NOT NULL,
        server_key bytea NOT NULL,
        iterations integer NOT NULL,
        PRIMARY KEY (user_name, mechanism)
    );
    CREATE TABLE acls (
        resource_type integer NOT NULL,
        resource_name text NOT NULL,
        pattern_type integer NOT NULL,
        principal text NOT NULL,
        host text NOT NULL,
        operation integer NOT NULL,
        permission_type integer NOT NULL,
        PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation,
            permission_type)
    );
    CREATE TABLE client_quotas (
        entity text NOT NULL,
        quota_key text NOT NULL,
        value double precision NOT NULL,
        PRIMARY KEY (entity, quota_key)
    );
    CREATE TABLE node_ids (
        agent_id text PRIMARY KEY,
        node_id integer NOT NULL UNIQUE,
        claimed_ms bigint NOT NULL
    );
    ALTER TABLE agents ADD COLUMN listeners text NOT NULL DEFAULT '[]';
    """,
    # One claim per consumer group, Kafka's coordinator epoch (api.GroupClaim): the agent
    # coordinating the group and the epoch its offset commits must carry.
    """
    CREATE TABLE group_claims (
        group_id text PRIMARY KEY,
        agent_id text NOT NULL,
        epoch bigint NOT NULL
    );
    """,
    # Agent roles and groups (cluster/placement.py); rows written before have every role
    # and no group.
    """
    ALTER TABLE agents ADD COLUMN roles text NOT NULL DEFAULT 'fetch,jobs,produce,writer';
    ALTER TABLE agents ADD COLUMN agent_group text NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 0x647269667430
_NODE_ID_LOCK = 0x64726966746E  # "driftn": claims of node ids, one at a time
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
    " AND size < %s AND committed_ms < %s AND level >= 0 ORDER BY level, object_id LIMIT %s"
)
_OBJECT_COUNTS = (
    "SELECT count(*) FILTER (WHERE dead_since_ms IS NULL),"
    " sum(size) FILTER (WHERE dead_since_ms IS NULL),"
    " count(*) FILTER (WHERE dead_since_ms IS NOT NULL AND deleted_ms IS NULL),"
    " count(*) FILTER (WHERE deleted_ms IS NOT NULL) FROM objects"
)

# A group commit (`persist_objects_overlapping`): the round's rows as arrays, one per
# column: numbers and ids in the binary format (`pg_arrays.py`, sent with %b), text as
# array literals cast by the server.
_COMMIT_ROUND = (
    b"SELECT driftlog_commit_round(%s, %s, %s, %s, %s,"
    b" %b, %b, %b, %b, %b, %b, %b, %b, %b, %b,"
    b" %b, %b, %b, %b, %s::text[],"
    b" %b, %s::text[], %b, %b, %s::text[], %s::bigint[])"
)
_HOLDING_NOTICE = re.compile(r"driftlog round (\d+) holds its lock")
# Raised by driftlog_commit_round.
_FENCED_SQLSTATE = "DLF01"
_PREVIOUS_FAILED_SQLSTATE = "DLF02"

_LOAD_TRANSACTIONS = f"SELECT {TRANSACTION_COLUMNS} FROM transactions".encode()

# Group claims. A claim locks the row and reads the holder it replaces, then upserts it
# with the next epoch. (The insert's source joins `previous` so that it is read before
# the upsert: read first in RETURNING, its lock would find the row already replaced.)
_CLAIM_GROUP = (
    b"WITH previous AS (SELECT agent_id FROM group_claims WHERE group_id = %(group_id)s"
    b" FOR UPDATE) INSERT INTO group_claims SELECT %(group_id)s, %(agent_id)s, 1"
    b" FROM (VALUES (1)) AS one LEFT JOIN previous ON true"
    b" ON CONFLICT (group_id) DO UPDATE SET agent_id = excluded.agent_id,"
    b" epoch = group_claims.epoch + 1 RETURNING epoch, (SELECT agent_id FROM previous)"
)
# An offset commit checks the claim in its own statement: the claim row is locked FOR
# SHARE, so a concurrent claim (which locks it FOR UPDATE) commits wholly before (then,
# READ COMMITTED, the lock returns the new row and the check fails) or after the write.
# The stored claim comes back, to tell a fenced commit from a stored one.
_CLAIM_ROW = (
    b"WITH claim AS (SELECT agent_id, epoch FROM group_claims WHERE group_id = %(group_id)s"
    b" FOR SHARE), admitted AS (SELECT 1 FROM claim WHERE agent_id = %(agent_id)s"
    b" AND epoch = %(epoch)s)"
)
_PUT_OFFSETS = _CLAIM_ROW + (
    b", written AS (INSERT INTO group_offsets"
    b" SELECT %(group_id)s, o.* FROM unnest(%(topics)s::text[], %(partitions)s::integer[],"
    b" %(offsets)s::bigint[], %(leader_epochs)s::integer[], %(metadata)s::text[]) AS o"
    b" WHERE EXISTS (SELECT 1 FROM admitted)"
    b" ON CONFLICT (group_id, topic, partition) DO UPDATE SET"
    b" committed_offset = excluded.committed_offset,"
    b" leader_epoch = excluded.leader_epoch, metadata = excluded.metadata RETURNING 1)"
    b" SELECT agent_id, epoch, (SELECT count(*) FROM written) FROM claim"
)
_DELETE_GROUP = _CLAIM_ROW + (
    b", deleted AS (DELETE FROM group_offsets WHERE group_id = %(group_id)s"
    b" AND EXISTS (SELECT 1 FROM admitted) RETURNING 1)"
    b" SELECT agent_id, epoch, (SELECT count(*) FROM deleted) FROM claim"
)

_DATABASE_NOW_MS = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

_ACL = "resource_type, resource_name, pattern_type, principal, host, operation, permission_type"
_INSERT_ACL = b"INSERT INTO acls VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
_DELETE_ACL = f"DELETE FROM acls WHERE ({_ACL}) = (%s, %s, %s, %s, %s, %s, %s)".encode()
# Node ids in use: recorded for any agent id, or advertised by another live agent
# (one that started before node ids were recorded).
_HELD_NODE_IDS = (
    b"SELECT node_id FROM node_ids UNION"
    b" SELECT node_id FROM agents WHERE agent_id <> %s AND heartbeat_ms >= %s"
)
# Another agent alive (a heartbeat or a claim since `since`) that holds or advertises
# the node id.
_LIVE_HOLDER = (
    b"(SELECT n.agent_id FROM node_ids n WHERE n.node_id = %(node_id)s"
    b" AND n.agent_id <> %(agent_id)s AND (n.claimed_ms >= %(since)s OR EXISTS"
    b" (SELECT 1 FROM agents a WHERE a.agent_id = n.agent_id AND a.heartbeat_ms >= %(since)s)))"
    b" UNION ALL (SELECT agent_id FROM agents WHERE node_id = %(node_id)s"
    b" AND agent_id <> %(agent_id)s AND heartbeat_ms >= %(since)s) LIMIT 1"
)

_LOCATION = (
    "o.key, b.byte_offset, b.byte_length, b.base_offset, b.last_offset,"
    " b.max_timestamp_ms, b.log_append_time_ms"
)

# The first batch from `lo` on whose time index reaches `timestamp_ms`, found by
# binary search over offsets through the primary key: a partition's time index never
# decreases with its offsets, so it needs no index of its own (one would add about a
# third to the WAL each committed batch costs). Each step looks at the first batch
# from the middle offset on: before the time, the answer is past it; at or after,
# it is that batch or one before the middle. About log2(hi - lo) index lookups.
_FIRST_BATCH_AT_TIME = f"""
    WITH RECURSIVE search (lo, hi, best) AS (
        SELECT %(lo)s::bigint, %(hi)s::bigint, NULL::bigint
        UNION ALL
        SELECT
            CASE WHEN p.time_index_ms < %(timestamp_ms)s THEN p.last_offset + 1 ELSE s.lo END,
            CASE WHEN p.time_index_ms < %(timestamp_ms)s THEN s.hi ELSE m.middle - 1 END,
            CASE WHEN p.time_index_ms < %(timestamp_ms)s THEN s.best
                ELSE coalesce(p.last_offset, s.best) END
        FROM search s
        CROSS JOIN LATERAL (SELECT s.lo + (s.hi - s.lo) / 2 AS middle) m
        LEFT JOIN LATERAL (
            SELECT last_offset, time_index_ms FROM batches
            WHERE topic_id = %(topic_id)s AND partition = %(partition)s
                AND last_offset >= m.middle
            ORDER BY last_offset LIMIT 1
        ) p ON true
        WHERE s.lo <= s.hi
    )
    SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)
    WHERE b.topic_id = %(topic_id)s AND b.partition = %(partition)s
        AND b.last_offset = (SELECT min(best) FROM search)
"""


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
        # its statement after a lease (a wait for a lock counts), ends the session
        # after a lease idle in a transaction, and notices a vanished peer by keepalives.
        # A statement gets at least 10 s: a round is bounded (writer.py) and takes far less.
        # Names this process's writer sessions, so a new lease holder can end the old
        # holder's open transactions (see `_end_other_writer_transactions`).
        self._writer_session_name = f"{_WRITER_SESSION_PREFIX}{uuid.uuid4().hex}"
        server_options = (
            f"-c statement_timeout={max(2 * writer_idle_ms, 10_000)}"
            f" -c idle_in_transaction_session_timeout={writer_idle_ms}"
            " -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
            # A round's notice that it holds its lock lets the next one go
            # (`persist_objects_overlapping`); without it rounds would run one by one.
            " -c client_min_messages=notice"
            # A round sees the previous one's commit (a snapshot per statement) and
            # waits for its lock as long as the statement may run.
            " -c default_transaction_isolation=read\\ committed -c lock_timeout=0"
        )
        # Rounds in flight, by their last object id: set once the round holds its lock.
        self._rounds_holding: dict[int, asyncio.Event] = {}
        self._write_pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            # The rounds in flight (writer.py), a lease renewal and a lookup.
            max_size=MAX_ROUNDS_IN_FLIGHT + 2,
            open=False,
            timeout=timeout_s,
            kwargs={
                **connect,
                "options": server_options,
                "application_name": self._writer_session_name,
            },
            configure=self._configure_writer_connection,
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
        self,
        query: str,
        params: Sequence[Any] | Mapping[str, Any] = (),
        *,
        writer: bool = False,
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

    async def cluster_secret(self) -> bytes:
        rows = await self._fetch("SELECT secret FROM cluster_secret")
        if not rows:
            # Agents starting at once: the first insert wins, the others wait for it
            # and insert nothing, then all read the winner's bytes.
            await self._fetch(
                "INSERT INTO cluster_secret VALUES (0, %s) ON CONFLICT DO NOTHING RETURNING 1",
                (secrets.token_bytes(CLUSTER_SECRET_BYTES),),
            )
            rows = await self._fetch("SELECT secret FROM cluster_secret")
        return bytes(rows[0][0])

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        # The time of the beat is the database's: agents' clocks may disagree, and one
        # running ahead would otherwise see the others as silent (`live_agents`).
        await self._fetch(
            "INSERT INTO agents (agent_id, node_id, host, port, zone, rpc_address, listeners,"
            " roles, agent_group, heartbeat_ms)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, " + _DATABASE_NOW_MS + ")"
            " ON CONFLICT (agent_id)"
            " DO UPDATE SET node_id = excluded.node_id, host = excluded.host,"
            " port = excluded.port, zone = excluded.zone, rpc_address = excluded.rpc_address,"
            " listeners = excluded.listeners, roles = excluded.roles,"
            " agent_group = excluded.agent_group, heartbeat_ms = excluded.heartbeat_ms"
            " RETURNING 1",
            (
                agent.agent_id,
                agent.node_id,
                agent.host,
                agent.port,
                agent.zone,
                agent.rpc_address,
                encode_listeners(agent.listeners),
                encode_roles(agent.roles),
                agent.group,
            ),
        )

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        rows = await self._fetch(
            "WITH database AS (SELECT " + _DATABASE_NOW_MS + " AS now_ms)"
            " SELECT agent_id, node_id, host, port, zone, rpc_address,"
            " heartbeat_ms - database.now_ms + %s, listeners, roles, agent_group"
            " FROM agents, database"
            " WHERE heartbeat_ms >= database.now_ms - %s ORDER BY node_id, agent_id",
            (now_ms, timeout_ms),
        )
        return [agent_from_row(row) for row in rows]

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

        A deposed writer's round still open in the server (waiting for the round
        before it) keeps its uncommitted rows, and so its unique-index entries: the
        new writer, which numbers objects and offsets from what is committed, would
        wait on them until the statement timeout. Its epoch is no longer the
        lease's, so nothing it has open could commit anyway (the fence check comes
        last): end those sessions now.
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
                cursor = await conn.execute(_LOAD_TRANSACTIONS)
                transactions = [transaction_from_row(r) for r in await cursor.fetchall()]
                cursor = await conn.execute(
                    b"SELECT topic_id, partition, max(last_offset) FROM aborted_txns"
                    b" GROUP BY topic_id, partition"
                )
                aborted_ends = {(t, p): last for t, p, last in await cursor.fetchall()}
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        return SequencerSnapshot(
            topics, partitions, producers, int(row[0]), transactions, aborted_ends
        )

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        rows = await self._fetch(
            "SELECT key, outcomes FROM objects WHERE key = ANY(%s)", (list(keys),), writer=True
        )
        return {key: decode_outcomes(outcomes) for key, outcomes in rows}

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        await self.persist_objects_overlapping(fence, objects, done, None)

    async def persist_objects_overlapping(
        self,
        fence: Fence,
        objects: Sequence[SequencedObject],
        after: asyncio.Future[bool],
        after_object_id: int | None,
    ) -> None:
        """One group commit: one statement, `driftlog_commit_round`, in its own transaction.

        Rounds overlap, and the server orders their commits: each takes a lock named
        by its last object id and says so with a notice, inserts its rows, then waits
        for the previous round's lock and refuses to go on unless that round's last
        object (`after_object_id`) committed. A round is sent only once the previous
        one holds its lock (its notice arrived), so it never looks too early. Rounds
        thus commit back to back, none on top of a failed one, and each costs the
        writer one round trip: statements and round trips are what cost its CPU."""
        round_id = objects[-1].object_id
        holding = self._rounds_holding[round_id] = asyncio.Event()
        try:
            # The columns first: built while the previous round gets to its lock.
            updates: dict[ProducerKey, Any] = {}
            for o in objects:
                updates.update(o.producer_updates)
            columns = (
                *_batch_arrays(objects),
                *_producer_arrays(updates),
                # An object whose batches were all refused (duplicates) is stored
                # dead: nothing references it.
                *_object_arrays(objects),
            )
            if after_object_id is not None:
                previous = self._rounds_holding.get(after_object_id)
                if previous is not None and not previous.is_set():
                    await _first_of(previous.wait(), after)
                if after.done():
                    if not after.result():
                        raise CoordinatorUnavailable("an earlier transaction failed")
                    after_object_id = None  # committed: nothing to wait for
            async with self._write_pool.connection() as conn:
                await conn.execute(
                    _COMMIT_ROUND,
                    (round_id, after_object_id, fence.shard, fence.epoch, fence.expires_ms,
                     *columns),
                )  # fmt: skip
        except psycopg.errors.UniqueViolation as e:
            # A deposed writer's object ids collide with its successor's: say so.
            if await self._superseded(fence):
                raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} superseded") from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            if isinstance(e, psycopg.Error) and e.sqlstate == _FENCED_SQLSTATE:
                raise _superseded_error(fence) from e
            if isinstance(e, psycopg.Error) and e.sqlstate == _PREVIOUS_FAILED_SQLSTATE:
                raise CoordinatorUnavailable("an earlier transaction failed") from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        finally:
            holding.set()  # whatever happened, a round waiting on this one may go on
            if self._rounds_holding.get(round_id) is holding:
                del self._rounds_holding[round_id]

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        """One transaction: the markers through the group-commit function (no round is in
        flight: the writer settles them first), then the transaction rows."""
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                if write.markers:
                    updates: dict[ProducerKey, Any] = {}
                    for o in write.markers:
                        updates.update(o.producer_updates)
                    columns = (
                        *_batch_arrays(write.markers),
                        *_producer_arrays(updates),
                        *_object_arrays(write.markers),
                    )
                    await cursor.execute(
                        _COMMIT_ROUND,
                        (write.markers[-1].object_id, None, fence.shard, fence.epoch,
                         fence.expires_ms, *columns),
                    )  # fmt: skip
                    await cursor.execute(  # never compacted: there are no bytes to copy
                        b"UPDATE objects SET level = %s WHERE object_id = ANY(%s)",
                        (MARKER_LEVEL, [o.object_id for o in write.markers]),
                    )
                else:
                    await _check_fence(conn, fence)
                await cursor.executemany(
                    b"INSERT INTO aborted_txns VALUES (%s, %s, %s, %s, %s)",
                    [(t, p, a.last_offset, a.producer_id, a.first_offset)
                     for t, p, a in write.aborted_rows()],
                )  # fmt: skip
                await cursor.executemany(
                    b"INSERT INTO txn_offsets VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    b" ON CONFLICT (group_id, topic, partition, producer_id) DO UPDATE SET"
                    b" committed_offset = excluded.committed_offset,"
                    b" leader_epoch = excluded.leader_epoch, metadata = excluded.metadata",
                    [(o.group_id, o.topic, o.partition, o.producer_id, o.offset,
                      o.leader_epoch, o.metadata) for o in write.pending_offsets],
                )  # fmt: skip
                for producer_id, commit in write.settled:
                    if commit:
                        await cursor.execute(
                            b"INSERT INTO group_offsets SELECT group_id, topic, partition,"
                            b" committed_offset, leader_epoch, metadata FROM txn_offsets"
                            b" WHERE producer_id = %s ON CONFLICT (group_id, topic, partition)"
                            b" DO UPDATE SET committed_offset = excluded.committed_offset,"
                            b" leader_epoch = excluded.leader_epoch, metadata = excluded.metadata",
                            (producer_id,),
                        )
                    await cursor.execute(
                        b"DELETE FROM txn_offsets WHERE producer_id = %s", (producer_id,)
                    )
                await cursor.executemany(
                    f"INSERT INTO transactions ({TRANSACTION_COLUMNS}) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (transactional_id) DO UPDATE SET producer_id ="
                    " excluded.producer_id, epoch = excluded.epoch, state = excluded.state,"
                    " timeout_ms = excluded.timeout_ms, start_ms = excluded.start_ms,"
                    " updated_ms = excluded.updated_ms, partitions = excluded.partitions,"
                    " groups = excluded.groups, last_producer_id = excluded.last_producer_id,"
                    " last_epoch = excluded.last_epoch".encode(),
                    [transaction_row(t) for t in write.transactions],
                )
                await cursor.executemany(
                    b"DELETE FROM transactions WHERE transactional_id = %s",
                    [(txn_id,) for txn_id in write.expired],
                )
        except (psycopg.Error, PoolTimeout) as e:
            if isinstance(e, psycopg.Error) and e.sqlstate == _FENCED_SQLSTATE:
                raise _superseded_error(fence) from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def load_transactions(self) -> list[Transaction]:
        rows = await self._fetch(_LOAD_TRANSACTIONS.decode())
        return [transaction_from_row(r) for r in rows]

    async def read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        rows = await self._fetch(
            "SELECT producer_id, first_offset, last_offset FROM aborted_txns"
            " WHERE topic_id = %s AND partition = %s AND last_offset >= %s"
            " AND first_offset < %s ORDER BY last_offset",
            (topic_id, partition, start_offset, end_offset),
        )
        return [AbortedTxn(*row) for row in rows]

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        rows = await self._fetch(
            "SELECT topic, partition FROM txn_offsets WHERE group_id = %s", (group_id,)
        )
        return {(str(topic), int(partition)) for topic, partition in rows}

    def _on_notice(self, notice: psycopg.errors.Diagnostic) -> None:
        match = _HOLDING_NOTICE.fullmatch(notice.message_primary or "")
        if match is not None and (holding := self._rounds_holding.get(int(match[1]))):
            holding.set()

    async def _configure_writer_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.add_notice_handler(self._on_notice)
        pg_arrays.register(conn)

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
                for table in (
                    "topics", "partitions", "batches", "producer_states", "aborted_txns",
                    "key_compaction",
                ):  # fmt: skip
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
                for table in (b"batches", b"aborted_txns"):
                    await cursor.executemany(
                        b"DELETE FROM " + table + b" WHERE topic_id = %s AND partition = %s"
                        b" AND last_offset < %s",
                        [(s.topic_id, s.partition, s.log_start_offset) for s in starts],
                    )
                await cursor.execute(_UNMARK_REFERENCED, (now_ms,))
                await _check_fence(conn, fence)
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        try:
            async with self._write_pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                changed = 0
                if new_object is not None:
                    await cursor.execute(
                        b"INSERT INTO objects (object_id, key, size, committed_ms, outcomes,"
                        b" level) VALUES (%s, %s, %s, %s, '[]', %s)",
                        (new_object.object_id, new_object.key, new_object.size,
                         new_object.committed_ms, new_object.level),
                    )  # fmt: skip
                    # executemany pipelines the statements: one round trip, not one a row.
                    if rewrites:
                        await cursor.executemany(
                            b"UPDATE batches SET object_id = %s, byte_offset = %s,"
                            b" byte_length = %s WHERE topic_id = %s AND partition = %s"
                            b" AND last_offset = %s AND object_id = %s",
                            [(new_object.object_id, r.byte_offset, r.byte_length, r.topic_id,
                              r.partition, r.last_offset, r.from_object_id) for r in rewrites],
                        )  # fmt: skip
                        changed += max(cursor.rowcount, 0)
                if removals:
                    await cursor.executemany(
                        b"DELETE FROM batches WHERE topic_id = %s AND partition = %s"
                        b" AND last_offset = %s AND object_id = %s",
                        [(g.topic_id, g.partition, g.last_offset, g.from_object_id)
                         for g in removals],
                    )  # fmt: skip
                    changed += max(cursor.rowcount, 0)
                if state is not None:
                    await cursor.execute(
                        b"INSERT INTO key_compaction VALUES (%s, %s, %s, %s)"
                        b" ON CONFLICT (topic_id, partition) DO UPDATE SET"
                        b" cleaned_offset = excluded.cleaned_offset, passes = excluded.passes",
                        (state.topic_id, state.partition, state.cleaned_offset,
                         json.dumps(state.passes)),
                    )  # fmt: skip
                sources = sorted(
                    {r.from_object_id for r in rewrites}
                    | {r.from_object_id for r in removals}
                    | ({new_object.object_id} if new_object is not None else set())
                )
                await cursor.execute(
                    b"UPDATE objects SET dead_since_ms = %s WHERE object_id = ANY(%s)"
                    b" AND dead_since_ms IS NULL AND NOT EXISTS"
                    b" (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)",
                    (now_ms, sources),
                )
                await _check_fence(conn, fence)
        except psycopg.errors.UniqueViolation as e:
            if await self._superseded(fence):
                raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} superseded") from e
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        return changed

    async def load_broker_configs(self) -> dict[str, dict[str, str]]:
        rows = await self._fetch("SELECT resource, configs FROM broker_configs")
        return {str(resource): dict(json.loads(configs)) for resource, configs in rows}

    async def put_broker_configs(self, resource: str, configs: Mapping[str, str]) -> None:
        if configs:
            await self._fetch(
                "INSERT INTO broker_configs VALUES (%s, %s) ON CONFLICT (resource)"
                " DO UPDATE SET configs = excluded.configs RETURNING 1",
                (resource, json.dumps(dict(configs), sort_keys=True)),
            )
        else:
            await self._fetch(
                "DELETE FROM broker_configs WHERE resource = %s RETURNING 1", (resource,)
            )

    # Security -------------------------------------------------------------------
    async def security_version(self) -> int:
        [(version,)] = await self._fetch("SELECT version FROM security_version")
        return int(version)

    async def load_scram_credentials(self) -> list[ScramCredential]:
        rows = await self._fetch(
            "SELECT user_name, mechanism, salt, stored_key, server_key, iterations"
            " FROM scram_credentials ORDER BY user_name, mechanism"
        )
        return [
            ScramCredential(user, mechanism, bytes(salt), bytes(stored), bytes(server), iterations)
            for user, mechanism, salt, stored, server, iterations in rows
        ]

    async def put_scram_credentials(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> None:
        check_scram_mechanisms(upserts, deletions)
        statements: list[tuple[bytes, tuple[Any, ...]]] = [
            (
                b"DELETE FROM scram_credentials WHERE user_name = %s AND mechanism = %s",
                (user, mechanism),
            )
            for user, mechanism in deletions
        ]
        statements += [
            (
                b"INSERT INTO scram_credentials VALUES (%s, %s, %s, %s, %s, %s)"
                b" ON CONFLICT (user_name, mechanism) DO UPDATE SET salt = excluded.salt,"
                b" stored_key = excluded.stored_key, server_key = excluded.server_key,"
                b" iterations = excluded.iterations",
                (c.user_name, c.mechanism, c.salt, c.stored_key, c.server_key, c.iterations),
            )
            for c in upserts
        ]
        await self._change_security(statements)

    async def load_acls(self) -> list[AclBinding]:
        return [AclBinding(*row) for row in await self._fetch(f"SELECT {_ACL} FROM acls")]

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        await self._change_security([(_INSERT_ACL, acl_row(b)) for b in dict.fromkeys(bindings)])

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> int:
        return await self._change_security(
            [(_DELETE_ACL, acl_row(b)) for b in dict.fromkeys(bindings)]
        )

    async def load_client_quotas(self) -> list[QuotaEntry]:
        rows = await self._fetch("SELECT entity, quota_key, value FROM client_quotas")
        return quota_entries(rows)

    async def alter_client_quotas(
        self, changes: Sequence[tuple[QuotaEntity, str, float | None]]
    ) -> None:
        statements: list[tuple[bytes, tuple[Any, ...]]] = []
        for entity, key, value in changes:
            if value is None:
                statements.append(
                    (
                        b"DELETE FROM client_quotas WHERE entity = %s AND quota_key = %s",
                        (encode_quota_entity(entity), key),
                    )
                )
            else:
                statements.append(
                    (
                        b"INSERT INTO client_quotas VALUES (%s, %s, %s)"
                        b" ON CONFLICT (entity, quota_key) DO UPDATE SET value = excluded.value",
                        (encode_quota_entity(entity), key, float(value)),
                    )
                )
        await self._change_security(statements)

    async def _change_security(self, statements: Sequence[tuple[bytes, tuple[Any, ...]]]) -> int:
        """Run the statements in one transaction, moving the security version with them
        when they changed rows; returns how many rows changed."""
        changed = 0
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cursor = conn.cursor()
                for statement, params in statements:
                    await cursor.execute(statement, params)
                    changed += max(cursor.rowcount, 0)
                if changed:
                    await cursor.execute(b"UPDATE security_version SET version = version + 1")
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e
        return changed

    # Node ids -------------------------------------------------------------------
    async def claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        # Liveness by the database's clock, as heartbeats are stamped with it.
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # Each statement sees the claims committed before it (a snapshot per
                # statement), and claims wait for each other: none sees a stale table.
                await conn.execute(b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                await conn.execute(b"SELECT pg_advisory_xact_lock(%s)", (_NODE_ID_LOCK,))
                return await _claim_node_id(conn, agent_id, requested, live_timeout_ms)
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        rows = await self._fetch(
            f"SELECT {_LOCATION}, b.object_id FROM batches b JOIN objects o USING (object_id)"
            " WHERE b.topic_id = %s AND b.partition = %s AND b.last_offset >= %s"
            " AND b.base_offset < %s ORDER BY b.last_offset LIMIT %s",
            (topic_id, partition, start_offset, end_offset, limit),
        )
        return [BatchRef(BatchLocation(*row[:7]), row[7]) for row in rows]

    async def key_clean_state(self, topic_id: uuid.UUID, partition: int) -> KeyCleanState | None:
        rows = await self._fetch(
            "SELECT cleaned_offset, passes FROM key_compaction WHERE topic_id = %s"
            " AND partition = %s",
            (topic_id, partition),
        )
        if not rows:
            return None
        return KeyCleanState(topic_id, partition, int(rows[0][0]), decode_passes(rows[0][1]))

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
            _FIRST_BATCH_AT_TIME,
            {
                "topic_id": topic_id,
                "partition": partition,
                "timestamp_ms": timestamp_ms,
                "lo": start_offset,
                "hi": end_offset - 1,
            },
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

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        [(epoch, previous)] = await self._fetch_bytes(
            _CLAIM_GROUP, {"group_id": group_id, "agent_id": agent_id}
        )
        taken_from = "" if previous is None or previous == agent_id else str(previous)
        return GroupClaim(group_id, agent_id, int(epoch), taken_from)

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        if claim is not None:
            unique = unique_offsets(offsets)
            params = {
                **_claim_params(group_id, claim),
                "topics": [o.topic for o in unique],
                "partitions": [o.partition for o in unique],
                "offsets": [o.offset for o in unique],
                "leader_epochs": [o.leader_epoch for o in unique],
                "metadata": [o.metadata for o in unique],
            }
            _check_claim(claim, await self._fetch_bytes(_PUT_OFFSETS, params))
            return
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

    async def delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        if claim is not None:
            _check_claim(
                claim, await self._fetch_bytes(_DELETE_GROUP, _claim_params(group_id, claim))
            )
            return
        await self._fetch("DELETE FROM group_offsets WHERE group_id = %s RETURNING 1", (group_id,))

    async def _fetch_bytes(self, query: bytes, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                return await (await conn.execute(query, params)).fetchall()
        except (psycopg.Error, PoolTimeout) as e:
            raise CoordinatorUnavailable(f"postgresql: {e}") from e

    async def groups_with_offsets(self) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT DISTINCT group_id FROM group_offsets")]


def _claim_params(group_id: str, claim: GroupClaim) -> dict[str, Any]:
    return {"group_id": group_id, "agent_id": claim.agent_id, "epoch": claim.epoch}


def _check_claim(claim: GroupClaim, rows: Sequence[tuple[Any, ...]]) -> None:
    """`GroupFenced` unless the claim row the statement locked is `claim`."""
    stored = (str(rows[0][0]), int(rows[0][1])) if rows else None
    if not claim.admits(stored):
        raise GroupFenced(claim, stored)


def _object_arrays(objects: Sequence[SequencedObject]) -> tuple[object, ...]:
    """The round's objects, column by column (`_COMMIT_ROUND`)."""
    keys = ",".join([_array_element(o.object_key) for o in objects])
    # Outcomes are JSON arrays of integers: nothing in them needs escaping.
    outcomes = '","'.join([outcomes_json(o) for o in objects])
    return (
        int8_array([o.object_id for o in objects]),
        "{" + keys + "}",
        int8_array([o.object_size for o in objects]),
        int8_array([o.committed_ms for o in objects]),
        '{"' + outcomes + '"}',
        "{" + ",".join(["NULL" if o.rows else str(o.committed_ms) for o in objects]) + "}",
    )


def _json_element(text: str) -> str:
    return text if text[0] == "[" else text.replace('"', '\\"')


def _array_element(text: str) -> str:
    """A quoted element of a PostgreSQL array literal ("Arrays", "Array Value Input")."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _batch_arrays(objects: Sequence[SequencedObject]) -> tuple[object, ...]:
    """The round's batch rows, column by column (`_COMMIT_ROUND`).

    Transposed by `zip` in C: a Python loop appending to ten lists per row cost
    the writer more than the rest of the statement."""
    rows = list(itertools.chain.from_iterable([o.rows for o in objects]))
    if not rows:  # every batch refused: the objects alone
        none = int8_array([])
        return (uuid_array([]), int4_array([]), none, none, none, none, int4_array([]),
                none, none, none)  # fmt: skip
    topic_ids, partitions, locations, time_indexes = zip(*rows, strict=True)
    _, byte_offsets, byte_lengths, base_offsets, last_offsets, max_timestamps, append_times = zip(
        *locations, strict=True
    )
    object_ids = list(itertools.chain.from_iterable([[o.object_id] * len(o.rows) for o in objects]))
    return (
        uuid_array(_topic_id_bytes(topic_ids)),
        int4_array(partitions),
        int8_array(last_offsets),
        int8_array(base_offsets),
        int8_array(object_ids),
        int8_array(byte_offsets),
        int4_array(byte_lengths),
        int8_array(max_timestamps),
        int8_array(append_times),
        int8_array(time_indexes),
    )


def _topic_id_bytes(topic_ids: Sequence[uuid.UUID]) -> list[bytes]:
    """Each row's topic id as bytes (`UUID.bytes` runs Python code: once per run)."""
    first = topic_ids[0]
    if topic_ids.count(first) == len(topic_ids):  # identity first, in C: one topic
        return [first.bytes] * len(topic_ids)
    out: list[bytes] = []
    last: uuid.UUID | None = None
    raw = b""
    for topic_id in topic_ids:
        if topic_id is not last:  # rows come in runs of a topic
            last, raw = topic_id, topic_id.bytes
        out.append(raw)
    return out


def _producer_arrays(updates: dict[ProducerKey, Any]) -> tuple[object, ...]:
    """Producer states, column by column (`_COMMIT_ROUND`)."""
    keys = list(updates)
    return (
        int8_array([pid for pid, _, _ in keys]),
        uuid_array([tid for _, tid, _ in keys]),
        int4_array([partition for _, _, partition in keys]),
        int4_array([s.epoch for s in updates.values()]),
        # JSON arrays of integers: quoted for the commas, nothing needs escaping; a state
        # with an open transaction is a JSON object, whose quotes are escaped.
        '{"'
        + '","'.join([_json_element(encode_producer_batches(s)) for s in updates.values()])
        + '"}'
        if updates
        else "{}",
    )


async def _first_of(waiting: Coroutine[Any, Any, Any], future: asyncio.Future[bool]) -> None:
    """Wait until `waiting` is done or `future` is."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, future}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


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


async def _claim_node_id(
    conn: psycopg.AsyncConnection[Any], agent_id: str, requested: int | None, live_timeout_ms: int
) -> int:
    """`claim_node_id` under the claims' lock (see `sqlite.py`'s, the same rules)."""
    cursor = await conn.execute(("SELECT " + _DATABASE_NOW_MS).encode())
    [(now_ms,)] = await cursor.fetchall()
    since_ms = now_ms - live_timeout_ms
    cursor = await conn.execute(b"SELECT node_id FROM node_ids WHERE agent_id = %s", (agent_id,))
    row = await cursor.fetchone()
    if row is not None and requested in (None, row[0]):
        await conn.execute(
            b"UPDATE node_ids SET claimed_ms = %s WHERE agent_id = %s", (now_ms, agent_id)
        )
        return int(row[0])
    if requested is None:
        cursor = await conn.execute(_HELD_NODE_IDS, (agent_id, since_ms))
        node_id = smallest_free(r[0] for r in await cursor.fetchall())
    else:
        cursor = await conn.execute(
            _LIVE_HOLDER, {"agent_id": agent_id, "node_id": requested, "since": since_ms}
        )
        holder = await cursor.fetchone()
        if holder is not None:
            raise NodeIdTaken(requested, str(holder[0]))
        node_id = requested
    await conn.execute(
        b"DELETE FROM node_ids WHERE agent_id = %s OR node_id = %s", (agent_id, node_id)
    )
    await conn.execute(b"INSERT INTO node_ids VALUES (%s, %s, %s)", (agent_id, node_id, now_ms))
    return node_id


async def _load_topics(conn: psycopg.AsyncConnection[Any]) -> list[TopicInfo]:
    cursor = await conn.execute(b"SELECT topic_id, name, partition_count, configs FROM topics")
    return [
        TopicInfo(name, tid, count, json.loads(configs))
        for tid, name, count, configs in await cursor.fetchall()
    ]
