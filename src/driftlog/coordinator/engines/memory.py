"""In-memory backend of the coordinator: the reference implementation of `Backend`. No I/O.

Same semantics as `sqlite.py`, row for row: the lease compare-and-swap on the
epoch, the fence check of every writer transaction (`Fenced` when the epoch was
superseded, the expiry extended otherwise), unique object keys and batch
primary keys (a violation is `CoordinatorUnavailable` and rolls back the whole
transaction, as SQLite's IntegrityError does), no foreign keys (batches of a
partition that does not exist are stored, as SQLite would), and the same
paging and ordering for reads.

The tables live in a `MemoryDatabase`; each `MemoryBackend` is one process's
handle on it. Several writers and views sharing one database are several
processes sharing one PostgreSQL. Every call runs to completion without
yielding to the event loop, so a call is one atomic transaction; a
simulation decides the interleaving between calls.
"""

from __future__ import annotations

import bisect
import dataclasses
import secrets
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
from driftlog.coordinator.core.producers import ProducerPartitionState
from driftlog.coordinator.core.sequencer import (
    PartitionKey,
    PartitionSequence,
    ProducerKey,
    SequencedObject,
    SequencerSnapshot,
)
from driftlog.coordinator.core.transactions import AbortedTxn, PendingOffset, Transaction
from driftlog.coordinator.engines.backend import (
    CLUSTER_SECRET_BYTES,
    MARKER_LEVEL,
    READ_BATCHES_PAGE,
    Backend,
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
    check_scram_mechanisms,
    encode_quota_entity,
    high_watermark,
    partition_offsets,
    quota_entity,
    quota_entries,
)


class StoredObject(NamedTuple):
    """A row of `objects`."""

    object_id: int
    key: str
    size: int
    committed_ms: int
    outcomes: tuple[CommitOutcome, ...]
    level: int = 0
    dead_since_ms: int | None = None
    deleted_ms: int | None = None


class StoredBatch(NamedTuple):
    """A row of `batches` (its partition is the key of the list that holds it)."""

    last_offset: int
    base_offset: int
    object_id: int
    byte_offset: int
    byte_length: int
    max_timestamp_ms: int
    log_append_time_ms: int
    time_index_ms: int


@dataclass(slots=True)
class _PartitionBatches:
    """One partition's rows in primary-key order (`last_offset`), with the keys for bisect."""

    last_offsets: list[int] = field(default_factory=list)
    rows: list[StoredBatch] = field(default_factory=list)

    def insert(self, row: StoredBatch) -> None:
        at = bisect.bisect_left(self.last_offsets, row.last_offset)
        self.last_offsets.insert(at, row.last_offset)
        self.rows.insert(at, row)

    def from_last_offset(self, last_offset: int) -> int:
        """Index of the first row whose `last_offset` is at or after `last_offset`."""
        return bisect.bisect_left(self.last_offsets, last_offset)


class NodeIdClaim(NamedTuple):
    """A row of `node_ids` (its agent id is the key that holds it)."""

    node_id: int
    claimed_ms: int


