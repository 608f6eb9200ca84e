"""SQLite backend of the coordinator (embedded default; WAL, synchronous=FULL). No object store.

Every call runs on one dedicated thread with one connection, so the event loop
never blocks on the database. The schema is the PostgreSQL one with SQLite
types (uuids as 16-byte blobs); `schema_version` drives migrations at open.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import secrets
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
from driftlog.coordinator.core.producers import ProducerPartitionState, record_batch
from driftlog.coordinator.core.sequencer import (
    PartitionKey,
    PartitionSequence,
    ProducerKey,
    SequencedObject,
    SequencerSnapshot,
)
from driftlog.coordinator.core.transactions import AbortedTxn, Transaction
from driftlog.coordinator.engines.backend import (
    CLUSTER_SECRET_BYTES,
    MARKER_LEVEL,
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
)

T = TypeVar("T")

SCHEMA_VERSION = 8

SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE cluster (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    cluster_id TEXT NOT NULL
);
CREATE TABLE leases (
    shard INTEGER PRIMARY KEY,
    holder TEXT NOT NULL,
    address TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE topics (
    topic_id BLOB PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partition_count INTEGER NOT NULL,
    configs TEXT NOT NULL
);
CREATE TABLE partitions (
    topic_id BLOB NOT NULL,
    partition INTEGER NOT NULL,
    log_start_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE objects (
    object_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    outcomes TEXT NOT NULL
);
CREATE TABLE batches (
    topic_id BLOB NOT NULL,
    partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    object_id INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    byte_length INTEGER NOT NULL,
    max_timestamp_ms INTEGER NOT NULL,
    log_append_time_ms INTEGER NOT NULL,
    time_index_ms INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, last_offset)
) WITHOUT ROWID;
CREATE INDEX batches_by_time ON batches (topic_id, partition, time_index_ms, last_offset);
CREATE TABLE producer_states (
    producer_id INTEGER NOT NULL,
    topic_id BLOB NOT NULL,
    partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    batches TEXT NOT NULL,
    PRIMARY KEY (producer_id, topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE producer_ids (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    next_producer_id INTEGER NOT NULL
);
CREATE TABLE agents (
    agent_id TEXT PRIMARY KEY,
    node_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    zone TEXT NOT NULL,
    rpc_address TEXT NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
CREATE TABLE group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"""

_AGENTS_TABLE = SCHEMA[SCHEMA.index("CREATE TABLE agents") :].split(";")[0]

# Version 4: the object lifecycle. An object is dead once no batch references it
# (found through batches_by_object); dead objects wait out a grace period, are
# deleted from the store and stay as tombstone rows (deleted_ms) for a while.
_LIFECYCLE = """
ALTER TABLE objects ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE objects ADD COLUMN dead_since_ms INTEGER;
ALTER TABLE objects ADD COLUMN deleted_ms INTEGER;
CREATE INDEX batches_by_object ON batches (object_id);
CREATE INDEX objects_dead ON objects (dead_since_ms)
    WHERE dead_since_ms IS NOT NULL AND deleted_ms IS NULL;
CREATE INDEX objects_deleted ON objects (committed_ms) WHERE deleted_ms IS NOT NULL;
CREATE INDEX objects_compactable ON objects (size, object_id)
    WHERE dead_since_ms IS NULL;
UPDATE objects SET dead_since_ms = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)
"""

# Version 5: transactions (coordinator/core/transactions.py). Their state by transactional id,
# the aborted-transaction index read_committed fetches return, and offsets committed in
# transactions until they end.
_TRANSACTIONS = """
CREATE TABLE transactions (
    transactional_id TEXT PRIMARY KEY,
    producer_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    timeout_ms INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    partitions TEXT NOT NULL,
    groups TEXT NOT NULL,
    last_producer_id INTEGER NOT NULL,
    last_epoch INTEGER NOT NULL
);
CREATE TABLE aborted_txns (
    topic_id BLOB NOT NULL,
    partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    producer_id INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, last_offset)
) WITHOUT ROWID;
CREATE TABLE txn_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    producer_id INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    PRIMARY KEY (group_id, topic, partition, producer_id)
) WITHOUT ROWID;
CREATE INDEX txn_offsets_by_producer ON txn_offsets (producer_id);
CREATE TABLE broker_configs (
    resource TEXT PRIMARY KEY,
    configs TEXT NOT NULL
);
CREATE TABLE key_compaction (
    topic_id BLOB NOT NULL,
    partition INTEGER NOT NULL,
    cleaned_offset INTEGER NOT NULL,
    passes TEXT NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID
"""

# Version 6: security and self-configuring agents. The secret of the agents' RPC; SCRAM
# credentials, ACLs and client quotas as Kafka keeps them, with one counter every change
# of theirs moves (agents poll it); node ids by agent id (node_ids.py); the listeners
# each agent advertises.
_SECURITY = """
CREATE TABLE cluster_secret (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    secret BLOB NOT NULL
);
CREATE TABLE security_version (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    version INTEGER NOT NULL
);
INSERT INTO security_version VALUES (0, 0);
CREATE TABLE scram_credentials (
    user_name TEXT NOT NULL,
    mechanism TEXT NOT NULL CHECK (mechanism IN ('SCRAM-SHA-256', 'SCRAM-SHA-512')),
    salt BLOB NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    PRIMARY KEY (user_name, mechanism)
) WITHOUT ROWID;
CREATE TABLE acls (
    resource_type INTEGER NOT NULL,
    resource_name TEXT NOT NULL,
    pattern_type INTEGER NOT NULL,
    principal TEXT NOT NULL,
    host TEXT NOT NULL,
    operation INTEGER NOT NULL,
    permission_type INTEGER NOT NULL,
    PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation,
        permission_type)
) WITHOUT ROWID;
CREATE TABLE client_quotas (
    entity TEXT NOT NULL,
    quota_key TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (entity, quota_key)
) WITHOUT ROWID;
CREATE TABLE node_ids (
    agent_id TEXT PRIMARY KEY,
    node_id INTEGER NOT NULL UNIQUE,
    claimed_ms INTEGER NOT NULL
);
ALTER TABLE agents ADD COLUMN listeners TEXT NOT NULL DEFAULT '[]'
"""