@dataclass(slots=True)
class MemoryDatabase:
    """The shared tables. Tests may read them; only `MemoryBackend` writes them."""

    cluster_id: str | None = None
    agents: dict[str, AgentInfo] = field(default_factory=dict)
    leases: dict[int, LeaseRecord] = field(default_factory=dict)
    # In insertion order, as SQLite scans a rowid table.
    topics: dict[uuid.UUID, TopicInfo] = field(default_factory=dict)
    partitions: dict[PartitionKey, int] = field(default_factory=dict)  # log start offsets
    objects: dict[int, StoredObject] = field(default_factory=dict)
    object_ids_by_key: dict[str, int] = field(default_factory=dict)
    batches: dict[PartitionKey, _PartitionBatches] = field(default_factory=dict)
    # Batches per object: what PostgreSQL's index on batches.object_id answers.
    references: dict[int, int] = field(default_factory=dict)
    producer_states: dict[ProducerKey, ProducerPartitionState] = field(default_factory=dict)
    next_producer_id: int = 0
    group_offsets: dict[tuple[str, str, int], CommittedOffset] = field(default_factory=dict)
    group_claims: dict[str, tuple[str, int]] = field(default_factory=dict)  # (agent id, epoch)
    transactions: dict[str, Transaction] = field(default_factory=dict)
    aborted_txns: dict[PartitionKey, list[AbortedTxn]] = field(default_factory=dict)
    txn_offsets: dict[tuple[str, str, int, int], PendingOffset] = field(default_factory=dict)
    key_compaction: dict[PartitionKey, KeyCleanState] = field(default_factory=dict)
    broker_configs: dict[str, dict[str, str]] = field(default_factory=dict)
    cluster_secret: bytes | None = None
    scram_credentials: dict[tuple[str, str], ScramCredential] = field(default_factory=dict)
    acls: dict[AclBinding, None] = field(default_factory=dict)  # a set in insertion order
    client_quotas: dict[QuotaEntity, dict[str, float]] = field(default_factory=dict)
    security_version: int = 0
    node_ids: dict[str, NodeIdClaim] = field(default_factory=dict)  # by agent id
    # Incremented by every transaction that changed something (cheap change detection).
    version: int = 0

    def batch_rows(self, key: PartitionKey) -> Sequence[StoredBatch]:
        """The partition's stored rows in offset order (do not modify)."""
        part = self.batches.get(key)
        return part.rows if part is not None else ()

    def location(self, row: StoredBatch) -> BatchLocation | None:
        """The row joined with its object, as reads return it (None if the object is gone)."""
        obj = self.objects.get(row.object_id)
        if obj is None:
            return None
        return BatchLocation(
            obj.key,
            row.byte_offset,
            row.byte_length,
            row.base_offset,
            row.last_offset,
            row.max_timestamp_ms,
            row.log_append_time_ms,
        )

    def unreference(self, object_id: int, count: int, now_ms: int) -> None:
        left = self.references.get(object_id, 0) - count
        self.references[object_id] = left
        obj = self.objects.get(object_id)
        if left <= 0 and obj is not None and obj.dead_since_ms is None:
            self.objects[object_id] = obj._replace(dead_since_ms=now_ms)

    def high_watermark(self, key: PartitionKey) -> int:
        rows = self.batch_rows(key)
        return high_watermark(self.partitions.get(key, 0), rows[-1].last_offset if rows else None)


def _copy_topic(topic: TopicInfo) -> TopicInfo:
    return TopicInfo(topic.name, topic.topic_id, topic.partition_count, dict(topic.configs))