# Version 7: one claim per consumer group, Kafka's coordinator epoch (api.GroupClaim):
# the agent coordinating the group and the epoch its offset commits must carry.
_GROUP_CLAIMS = """
CREATE TABLE group_claims (
    group_id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    epoch INTEGER NOT NULL
) WITHOUT ROWID
"""

# Version 8: agent roles and groups (cluster/placement.py). Rows written before have
# every role and no group.
_ROLES = """
ALTER TABLE agents ADD COLUMN roles TEXT NOT NULL DEFAULT 'fetch,jobs,produce,writer';
ALTER TABLE agents ADD COLUMN agent_group TEXT NOT NULL DEFAULT ''
"""

# Objects whose last reference a transaction removed: mark the candidates before the
# batches go, then unmark those still referenced (by the index on batches.object_id).
_UNMARK_REFERENCED = (
    "UPDATE objects SET dead_since_ms = NULL WHERE dead_since_ms = ? AND deleted_ms IS NULL"
    " AND EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)"
)

_ACL = "resource_type, resource_name, pattern_type, principal, host, operation, permission_type"
_INSERT_ACL = "INSERT OR IGNORE INTO acls VALUES (?, ?, ?, ?, ?, ?, ?)"
_DELETE_ACL = f"DELETE FROM acls WHERE ({_ACL}) = (?, ?, ?, ?, ?, ?, ?)"
# Node ids in use: recorded for any agent id, or advertised by another live agent
# (one that started before node ids were recorded).
_HELD_NODE_IDS = (
    "SELECT node_id FROM node_ids UNION"
    " SELECT node_id FROM agents WHERE agent_id <> ? AND heartbeat_ms >= ?"
)
# Another agent alive (a heartbeat or a claim since `since`) that holds or advertises
# the node id.
_LIVE_HOLDER = (
    "SELECT n.agent_id FROM node_ids n WHERE n.node_id = :node_id AND n.agent_id <> :agent_id"
    " AND (n.claimed_ms >= :since OR EXISTS (SELECT 1 FROM agents a"
    " WHERE a.agent_id = n.agent_id AND a.heartbeat_ms >= :since))"
    " UNION ALL SELECT agent_id FROM agents WHERE node_id = :node_id"
    " AND agent_id <> :agent_id AND heartbeat_ms >= :since LIMIT 1"
)

_LOCATION = (
    "o.key, b.byte_offset, b.byte_length, b.base_offset, b.last_offset,"
    " b.max_timestamp_ms, b.log_append_time_ms"
)


_DEAD_OBJECTS = (
    "SELECT object_id, key, size FROM objects WHERE dead_since_ms IS NOT NULL"
    " AND dead_since_ms < ? AND deleted_ms IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)"
    " ORDER BY dead_since_ms LIMIT ?"
)
_COMPACTION_CANDIDATES = (
    "SELECT object_id, key, size, level FROM objects WHERE dead_since_ms IS NULL"
    " AND size < ? AND committed_ms < ? AND level >= 0 ORDER BY level, object_id LIMIT ?"
)
_OBJECT_COUNTS = (
    "SELECT sum(dead_since_ms IS NULL), sum(CASE WHEN dead_since_ms IS NULL THEN size END),"
    " sum(dead_since_ms IS NOT NULL AND deleted_ms IS NULL), sum(deleted_ms IS NOT NULL)"
    " FROM objects"
)


class SqliteBackend:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, functools.partial(fn, *args))
        except sqlite3.Error as e:
            raise CoordinatorUnavailable(f"sqlite: {e}") from e

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "backend not open"
        return self._db

    # Lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before producers are acknowledged.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        with _Transaction(db):
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if "schema_version" in tables:
                version = db.execute("SELECT version FROM schema_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self._path} has schema version {version}; this Driftlog knows"
                        f" {SCHEMA_VERSION} (upgrade Driftlog)"
                    )
                if version < 3:
                    db.execute(_AGENTS_TABLE)
                if version < 4:
                    _execute_script(db, _LIFECYCLE)
                if version < 5:
                    _execute_script(db, _TRANSACTIONS)
                if version < 6:
                    _execute_script(db, _SECURITY)
                if version < 7:
                    _execute_script(db, _GROUP_CLAIMS)
                if version < 8:
                    _execute_script(db, _ROLES)
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            elif "batches" in tables:
                _migrate_from_v1(db)
            else:
                _create_schema(db)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self.db.close)
        self._thread.shutdown(wait=True)

    async def cluster_id(self, proposed: str) -> str:
        return await self._run(self._cluster_id, proposed)

    def _cluster_id(self, proposed: str) -> str:
        with _Transaction(self.db) as db:
            db.execute("INSERT OR IGNORE INTO cluster VALUES (0, ?)", (proposed,))
            return str(db.execute("SELECT cluster_id FROM cluster").fetchone()[0])

    async def cluster_secret(self) -> bytes:
        return await self._run(self._cluster_secret, secrets.token_bytes(CLUSTER_SECRET_BYTES))

    def _cluster_secret(self, proposed: bytes) -> bytes:
        with _Transaction(self.db) as db:
            db.execute("INSERT OR IGNORE INTO cluster_secret VALUES (0, ?)", (proposed,))
            return bytes(db.execute("SELECT secret FROM cluster_secret").fetchone()[0])

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        await self._run(self._heartbeat, agent)

    def _heartbeat(self, agent: AgentInfo) -> None:
        with _Transaction(self.db) as db:
            db.execute(
                "INSERT OR REPLACE INTO agents (agent_id, node_id, host, port, zone,"
                " rpc_address, heartbeat_ms, listeners, roles, agent_group)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    agent.agent_id,
                    agent.node_id,
                    agent.host,
                    agent.port,
                    agent.zone,
                    agent.rpc_address,
                    agent.heartbeat_ms,
                    encode_listeners(agent.listeners),
                    encode_roles(agent.roles),
                    agent.group,
                ),
            )

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        # One host shares the file: its agents share a clock.
        return await self._run(self._live_agents, now_ms - timeout_ms)

    def _live_agents(self, since_ms: int) -> list[AgentInfo]:
        return [
            agent_from_row(row)
            for row in self.db.execute(
                "SELECT agent_id, node_id, host, port, zone, rpc_address, heartbeat_ms,"
                " listeners, roles, agent_group FROM agents WHERE heartbeat_ms >= ?"
                " ORDER BY node_id, agent_id",
                (since_ms,),
            )
        ]

    async def remove_agent(self, agent_id: str) -> None:
        await self._run(self._remove_agent, agent_id)

    def _remove_agent(self, agent_id: str) -> None:
        with _Transaction(self.db) as db:
            db.execute("DELETE FROM agents WHERE agent_id = ?", (agent_id,))

    # Lease --------------------------------------------------------------------
    async def read_lease(self, shard: int) -> LeaseRecord | None:
        return await self._run(self._read_lease, shard)

    def _read_lease(self, shard: int) -> LeaseRecord | None:
        row = self.db.execute(
            "SELECT shard, holder, address, epoch, expires_ms FROM leases WHERE shard = ?", (shard,)
        ).fetchone()
        return LeaseRecord(*row) if row else None

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        return await self._run(self._try_acquire_lease, expected, new)

    def _try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        row = (new.holder, new.address, new.epoch, new.expires_ms, new.shard)
        with _Transaction(self.db) as db:
            if expected is None:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO leases (holder, address, epoch, expires_ms, shard)"
                    " VALUES (?, ?, ?, ?, ?)",
                    row,
                )
            else:
                cursor = db.execute(
                    "UPDATE leases SET holder = ?, address = ?, epoch = ?, expires_ms = ?"
                    " WHERE shard = ? AND epoch = ?",
                    (*row, expected.epoch),
                )
            return cursor.rowcount == 1

    async def renew_lease(self, fence: Fence) -> None:
        await self._run(self._renew_lease, fence)

    async def release_lease(self, fence: Fence) -> None:
        await self._run(self._release_lease, fence)

    def _release_lease(self, fence: Fence) -> None:
        with _Transaction(self.db) as db:
            db.execute(
                "UPDATE leases SET expires_ms = 0 WHERE shard = ? AND epoch = ?",
                (fence.shard, fence.epoch),
            )

    def _renew_lease(self, fence: Fence) -> None:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)

    # Writer -------------------------------------------------------------------
    async def load_sequencer(self, shard: int) -> SequencerSnapshot:
        return await self._run(self._load_sequencer)

    def _load_sequencer(self) -> SequencerSnapshot:
        db = self.db
        with _Transaction(db, immediate=False):
            topics = self._load_topics()
            partitions: dict[PartitionKey, PartitionSequence] = {}
            for tid, partition, log_start, last, time_index in db.execute(
                "SELECT p.topic_id, p.partition, p.log_start_offset,"
                " (SELECT last_offset FROM batches b WHERE b.topic_id = p.topic_id"
                "   AND b.partition = p.partition ORDER BY last_offset DESC LIMIT 1),"
                " (SELECT time_index_ms FROM batches b WHERE b.topic_id = p.topic_id"
                "   AND b.partition = p.partition ORDER BY last_offset DESC LIMIT 1)"
                " FROM partitions p"
            ):
                hwm = high_watermark(log_start, last)
                partitions[(uuid.UUID(bytes=tid), partition)] = PartitionSequence(
                    log_start, hwm, hwm, -1 if time_index is None else time_index
                )
            producers: dict[ProducerKey, ProducerPartitionState] = {}
            for producer_id, tid, partition, epoch, batches in db.execute(
                "SELECT producer_id, topic_id, partition, epoch, batches FROM producer_states"
            ):
                key = (producer_id, uuid.UUID(bytes=tid), partition)
                producers[key] = decode_producer_state(epoch, batches)
            next_object_id = db.execute(
                "SELECT coalesce(max(object_id), 0) + 1 FROM objects"
            ).fetchone()[0]
            transactions = self._load_transactions()
            aborted_ends = {
                (uuid.UUID(bytes=tid), partition): last
                for tid, partition, last in db.execute(
                    "SELECT topic_id, partition, max(last_offset) FROM aborted_txns"
                    " GROUP BY topic_id, partition"
                )
            }
        return SequencerSnapshot(
            topics, partitions, producers, next_object_id, transactions, aborted_ends
        )

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        return await self._run(self._committed_outcomes, list(keys))

    def _committed_outcomes(self, keys: list[str]) -> dict[str, list[CommitOutcome]]:
        return {key: decode_outcomes(outcomes) for key, outcomes in self._objects_by_key(keys)}

    def _objects_by_key(self, keys: list[str]) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows.extend(
                self.db.execute(f"SELECT key, outcomes FROM objects WHERE key IN ({marks})", chunk)
            )
        return rows

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        await self._run(self._persist_objects, fence, objects)

    def _persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            _insert_objects(db, objects)

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        await self._run(self._persist_transactions, fence, write)

    def _persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            _insert_objects(db, write.markers)
            db.executemany(  # never compacted: there are no bytes to copy
                "UPDATE objects SET level = ? WHERE object_id = ?",
                [(MARKER_LEVEL, o.object_id) for o in write.markers],
            )
            db.executemany(
                "INSERT INTO aborted_txns VALUES (?, ?, ?, ?, ?)",
                [(t.bytes, p, a.last_offset, a.producer_id, a.first_offset)
                 for t, p, a in write.aborted_rows()],
            )  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO txn_offsets VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(o.group_id, o.topic, o.partition, o.producer_id, o.offset, o.leader_epoch,
                  o.metadata) for o in write.pending_offsets],
            )  # fmt: skip
            for producer_id, commit in write.settled:
                if commit:
                    db.execute(
                        "INSERT OR REPLACE INTO group_offsets SELECT group_id, topic, partition,"
                        " committed_offset, leader_epoch, metadata FROM txn_offsets"
                        " WHERE producer_id = ?",
                        (producer_id,),
                    )
                db.execute("DELETE FROM txn_offsets WHERE producer_id = ?", (producer_id,))
            db.executemany(
                f"INSERT OR REPLACE INTO transactions ({TRANSACTION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [transaction_row(t) for t in write.transactions],
            )
            db.executemany(
                "DELETE FROM transactions WHERE transactional_id = ?",
                [(txn_id,) for txn_id in write.expired],
            )

    async def load_transactions(self) -> list[Transaction]:
        return await self._run(self._load_transactions)

    def _load_transactions(self) -> list[Transaction]:
        return [
            transaction_from_row(row)
            for row in self.db.execute(f"SELECT {TRANSACTION_COLUMNS} FROM transactions")
        ]

    async def read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        return await self._run(self._read_aborted, topic_id, partition, start_offset, end_offset)

    def _read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        return [
            AbortedTxn(*row)
            for row in self.db.execute(
                "SELECT producer_id, first_offset, last_offset FROM aborted_txns"
                " WHERE topic_id = ? AND partition = ? AND last_offset >= ?"
                " AND first_offset < ? ORDER BY last_offset",
                (topic_id.bytes, partition, start_offset, end_offset),
            )
        ]

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        return await self._run(self._pending_offsets, group_id)

    def _pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        return {
            (str(topic), int(partition))
            for topic, partition in self.db.execute(
                "SELECT topic, partition FROM txn_offsets WHERE group_id = ?", (group_id,)
            )
        }

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        await self._run(self._put_topic, fence, topic, old_partition_count)

    def _put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            db.execute(
                "INSERT INTO topics VALUES (?, ?, ?, ?) ON CONFLICT (topic_id) DO UPDATE SET"
                " partition_count = excluded.partition_count, configs = excluded.configs",
                (topic.topic_id.bytes, topic.name, topic.partition_count, encode_configs(topic)),
            )
            db.executemany(
                "INSERT INTO partitions VALUES (?, ?, 0)",
                [
                    (topic.topic_id.bytes, p)
                    for p in range(old_partition_count, topic.partition_count)
                ],
            )

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        await self._run(self._drop_topic, fence, topic, now_ms)

    def _drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        tid = topic.topic_id.bytes
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            db.execute(
                "UPDATE objects SET dead_since_ms = ? WHERE dead_since_ms IS NULL AND object_id"
                " IN (SELECT object_id FROM batches WHERE topic_id = ?)",
                (now_ms, tid),
            )
            for table in (
                "topics", "partitions", "batches", "producer_states", "aborted_txns",
                "key_compaction",
            ):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE topic_id = ?", (tid,))
            db.execute(_UNMARK_REFERENCED, (now_ms,))

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        await self._run(self._set_log_starts, fence, starts, now_ms)

    def _set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            for tid, partition, log_start in starts:
                db.execute(
                    "UPDATE partitions SET log_start_offset = ? WHERE topic_id = ?"
                    " AND partition = ? AND log_start_offset < ?",
                    (log_start, tid.bytes, partition, log_start),
                )
                db.execute(
                    "UPDATE objects SET dead_since_ms = ? WHERE dead_since_ms IS NULL AND"
                    " object_id IN (SELECT object_id FROM batches WHERE topic_id = ?"
                    " AND partition = ? AND last_offset < ?)",
                    (now_ms, tid.bytes, partition, log_start),
                )
                for table in ("batches", "aborted_txns"):
                    db.execute(
                        f"DELETE FROM {table} WHERE topic_id = ? AND partition = ?"
                        " AND last_offset < ?",
                        (tid.bytes, partition, log_start),
                    )
            db.execute(_UNMARK_REFERENCED, (now_ms,))

    async def relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        return await self._run(self._relocate_batches, fence, new_object, moves, now_ms)

    def _relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        new_id = new_object.object_id
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            db.execute(
                "INSERT INTO objects (object_id, key, size, committed_ms, outcomes, level)"
                " VALUES (?, ?, ?, ?, '[]', ?)",
                (
                    new_id,
                    new_object.key,
                    new_object.size,
                    new_object.committed_ms,
                    new_object.level,
                ),
            )
            db.executemany(
                "UPDATE batches SET object_id = ?, byte_offset = ? WHERE topic_id = ?"
                " AND partition = ? AND last_offset = ? AND object_id = ?",
                [
                    (new_id, m.byte_offset, m.topic_id.bytes, m.partition, m.last_offset,
                     m.from_object_id)
                    for m in moves
                ],
            )  # fmt: skip
            sources = sorted({m.from_object_id for m in moves} | {new_id})
            for start in range(0, len(sources), 500):
                chunk = sources[start : start + 500]
                db.execute(
                    f"UPDATE objects SET dead_since_ms = ? WHERE object_id IN"
                    f" ({','.join('?' * len(chunk))}) AND dead_since_ms IS NULL AND NOT EXISTS"
                    " (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)",
                    (now_ms, *chunk),
                )
            (moved,) = db.execute(
                "SELECT count(*) FROM batches WHERE object_id = ?", (new_id,)
            ).fetchone()
            return int(moved)

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        return await self._run(
            self._rewrite_batches, fence, new_object, rewrites, removals, state, now_ms
        )

    def _rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        with _Transaction(self.db) as db:
            _check_fence(db, fence)
            changed = 0
            if new_object is not None:
                db.execute(
                    "INSERT INTO objects (object_id, key, size, committed_ms, outcomes, level)"
                    " VALUES (?, ?, ?, ?, '[]', ?)",
                    (new_object.object_id, new_object.key, new_object.size,
                     new_object.committed_ms, new_object.level),
                )  # fmt: skip
                for r in rewrites:
                    changed += db.execute(
                        "UPDATE batches SET object_id = ?, byte_offset = ?, byte_length = ?"
                        " WHERE topic_id = ? AND partition = ? AND last_offset = ?"
                        " AND object_id = ?",
                        (new_object.object_id, r.byte_offset, r.byte_length, r.topic_id.bytes,
                         r.partition, r.last_offset, r.from_object_id),
                    ).rowcount  # fmt: skip
            for gone in removals:
                changed += db.execute(
                    "DELETE FROM batches WHERE topic_id = ? AND partition = ? AND last_offset = ?"
                    " AND object_id = ?",
                    (gone.topic_id.bytes, gone.partition, gone.last_offset, gone.from_object_id),
                ).rowcount
            if state is not None:
                db.execute(
                    "INSERT OR REPLACE INTO key_compaction VALUES (?, ?, ?, ?)",
                    (state.topic_id.bytes, state.partition, state.cleaned_offset,
                     json.dumps(state.passes)),
                )  # fmt: skip
            sources = sorted(
                {r.from_object_id for r in rewrites}
                | {r.from_object_id for r in removals}
                | ({new_object.object_id} if new_object is not None else set())
            )
            for start in range(0, len(sources), 500):
                chunk = sources[start : start + 500]
                db.execute(
                    f"UPDATE objects SET dead_since_ms = ? WHERE object_id IN"
                    f" ({','.join('?' * len(chunk))}) AND dead_since_ms IS NULL AND NOT EXISTS"
                    " (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)",
                    (now_ms, *chunk),
                )
            return changed

    async def read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        return await self._run(
            self._read_batch_refs, topic_id, partition, start_offset, end_offset, limit
        )

    def _read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        rows = self.db.execute(
            f"SELECT {_LOCATION}, b.object_id FROM batches b JOIN objects o USING (object_id)"
            " WHERE b.topic_id = ? AND b.partition = ? AND b.last_offset >= ?"
            " AND b.base_offset < ? ORDER BY b.last_offset LIMIT ?",
            (topic_id.bytes, partition, start_offset, end_offset, limit),
        ).fetchall()
        return [BatchRef(BatchLocation(*row[:7]), row[7]) for row in rows]

    async def key_clean_state(self, topic_id: uuid.UUID, partition: int) -> KeyCleanState | None:
        return await self._run(self._key_clean_state, topic_id, partition)

    def _key_clean_state(self, topic_id: uuid.UUID, partition: int) -> KeyCleanState | None:
        row = self.db.execute(
            "SELECT cleaned_offset, passes FROM key_compaction WHERE topic_id = ?"
            " AND partition = ?",
            (topic_id.bytes, partition),
        ).fetchone()
        if row is None:
            return None
        return KeyCleanState(topic_id, partition, row[0], decode_passes(row[1]))

    async def load_broker_configs(self) -> dict[str, dict[str, str]]:
        return await self._run(self._load_broker_configs)

    def _load_broker_configs(self) -> dict[str, dict[str, str]]:
        return {
            str(resource): dict(json.loads(configs))
            for resource, configs in self.db.execute("SELECT resource, configs FROM broker_configs")
        }

    async def put_broker_configs(self, resource: str, configs: Mapping[str, str]) -> None:
        await self._run(self._put_broker_configs, resource, dict(configs))

    def _put_broker_configs(self, resource: str, configs: dict[str, str]) -> None:
        with _Transaction(self.db) as db:
            if configs:
                db.execute(
                    "INSERT OR REPLACE INTO broker_configs VALUES (?, ?)",
                    (resource, json.dumps(configs, sort_keys=True)),
                )
            else:
                db.execute("DELETE FROM broker_configs WHERE resource = ?", (resource,))

    # Security -------------------------------------------------------------------
    async def security_version(self) -> int:
        return await self._run(
            lambda: int(self.db.execute("SELECT version FROM security_version").fetchone()[0])
        )

    async def load_scram_credentials(self) -> list[ScramCredential]:
        return await self._run(self._load_scram_credentials)

    def _load_scram_credentials(self) -> list[ScramCredential]:
        return [
            ScramCredential(user, mechanism, bytes(salt), bytes(stored), bytes(server), iterations)
            for user, mechanism, salt, stored, server, iterations in self.db.execute(
                "SELECT user_name, mechanism, salt, stored_key, server_key, iterations"
                " FROM scram_credentials ORDER BY user_name, mechanism"
            )
        ]

    async def put_scram_credentials(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> None:
        check_scram_mechanisms(upserts, deletions)
        await self._run(self._put_scram_credentials, list(upserts), list(deletions))

    def _put_scram_credentials(
        self, upserts: list[ScramCredential], deletions: list[tuple[str, str]]
    ) -> None:
        with _Transaction(self.db) as db:
            changed = 0
            for user, mechanism in deletions:
                changed += db.execute(
                    "DELETE FROM scram_credentials WHERE user_name = ? AND mechanism = ?",
                    (user, mechanism),
                ).rowcount
            for c in upserts:
                changed += db.execute(
                    "INSERT OR REPLACE INTO scram_credentials VALUES (?, ?, ?, ?, ?, ?)",
                    (c.user_name, c.mechanism, c.salt, c.stored_key, c.server_key, c.iterations),
                ).rowcount
            _bump_security_version(db, changed)

    async def load_acls(self) -> list[AclBinding]:
        return await self._run(
            lambda: [AclBinding(*row) for row in self.db.execute(f"SELECT {_ACL} FROM acls")]
        )

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        await self._run(self._change_acls, _INSERT_ACL, list(bindings))

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> int:
        return await self._run(self._change_acls, _DELETE_ACL, list(bindings))

    def _change_acls(self, statement: str, bindings: list[AclBinding]) -> int:
        with _Transaction(self.db) as db:
            changed = 0
            for binding in bindings:
                changed += db.execute(statement, acl_row(binding)).rowcount
            _bump_security_version(db, changed)
            return changed

    async def load_client_quotas(self) -> list[QuotaEntry]:
        return await self._run(
            lambda: quota_entries(
                self.db.execute("SELECT entity, quota_key, value FROM client_quotas").fetchall()
            )
        )

    async def alter_client_quotas(
        self, changes: Sequence[tuple[QuotaEntity, str, float | None]]
    ) -> None:
        rows = [(encode_quota_entity(entity), key, value) for entity, key, value in changes]
        await self._run(self._alter_client_quotas, rows)

    def _alter_client_quotas(self, rows: list[tuple[str, str, float | None]]) -> None:
        with _Transaction(self.db) as db:
            changed = 0
            for entity, key, value in rows:
                if value is None:
                    changed += db.execute(
                        "DELETE FROM client_quotas WHERE entity = ? AND quota_key = ?",
                        (entity, key),
                    ).rowcount
                else:
                    changed += db.execute(
                        "INSERT OR REPLACE INTO client_quotas VALUES (?, ?, ?)",
                        (entity, key, float(value)),
                    ).rowcount
            _bump_security_version(db, changed)

    # Node ids -------------------------------------------------------------------
    async def claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        # One host shares the file: its agents share a clock.
        return await self._run(self._claim_node_id, agent_id, requested, now_ms, live_timeout_ms)

    def _claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        since_ms = now_ms - live_timeout_ms
        # BEGIN IMMEDIATE: claims are serialized, so none sees a stale table.
        with _Transaction(self.db) as db:
            row = db.execute(
                "SELECT node_id FROM node_ids WHERE agent_id = ?", (agent_id,)
            ).fetchone()
            if row is not None and requested in (None, row[0]):
                db.execute(
                    "UPDATE node_ids SET claimed_ms = ? WHERE agent_id = ?", (now_ms, agent_id)
                )
                return int(row[0])
            if requested is None:
                node_id = smallest_free(
                    r[0] for r in db.execute(_HELD_NODE_IDS, (agent_id, since_ms))
                )
            else:
                holder = db.execute(
                    _LIVE_HOLDER, {"agent_id": agent_id, "node_id": requested, "since": since_ms}
                ).fetchone()
                if holder is not None:
                    raise NodeIdTaken(requested, str(holder[0]))
                node_id = requested
            db.execute(
                "DELETE FROM node_ids WHERE agent_id = ? OR node_id = ?", (agent_id, node_id)
            )
            db.execute("INSERT INTO node_ids VALUES (?, ?, ?)", (agent_id, node_id, now_ms))
            return node_id

    # Object lifecycle ---------------------------------------------------------
    async def dead_objects(self, dead_before_ms: int, limit: int) -> list[ObjectRef]:
        return await self._run(self._rows_as_refs, _DEAD_OBJECTS, (dead_before_ms, limit))

    def _rows_as_refs(self, query: str, params: tuple[Any, ...]) -> list[ObjectRef]:
        return [ObjectRef(*row) for row in self.db.execute(query, params)]

    async def mark_objects_deleted(self, object_ids: Sequence[int], now_ms: int) -> None:
        await self._run(self._mark_objects_deleted, list(object_ids), now_ms)

    def _mark_objects_deleted(self, object_ids: list[int], now_ms: int) -> None:
        with _Transaction(self.db) as db:
            for start in range(0, len(object_ids), 500):
                chunk = object_ids[start : start + 500]
                db.execute(
                    f"UPDATE objects SET deleted_ms = ? WHERE object_id IN"
                    f" ({','.join('?' * len(chunk))}) AND deleted_ms IS NULL"
                    " AND dead_since_ms IS NOT NULL",
                    (now_ms, *chunk),
                )

    async def purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        return await self._run(self._purge_tombstones, committed_before_ms, limit)

    def _purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        with _Transaction(self.db) as db:
            cursor = db.execute(
                "DELETE FROM objects WHERE object_id IN (SELECT object_id FROM objects"
                " WHERE deleted_ms IS NOT NULL AND committed_ms < ? AND object_id <"
                " (SELECT max(object_id) FROM objects) LIMIT ?)",
                (committed_before_ms, limit),
            )
            return cursor.rowcount

    async def known_keys(self, keys: Sequence[str]) -> set[str]:
        return {key for key, _ in await self._run(self._objects_by_key, list(keys))}

    async def compaction_candidates(
        self, committed_before_ms: int, smaller_than: int, limit: int
    ) -> list[ObjectRef]:
        return await self._run(
            self._rows_as_refs, _COMPACTION_CANDIDATES, (smaller_than, committed_before_ms, limit)
        )

    async def batches_in_objects(self, object_ids: Sequence[int]) -> list[ObjectBatch]:
        return await self._run(self._batches_in_objects, list(object_ids))

    def _batches_in_objects(self, object_ids: list[int]) -> list[ObjectBatch]:
        out: list[ObjectBatch] = []
        for start in range(0, len(object_ids), 500):
            chunk = object_ids[start : start + 500]
            out.extend(
                ObjectBatch(uuid.UUID(bytes=tid), *rest)
                for tid, *rest in self.db.execute(
                    "SELECT topic_id, partition, last_offset, object_id, byte_offset, byte_length"
                    f" FROM batches WHERE object_id IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            )
        out.sort(key=lambda b: (b.topic_id.bytes, b.partition, b.last_offset))
        return out

    async def object_counts(self) -> ObjectCounts:
        return await self._run(self._object_counts)

    def _object_counts(self) -> ObjectCounts:
        row = self.db.execute(_OBJECT_COUNTS).fetchone()
        return ObjectCounts(*(int(v or 0) for v in row))

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        return await self._run(
            self._log_start_for_bytes, topic_id, partition, keep_bytes, start_offset
        )

    def _log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        # Newest first, summing sizes: the first batch that does not fit ends the log.
        row = self.db.execute(
            "SELECT last_offset FROM (SELECT last_offset, sum(byte_length) OVER"
            " (ORDER BY last_offset DESC) AS kept FROM batches WHERE topic_id = ?"
            " AND partition = ? AND last_offset >= ?) WHERE kept > ?"
            " ORDER BY last_offset DESC LIMIT 1",
            (topic_id.bytes, partition, start_offset, keep_bytes),
        ).fetchone()
        return start_offset if row is None else max(start_offset, int(row[0]) + 1)

    # Reads --------------------------------------------------------------------
    async def load_topics(self) -> list[TopicInfo]:
        return await self._run(self._load_topics)

    def _load_topics(self) -> list[TopicInfo]:
        return [
            TopicInfo(name, uuid.UUID(bytes=tid), count, json.loads(configs))
            for tid, name, count, configs in self.db.execute(
                "SELECT topic_id, name, partition_count, configs FROM topics"
            )
        ]

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
        return await self._run(
            self._read_batches, topic_id, partition, start_offset, end_offset, max_bytes
        )

    def _read_batches(
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
            rows = self.db.execute(
                f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
                " WHERE b.topic_id = ? AND b.partition = ? AND b.last_offset >= ?"
                " AND b.base_offset < ? ORDER BY b.last_offset LIMIT ?",
                (topic_id.bytes, partition, position, end_offset, READ_BATCHES_PAGE),
            ).fetchall()
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
        return await self._run(
            self._first_batch_at_time, topic_id, partition, timestamp_ms, start_offset, end_offset
        )

    def _first_batch_at_time(
        self,
        topic_id: uuid.UUID,
        partition: int,
        timestamp_ms: int,
        start_offset: int,
        end_offset: int,
    ) -> BatchLocation | None:
        tid = topic_id.bytes
        row = self.db.execute(
            f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
            " WHERE b.topic_id = ? AND b.partition = ? AND b.time_index_ms >= ?"
            " ORDER BY b.time_index_ms, b.last_offset LIMIT 1",
            (tid, partition, timestamp_ms),
        ).fetchone()
        if row is not None and BatchLocation(*row).last_offset < start_offset:
            # The time index is monotonic in offsets: past the log start, the
            # first live batch is the answer.
            row = self.db.execute(
                f"SELECT {_LOCATION} FROM batches b JOIN objects o USING (object_id)"
                " WHERE b.topic_id = ? AND b.partition = ? AND b.last_offset >= ?"
                " ORDER BY b.last_offset LIMIT 1",
                (tid, partition, start_offset),
            ).fetchone()
        if row is None:
            return None
        location = BatchLocation(*row)
        return location if location.base_offset < end_offset else None

    async def last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        return await self._run(self._last_time_index, topic_id, partition, end_offset)

    def _last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        row = self.db.execute(
            "SELECT time_index_ms FROM batches WHERE topic_id = ? AND partition = ?"
            " AND last_offset < ? ORDER BY last_offset DESC LIMIT 1",
            (topic_id.bytes, partition, end_offset),
        ).fetchone()
        return -1 if row is None else int(row[0])

    # Producer ids and group offsets -------------------------------------------
    async def allocate_producer_id(self) -> int:
        return await self._run(self._allocate_producer_id)

    def _allocate_producer_id(self) -> int:
        with _Transaction(self.db) as db:
            row = db.execute("SELECT next_producer_id FROM producer_ids").fetchone()
            producer_id = row[0] if row else 0
            db.execute("INSERT OR REPLACE INTO producer_ids VALUES (0, ?)", (producer_id + 1,))
            return int(producer_id)

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        return await self._run(self._claim_group, group_id, agent_id)

    def _claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        with _Transaction(self.db) as db:
            row = db.execute(
                "SELECT agent_id, epoch FROM group_claims WHERE group_id = ?", (group_id,)
            ).fetchone()
            previous, epoch = (str(row[0]), int(row[1]) + 1) if row else ("", 1)
            db.execute(
                "INSERT OR REPLACE INTO group_claims VALUES (?, ?, ?)", (group_id, agent_id, epoch)
            )
        return GroupClaim(group_id, agent_id, epoch, "" if previous == agent_id else previous)

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        await self._run(self._put_offsets, group_id, offsets, claim)

    def _put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        # BEGIN IMMEDIATE takes the write lock first: no claim lands between check and write.
        with _Transaction(self.db) as db:
            _check_claim(db, group_id, claim)
            db.executemany(
                "INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (group_id, o.topic, o.partition, o.offset, o.leader_epoch, o.metadata)
                    for o in offsets
                ],
            )

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        return await self._run(self._fetch_offsets, group_id, partitions)

    def _fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        rows = [
            CommittedOffset(*row)
            for row in self.db.execute(
                "SELECT topic, partition, committed_offset, leader_epoch, metadata"
                " FROM group_offsets WHERE group_id = ?",
                (group_id,),
            )
        ]
        if partitions is None:
            return rows
        wanted = set(partitions)
        return [r for r in rows if (r.topic, r.partition) in wanted]

    async def delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        await self._run(self._delete_group, group_id, claim)

    def _delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        with _Transaction(self.db) as db:
            _check_claim(db, group_id, claim)
            db.execute("DELETE FROM group_offsets WHERE group_id = ?", (group_id,))

    async def groups_with_offsets(self) -> list[str]:
        return await self._run(
            lambda: [r[0] for r in self.db.execute("SELECT DISTINCT group_id FROM group_offsets")]
        )


def _insert_objects(db: sqlite3.Connection, objects: Sequence[SequencedObject]) -> None:
    """The rows of committed objects: objects, batches, the producer states they changed."""
    db.executemany(
        "INSERT INTO objects (object_id, key, size, committed_ms, outcomes, dead_since_ms)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                o.object_id,
                o.object_key,
                o.object_size,
                o.committed_ms,
                outcomes_json(o),
                None if o.rows else o.committed_ms,  # every batch refused: dead now
            )
            for o in objects
        ],
    )
    db.executemany(
        "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                r.topic_id.bytes,
                r.partition,
                r.location.last_offset,
                r.location.base_offset,
                o.object_id,
                r.location.byte_offset,
                r.location.byte_length,
                r.location.max_timestamp_ms,
                r.location.log_append_time_ms,
                r.time_index_ms,
            )
            for o in objects
            for r in o.rows
        ],
    )
    updates: dict[ProducerKey, ProducerPartitionState] = {}
    for o in objects:
        updates.update(o.producer_updates)
    db.executemany(
        "INSERT OR REPLACE INTO producer_states VALUES (?, ?, ?, ?, ?)",
        [
            (pid, tid.bytes, partition, s.epoch, encode_producer_batches(s))
            for (pid, tid, partition), s in updates.items()
        ],
    )