class MemoryBackend:
    def __init__(self, database: MemoryDatabase | None = None) -> None:
        self.database = database if database is not None else MemoryDatabase()
        self._open = False

    @property
    def _db(self) -> MemoryDatabase:
        if not self._open:
            raise RuntimeError("memory backend not open")
        return self.database

    # Lifecycle ----------------------------------------------------------------
    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def cluster_id(self, proposed: str) -> str:
        db = self._db
        if db.cluster_id is None:
            db.cluster_id = proposed
            db.version += 1
        return db.cluster_id

    async def cluster_secret(self) -> bytes:
        db = self._db
        if db.cluster_secret is None:
            db.cluster_secret = secrets.token_bytes(CLUSTER_SECRET_BYTES)
            db.version += 1
        return db.cluster_secret

    # Security -------------------------------------------------------------------
    def _security_changed(self, changed: int) -> None:
        if changed:
            self._db.security_version += 1
            self._db.version += 1

    async def security_version(self) -> int:
        return self._db.security_version

    async def load_scram_credentials(self) -> list[ScramCredential]:
        return [c for _, c in sorted(self._db.scram_credentials.items())]

    async def put_scram_credentials(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> None:
        check_scram_mechanisms(upserts, deletions)
        stored = self._db.scram_credentials
        changed = 0
        for user, mechanism in deletions:
            changed += stored.pop((user, mechanism), None) is not None
        for c in upserts:
            stored[(c.user_name, c.mechanism)] = c
            changed += 1
        self._security_changed(changed)

    async def load_acls(self) -> list[AclBinding]:
        return list(self._db.acls)

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        acls = self._db.acls
        new = [b for b in dict.fromkeys(bindings) if b not in acls]
        acls.update(dict.fromkeys(new))
        self._security_changed(len(new))

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> int:
        acls = self._db.acls
        stored = [b for b in dict.fromkeys(bindings) if b in acls]
        for binding in stored:
            del acls[binding]
        self._security_changed(len(stored))
        return len(stored)

    async def load_client_quotas(self) -> list[QuotaEntry]:
        return quota_entries(
            [
                (encode_quota_entity(entity), key, value)
                for entity, values in self._db.client_quotas.items()
                for key, value in values.items()
            ]
        )

    async def alter_client_quotas(
        self, changes: Sequence[tuple[QuotaEntity, str, float | None]]
    ) -> None:
        normalized = [(quota_entity(entity), key, value) for entity, key, value in changes]
        quotas = self._db.client_quotas
        changed = 0
        for entity, key, value in normalized:
            if value is None:
                values = quotas.get(entity, {})
                changed += values.pop(key, None) is not None
                if not values:
                    quotas.pop(entity, None)
            else:
                quotas.setdefault(entity, {})[key] = float(value)
                changed += 1
        self._security_changed(changed)

    # Node ids -------------------------------------------------------------------
    async def claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        db = self._db
        since_ms = now_ms - live_timeout_ms  # one process: the callers' clocks are one
        claims = db.node_ids
        mine = claims.get(agent_id)
        if mine is not None and requested in (None, mine.node_id):
            claims[agent_id] = NodeIdClaim(mine.node_id, now_ms)
            db.version += 1
            return mine.node_id
        # Another agent alive: a heartbeat or a claim since `since_ms`.
        live = {a.agent_id: a for a in db.agents.values() if a.heartbeat_ms >= since_ms}
        live.pop(agent_id, None)
        if requested is None:
            # In use: recorded for any agent id, or advertised by another live agent
            # (one that started before node ids were recorded).
            node_id = smallest_free(
                [c.node_id for c in claims.values()] + [a.node_id for a in live.values()]
            )
        else:
            for holder, claim in claims.items():
                if (
                    claim.node_id == requested
                    and holder != agent_id
                    and (claim.claimed_ms >= since_ms or holder in live)
                ):
                    raise NodeIdTaken(requested, holder)
            for agent in live.values():
                if agent.node_id == requested:
                    raise NodeIdTaken(requested, agent.agent_id)
            node_id = requested
        for holder in [h for h, c in claims.items() if h == agent_id or c.node_id == node_id]:
            del claims[holder]
        claims[agent_id] = NodeIdClaim(node_id, now_ms)
        db.version += 1
        return node_id

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        db = self._db
        db.agents[agent.agent_id] = agent
        db.version += 1

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        since_ms = now_ms - timeout_ms  # one process: the callers' clocks are one
        return sorted(
            (a for a in self._db.agents.values() if a.heartbeat_ms >= since_ms),
            key=lambda a: (a.node_id, a.agent_id),
        )

    async def remove_agent(self, agent_id: str) -> None:
        db = self._db
        db.agents.pop(agent_id, None)
        db.version += 1

    # Lease --------------------------------------------------------------------
    async def read_lease(self, shard: int) -> LeaseRecord | None:
        return self._db.leases.get(shard)

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        db = self._db
        current = db.leases.get(new.shard)
        if expected is None:
            if current is not None:
                return False
        elif current is None or current.epoch != expected.epoch:
            return False
        db.leases[new.shard] = new
        db.version += 1
        return True

    async def renew_lease(self, fence: Fence) -> None:
        db = self._db
        _check_fence(db, fence)
        db.version += 1

    async def release_lease(self, fence: Fence) -> None:
        db = self._db
        lease = db.leases.get(fence.shard)
        if lease is not None and lease.epoch == fence.epoch:
            db.leases[fence.shard] = dataclasses.replace(lease, expires_ms=0)
            db.version += 1

    # Writer -------------------------------------------------------------------
    async def load_sequencer(self, shard: int) -> SequencerSnapshot:
        db = self._db
        partitions: dict[PartitionKey, PartitionSequence] = {}
        for key, log_start in db.partitions.items():
            rows = db.batch_rows(key)
            last = rows[-1] if rows else None
            hwm = high_watermark(log_start, last.last_offset if last else None)
            partitions[key] = PartitionSequence(
                log_start, hwm, hwm, last.time_index_ms if last else -1
            )
        producers = {key: state.copy() for key, state in db.producer_states.items()}
        next_object_id = max(db.objects, default=0) + 1
        aborted_ends = {key: rows[-1].last_offset for key, rows in db.aborted_txns.items() if rows}
        return SequencerSnapshot(
            self._topics(), partitions, producers, next_object_id,
            list(db.transactions.values()), aborted_ends,
        )  # fmt: skip

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        db = self._db
        out: dict[str, list[CommitOutcome]] = {}
        for key in keys:
            object_id = db.object_ids_by_key.get(key)
            if object_id is not None:
                out[key] = list(db.objects[object_id].outcomes)
        return out

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        self._persist_objects(fence, objects)

    def _persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        db = self._db
        lease = _fenced_lease(db, fence)
        # Check every constraint before changing anything: one transaction.
        object_ids: set[int] = set()
        keys: set[str] = set()
        rows: set[tuple[PartitionKey, int]] = set()
        for o in objects:
            if o.object_id in db.objects or o.object_id in object_ids:
                raise _integrity(f"object id {o.object_id} exists")
            if o.object_key in db.object_ids_by_key or o.object_key in keys:
                raise _integrity(f"object key {o.object_key!r} exists")
            object_ids.add(o.object_id)
            keys.add(o.object_key)
            for r in o.rows:
                pk = ((r.topic_id, r.partition), r.location.last_offset)
                part = db.batches.get(pk[0])
                taken = part is not None and _contains(part.last_offsets, pk[1])
                if taken or pk in rows:
                    raise _integrity(f"batch {pk} exists")
                rows.add(pk)
        _extend(db, lease, fence)
        for o in objects:
            db.objects[o.object_id] = StoredObject(
                o.object_id,
                o.object_key,
                o.object_size,
                o.committed_ms,
                tuple(o.outcomes),
                dead_since_ms=None if o.rows else o.committed_ms,
            )
            db.object_ids_by_key[o.object_key] = o.object_id
            db.references[o.object_id] = len(o.rows)
            for r in o.rows:
                loc = r.location
                db.batches.setdefault((r.topic_id, r.partition), _PartitionBatches()).insert(
                    StoredBatch(
                        loc.last_offset,
                        loc.base_offset,
                        o.object_id,
                        loc.byte_offset,
                        loc.byte_length,
                        loc.max_timestamp_ms,
                        loc.log_append_time_ms,
                        r.time_index_ms,
                    )
                )
        for o in objects:
            for key, state in o.producer_updates.items():
                db.producer_states[key] = state.copy()
        db.version += 1

    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        db = self._db
        self._persist_objects(fence, write.markers)  # checks the fence, extends the lease
        for marker in write.markers:  # never compacted: there are no bytes to copy
            stored = db.objects[marker.object_id]
            db.objects[marker.object_id] = stored._replace(level=MARKER_LEVEL)
        for topic_id, partition, aborted in write.aborted_rows():
            rows = db.aborted_txns.setdefault((topic_id, partition), [])
            rows.append(aborted)
            rows.sort(key=lambda a: a.last_offset)
        for o in write.pending_offsets:
            db.txn_offsets[(o.group_id, o.topic, o.partition, o.producer_id)] = o
        for producer_id, commit in write.settled:
            for key, o in sorted(db.txn_offsets.items()):
                if o.producer_id != producer_id:
                    continue
                del db.txn_offsets[key]
                if commit:
                    db.group_offsets[(o.group_id, o.topic, o.partition)] = CommittedOffset(
                        o.topic, o.partition, o.offset, o.leader_epoch, o.metadata
                    )
        for txn in write.transactions:
            db.transactions[txn.transactional_id] = txn
        for txn_id in write.expired:
            db.transactions.pop(txn_id, None)
        db.version += 1

    async def load_transactions(self) -> list[Transaction]:
        return list(self._db.transactions.values())

    async def read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        return [
            a
            for a in self._db.aborted_txns.get((topic_id, partition), ())
            if a.last_offset >= start_offset and a.first_offset < end_offset
        ]

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        return {(k[1], k[2]) for k in self._db.txn_offsets if k[0] == group_id}

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        db = self._db
        lease = _fenced_lease(db, fence)
        existing = db.topics.get(topic.topic_id)
        if existing is None and any(t.name == topic.name for t in db.topics.values()):
            raise _integrity(f"topic name {topic.name!r} exists")
        new_partitions = [
            (topic.topic_id, p) for p in range(old_partition_count, topic.partition_count)
        ]
        if any(key in db.partitions for key in new_partitions):
            raise _integrity(f"partitions of {topic.name!r} exist")
        _extend(db, lease, fence)
        if existing is None:
            db.topics[topic.topic_id] = _copy_topic(topic)
        else:
            # ON CONFLICT (topic_id) DO UPDATE: count and configs change, the name stays.
            db.topics[topic.topic_id] = TopicInfo(
                existing.name, topic.topic_id, topic.partition_count, dict(topic.configs)
            )
        for key in new_partitions:
            db.partitions[key] = 0
        db.version += 1

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        db = self._db
        lease = _fenced_lease(db, fence)
        _extend(db, lease, fence)
        for tid, partition, log_start in starts:
            key = (tid, partition)
            if key in db.partitions and db.partitions[key] < log_start:
                db.partitions[key] = log_start
            part = db.batches.get(key)
            if part is not None:
                keep = part.from_last_offset(log_start)
                _unreference(db, part.rows[:keep], now_ms)
                del part.rows[:keep]
                del part.last_offsets[:keep]
            if key in db.aborted_txns:
                db.aborted_txns[key] = [
                    a for a in db.aborted_txns[key] if a.last_offset >= log_start
                ]
        db.version += 1

    async def relocate_batches(
        self, fence: Fence, new_object: NewObject, moves: Sequence[BatchMove], now_ms: int
    ) -> int:
        db = self._db
        lease = _fenced_lease(db, fence)
        if new_object.object_id in db.objects or new_object.key in db.object_ids_by_key:
            raise _integrity(f"object {new_object} exists")
        _extend(db, lease, fence)
        new_id = new_object.object_id
        db.objects[new_id] = StoredObject(
            new_id,
            new_object.key,
            new_object.size,
            new_object.committed_ms,
            (),
            level=new_object.level,
        )
        db.object_ids_by_key[new_object.key] = new_id
        db.references[new_id] = 0
        moved = 0
        for move in moves:
            part = db.batches.get((move.topic_id, move.partition))
            if part is None:
                continue
            at = part.from_last_offset(move.last_offset)
            if at == len(part.rows) or part.last_offsets[at] != move.last_offset:
                continue  # deleted meanwhile (retention)
            row = part.rows[at]
            if row.object_id != move.from_object_id:
                continue
            part.rows[at] = row._replace(object_id=new_id, byte_offset=move.byte_offset)
            db.references[new_id] += 1
            db.unreference(move.from_object_id, 1, now_ms)
            moved += 1
        db.unreference(new_id, 0, now_ms)
        db.version += 1
        return moved

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        db = self._db
        lease = _fenced_lease(db, fence)
        if new_object is not None and (
            new_object.object_id in db.objects or new_object.key in db.object_ids_by_key
        ):
            raise _integrity(f"object {new_object} exists")
        _extend(db, lease, fence)
        changed = 0

        def find(
            topic_id: uuid.UUID, partition: int, last_offset: int, object_id: int
        ) -> tuple[_PartitionBatches, int] | None:
            part = db.batches.get((topic_id, partition))
            if part is None:
                return None
            at = part.from_last_offset(last_offset)
            if at == len(part.rows) or part.last_offsets[at] != last_offset:
                return None  # deleted meanwhile (retention)
            return (part, at) if part.rows[at].object_id == object_id else None

        if new_object is not None:
            new_id = new_object.object_id
            db.objects[new_id] = StoredObject(
                new_id, new_object.key, new_object.size, new_object.committed_ms, (),
                level=new_object.level,
            )  # fmt: skip
            db.object_ids_by_key[new_object.key] = new_id
            db.references[new_id] = 0
            for r in rewrites:
                found = find(r.topic_id, r.partition, r.last_offset, r.from_object_id)
                if found is None:
                    continue
                part, at = found
                part.rows[at] = part.rows[at]._replace(
                    object_id=new_id, byte_offset=r.byte_offset, byte_length=r.byte_length
                )
                db.references[new_id] += 1
                db.unreference(r.from_object_id, 1, now_ms)
                changed += 1
            db.unreference(new_id, 0, now_ms)
        for gone in removals:
            found = find(gone.topic_id, gone.partition, gone.last_offset, gone.from_object_id)
            if found is None:
                continue
            part, at = found
            del part.rows[at]
            del part.last_offsets[at]
            db.unreference(gone.from_object_id, 1, now_ms)
            changed += 1
        if state is not None:
            db.key_compaction[(state.topic_id, state.partition)] = state
        db.version += 1
        return changed

    async def load_broker_configs(self) -> dict[str, dict[str, str]]:
        return {resource: dict(c) for resource, c in self._db.broker_configs.items()}

    async def put_broker_configs(self, resource: str, configs: Mapping[str, str]) -> None:
        if configs:
            self._db.broker_configs[resource] = dict(configs)
        else:
            self._db.broker_configs.pop(resource, None)
        self._db.version += 1

    async def read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        db = self._db
        part = db.batches.get((topic_id, partition))
        if part is None:
            return []
        out: list[BatchRef] = []
        for row in part.rows[part.from_last_offset(start_offset) :]:
            if row.base_offset >= end_offset or len(out) >= limit:
                break
            location = db.location(row)
            if location is not None:
                out.append(BatchRef(location, row.object_id))
        return out

    async def key_clean_state(self, topic_id: uuid.UUID, partition: int) -> KeyCleanState | None:
        return self._db.key_compaction.get((topic_id, partition))

    # Object lifecycle ---------------------------------------------------------
    async def dead_objects(self, dead_before_ms: int, limit: int) -> list[ObjectRef]:
        dead = sorted(
            (o for o in self._db.objects.values() if _dead_before(o, dead_before_ms)),
            key=lambda o: (o.dead_since_ms, o.object_id),
        )
        return [ObjectRef(o.object_id, o.key, o.size) for o in dead[:limit]]

    async def mark_objects_deleted(self, object_ids: Sequence[int], now_ms: int) -> None:
        db = self._db
        for object_id in object_ids:
            obj = db.objects.get(object_id)
            if obj is not None and obj.deleted_ms is None and obj.dead_since_ms is not None:
                db.objects[object_id] = obj._replace(deleted_ms=now_ms)
        db.version += 1

    async def purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        db = self._db
        newest = max(db.objects, default=0)
        purged = [
            o
            for o in db.objects.values()
            if o.deleted_ms is not None
            and o.committed_ms < committed_before_ms
            and o.object_id < newest
        ][:limit]
        for obj in purged:
            del db.objects[obj.object_id]
            del db.object_ids_by_key[obj.key]
            db.references.pop(obj.object_id, None)
        db.version += 1
        return len(purged)

    async def known_keys(self, keys: Sequence[str]) -> set[str]:
        return {key for key in keys if key in self._db.object_ids_by_key}

    async def compaction_candidates(
        self, committed_before_ms: int, smaller_than: int, limit: int
    ) -> list[ObjectRef]:
        found = [
            ObjectRef(o.object_id, o.key, o.size, o.level)
            for o in self._db.objects.values()
            if o.dead_since_ms is None
            and o.size < smaller_than
            and o.committed_ms < committed_before_ms
            and o.level >= 0
        ]
        return sorted(found, key=lambda o: (o.level, o.object_id))[:limit]

    async def batches_in_objects(self, object_ids: Sequence[int]) -> list[ObjectBatch]:
        wanted = set(object_ids)
        found = [
            ObjectBatch(tid, partition, row.last_offset, row.object_id, row.byte_offset,
                        row.byte_length)
            for (tid, partition), part in self._db.batches.items()
            for row in part.rows
            if row.object_id in wanted
        ]  # fmt: skip
        return sorted(found, key=lambda b: (b.topic_id.bytes, b.partition, b.last_offset))

    async def object_counts(self) -> ObjectCounts:
        objects = self._db.objects.values()
        live = [o for o in objects if o.dead_since_ms is None]
        return ObjectCounts(
            len(live),
            sum(o.size for o in live),
            sum(1 for o in objects if o.dead_since_ms is not None and o.deleted_ms is None),
            sum(1 for o in objects if o.deleted_ms is not None),
        )

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        part = self._db.batches.get((topic_id, partition))
        rows = part.rows[part.from_last_offset(start_offset) :] if part is not None else []
        kept = 0
        for row in reversed(rows):
            kept += row.byte_length
            if kept > keep_bytes:
                return max(start_offset, row.last_offset + 1)
        return start_offset

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        db = self._db
        lease = _fenced_lease(db, fence)
        _extend(db, lease, fence)
        tid = topic.topic_id
        db.topics.pop(tid, None)
        for key in [k for k in db.batches if k[0] == tid]:
            _unreference(db, db.batches[key].rows, now_ms)
        for table in (db.partitions, db.batches):
            for key in [k for k in table if k[0] == tid]:
                del table[key]
        for pkey in [k for k in db.producer_states if k[1] == tid]:
            del db.producer_states[pkey]
        for key in [k for k in db.aborted_txns if k[0] == tid]:
            del db.aborted_txns[key]
        for key in [k for k in db.key_compaction if k[0] == tid]:
            del db.key_compaction[key]
        db.version += 1

    # Reads --------------------------------------------------------------------
    async def load_topics(self) -> list[TopicInfo]:
        return self._topics()

    def _topics(self) -> list[TopicInfo]:
        return [_copy_topic(t) for t in self._db.topics.values()]

    async def load_partition_offsets(self) -> dict[PartitionKey, PartitionOffsets]:
        return partition_offsets(await self.load_sequencer(0))

    def _locations(self, rows: Sequence[StoredBatch]) -> Iterator[BatchLocation]:
        """The rows joined with their objects (an inner join: rows without one drop out)."""
        db = self._db
        for row in rows:
            location = db.location(row)
            if location is not None:
                yield location

    async def read_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        end_offset: int,
        max_bytes: int,
    ) -> list[BatchLocation]:
        part = self._db.batches.get((topic_id, partition))
        collector = BatchCollector(max_bytes)
        if part is None:
            return collector.batches
        position = start_offset
        while position < end_offset:
            # WHERE last_offset >= position AND base_offset < end ORDER BY last_offset LIMIT n
            page: list[BatchLocation] = []
            index = part.from_last_offset(position)
            while index < len(part.rows) and len(page) < READ_BATCHES_PAGE:
                row = part.rows[index]
                index += 1
                if row.base_offset < end_offset:
                    page.extend(self._locations((row,)))
            if collector.add_page(page):
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
        part = self._db.batches.get((topic_id, partition))
        if part is None:
            return None
        # WHERE time_index_ms >= ts ORDER BY time_index_ms, last_offset LIMIT 1
        candidates = [
            (row.time_index_ms, row.last_offset, location)
            for row in part.rows
            if row.time_index_ms >= timestamp_ms
            for location in self._locations((row,))
        ]
        found = min(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None
        if found is not None and found.last_offset < start_offset:
            # The time index is monotonic in offsets: past the log start, the
            # first live batch is the answer.
            live = self._locations(part.rows[part.from_last_offset(start_offset) :])
            found = next(live, None)
        if found is None:
            return None
        return found if found.base_offset < end_offset else None

    async def last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        part = self._db.batches.get((topic_id, partition))
        if part is None:
            return -1
        # WHERE last_offset < end ORDER BY last_offset DESC LIMIT 1 (no join)
        below = part.from_last_offset(end_offset)
        return part.rows[below - 1].time_index_ms if below else -1

    # Producer ids and group offsets -------------------------------------------
    async def allocate_producer_id(self) -> int:
        db = self._db
        producer_id = db.next_producer_id
        db.next_producer_id += 1
        db.version += 1
        return producer_id

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        db = self._db
        previous, epoch = db.group_claims.get(group_id, ("", 0))
        db.group_claims[group_id] = (agent_id, epoch + 1)
        db.version += 1
        return GroupClaim(group_id, agent_id, epoch + 1, "" if previous == agent_id else previous)

    def _check_claim(self, group_id: str, claim: GroupClaim | None) -> None:
        if claim is not None:
            stored = self._db.group_claims.get(group_id)
            if not claim.admits(stored):
                raise GroupFenced(claim, stored)

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        db = self._db
        self._check_claim(group_id, claim)
        for o in offsets:
            db.group_offsets[(group_id, o.topic, o.partition)] = o
        db.version += 1

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        # In primary-key order, as SQLite's WITHOUT ROWID table returns them.
        rows = [
            offset
            for key, offset in sorted(self._db.group_offsets.items(), key=lambda kv: kv[0])
            if key[0] == group_id
        ]
        if partitions is None:
            return rows
        wanted = set(partitions)
        return [r for r in rows if (r.topic, r.partition) in wanted]

    async def delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        db = self._db
        self._check_claim(group_id, claim)
        for key in [k for k in db.group_offsets if k[0] == group_id]:
            del db.group_offsets[key]
        db.version += 1

    async def groups_with_offsets(self) -> list[str]:
        return sorted({key[0] for key in self._db.group_offsets})


def _unreference(db: MemoryDatabase, rows: Sequence[StoredBatch], now_ms: int) -> None:
    counts: dict[int, int] = {}
    for row in rows:
        counts[row.object_id] = counts.get(row.object_id, 0) + 1
    for object_id, count in counts.items():
        db.unreference(object_id, count, now_ms)


def _dead_before(obj: StoredObject, dead_before_ms: int) -> bool:
    return (
        obj.dead_since_ms is not None
        and obj.dead_since_ms < dead_before_ms
        and obj.deleted_ms is None
    )


def _fenced_lease(db: MemoryDatabase, fence: Fence) -> LeaseRecord:
    """The lease row if the fence's epoch is still the row's; `Fenced` otherwise."""
    lease = db.leases.get(fence.shard)
    if lease is None or lease.epoch != fence.epoch:
        raise Fenced(f"writer epoch {fence.epoch} of shard {fence.shard} was superseded")
    return lease


def _extend(db: MemoryDatabase, lease: LeaseRecord, fence: Fence) -> None:
    if fence.expires_ms > lease.expires_ms:
        db.leases[fence.shard] = LeaseRecord(
            lease.shard, lease.holder, lease.address, lease.epoch, fence.expires_ms
        )


def _check_fence(db: MemoryDatabase, fence: Fence) -> None:
    _extend(db, _fenced_lease(db, fence), fence)


def _contains(sorted_values: list[int], value: int) -> bool:
    at = bisect.bisect_left(sorted_values, value)
    return at < len(sorted_values) and sorted_values[at] == value


def _integrity(what: str) -> CoordinatorUnavailable:
    """A constraint violation: SQLite's IntegrityError, which the backends report as this."""
    return CoordinatorUnavailable(f"memory: constraint failed: {what}")


def _is_backend(backend: MemoryBackend) -> Backend:
    return backend  # mypy checks that MemoryBackend implements the protocol