def _bump_security_version(db: sqlite3.Connection, changed_rows: int) -> None:
    if changed_rows:
        db.execute("UPDATE security_version SET version = version + 1")


def _check_fence(db: sqlite3.Connection, fence: Fence) -> None:
    cursor = db.execute(
        "UPDATE leases SET expires_ms = max(expires_ms, ?) WHERE shard = ? AND epoch = ?",
        (fence.expires_ms, fence.shard, fence.epoch),
    )
    if cursor.rowcount != 1:
        raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} was superseded")


def _check_claim(db: sqlite3.Connection, group_id: str, claim: GroupClaim | None) -> None:
    if claim is None:
        return
    row = db.execute(
        "SELECT agent_id, epoch FROM group_claims WHERE group_id = ?", (group_id,)
    ).fetchone()
    stored = (str(row[0]), int(row[1])) if row else None
    if not claim.admits(stored):
        raise GroupFenced(claim, stored)


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would commit the open transaction.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _create_schema(db: sqlite3.Connection) -> None:
    _execute_script(db, SCHEMA)
    _execute_script(db, _LIFECYCLE)
    _execute_script(db, _TRANSACTIONS)
    _execute_script(db, _SECURITY)
    _execute_script(db, _GROUP_CLAIMS)
    _execute_script(db, _ROLES)
    db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


def _migrate_from_v1(db: sqlite3.Connection) -> None:
    """Convert a data directory written before schema versions (text uuids, no lease)."""
    for table in ("topics", "partitions", "objects", "batches", "producer_ids", "group_offsets"):
        db.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
    _create_schema(db)
    for tid, name, count, configs in db.execute("SELECT * FROM old_topics").fetchall():
        db.execute(
            "INSERT INTO topics VALUES (?, ?, ?, ?)", (uuid.UUID(tid).bytes, name, count, configs)
        )
    for tid, partition, log_start in db.execute("SELECT * FROM old_partitions").fetchall():
        db.execute(
            "INSERT INTO partitions VALUES (?, ?, ?)", (uuid.UUID(tid).bytes, partition, log_start)
        )
    db.execute(
        "INSERT INTO objects (object_id, key, size, committed_ms, outcomes)"
        " SELECT object_id, key, size, committed_ms, '[]' FROM old_objects"
    )
    producers: dict[ProducerKey, ProducerPartitionState] = {}
    time_index: dict[tuple[str, int], int] = {}
    rows = db.execute(
        "SELECT topic_id, partition, base_offset, last_offset, object_id, byte_offset,"
        " byte_length, max_timestamp_ms, log_append_time_ms, producer_id, producer_epoch,"
        " base_sequence FROM old_batches ORDER BY topic_id, partition, base_offset"
    )
    for tid, partition, base, last, oid, start, length, max_ts, append_ts, pid, epoch, seq in rows:
        ts = append_ts if append_ts >= 0 else max_ts
        running = time_index[(tid, partition)] = max(time_index.get((tid, partition), -1), ts)
        topic_uuid = uuid.UUID(tid)
        db.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                topic_uuid.bytes,
                partition,
                last,
                base,
                oid,
                start,
                length,
                max_ts,
                append_ts,
                running,
            ),
        )
        if pid >= 0:
            key = (pid, topic_uuid, partition)
            producers[key] = record_batch(producers.get(key), epoch, seq, last - base + 1, base)
    db.executemany(
        "INSERT INTO producer_states VALUES (?, ?, ?, ?, ?)",
        [
            (pid, tid.bytes, partition, s.epoch, encode_producer_batches(s))
            for (pid, tid, partition), s in producers.items()
        ],
    )
    db.execute(
        "UPDATE objects SET dead_since_ms = committed_ms WHERE NOT EXISTS"
        " (SELECT 1 FROM batches b WHERE b.object_id = objects.object_id)"
    )
    db.execute("INSERT INTO producer_ids SELECT * FROM old_producer_ids")
    db.execute("INSERT INTO group_offsets SELECT * FROM old_group_offsets")
    for table in ("topics", "partitions", "objects", "batches", "producer_ids", "group_offsets"):
        db.execute(f"DROP TABLE old_{table}")


class _Transaction:
    def __init__(self, db: sqlite3.Connection, immediate: bool = True) -> None:
        self._db = db
        self._begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        if self._db.in_transaction:  # left open by an earlier failure
            self._db.execute("ROLLBACK")
        self._db.execute(self._begin)
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # SQLite may keep the transaction open after a failed COMMIT.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
