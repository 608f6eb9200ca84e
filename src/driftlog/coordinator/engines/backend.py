"""The database seam of the coordinator: what the writer and the views need persisted.

`sqlite.py` (embedded, one agent) and `postgres.py` (cluster) implement it; the
logic that decides anything (sequencing, leases, idempotence, lookups' rules)
lives in the core modules and is shared. Backends translate their driver's
errors into `CoordinatorUnavailable` (or `Fenced`), never leak them.

Every write the writer makes carries its `Fence`: the transaction first
extends the lease row where the epoch is the writer's own and fails with
`Fenced` when no row matches (see `lease.py`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    AclBinding,
    AgentInfo,
    BatchLocation,
    CommitOutcome,
    CommittedOffset,
    GroupClaim,
    PartitionOffsets,
    QuotaEntity,
    QuotaEntry,
    ScramCredential,
    TopicInfo,
)
from driftlog.coordinator.core.lease import LeaseRecord
from driftlog.coordinator.core.producers import CachedBatch, ProducerPartitionState
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.core.transactions import AbortedTxn, PendingOffset, Transaction, TxnState

# The writer's rounds in flight at once: one committing while the next is sequenced (on
# PostgreSQL also inserted: the server orders their commits); engines size their
# connections for it. Four instead of two measured no better at 1, 8 or 32 agents,
# with smaller rounds costing more CPU per commit.
MAX_ROUNDS_IN_FLIGHT = 2
# Rows per round trip when a read walks the batch index.
READ_BATCHES_PAGE = 256


class LogStart(NamedTuple):
    topic_id: uuid.UUID
    partition: int
    log_start_offset: int


# The level of transaction-marker objects (coordinates without bytes): never compacted.
MARKER_LEVEL = -1


class ObjectRef(NamedTuple):
    """A row of `objects` as the lifecycle jobs see it."""

    object_id: int
    key: str
    size: int
    level: int = 0  # 0: as uploaded; n + 1: written by compacting level-n objects


class ObjectBatch(NamedTuple):
    """Where one live batch sits, for the compactor to copy it."""

    topic_id: uuid.UUID
    partition: int
    last_offset: int
    object_id: int
    byte_offset: int
    byte_length: int


class BatchMove(NamedTuple):
    """A batch the compactor copied: where it was, and its place in the new object."""

    topic_id: uuid.UUID
    partition: int
    last_offset: int
    from_object_id: int
    byte_offset: int


class BatchRewrite(NamedTuple):
    """A batch key compaction wrote again, smaller: its place in the new object."""

    topic_id: uuid.UUID
    partition: int
    last_offset: int
    from_object_id: int
    byte_offset: int
    byte_length: int


class BatchRemoval(NamedTuple):
    """A batch key compaction left without records: its row goes (readers see a gap)."""

    topic_id: uuid.UUID
    partition: int
    last_offset: int
    from_object_id: int


class BatchRef(NamedTuple):
    """A batch row with its object id, as key compaction reads it."""

    location: BatchLocation
    object_id: int


class KeyCleanState(NamedTuple):
    """Where key compaction of a partition stands: offsets below `cleaned_offset` hold
    at most one record per key; `passes` are (end offset, time) of the cleanings so far,
    which date a tombstone's first cleaning (KIP-534: it goes `delete.retention.ms` later)."""

    topic_id: uuid.UUID
    partition: int
    cleaned_offset: int
    passes: tuple[tuple[int, ...], ...] = ()  # (end offset, time, tombstones kept)


class NewObject(NamedTuple):
    """An object the compactor wrote, one level above the objects it merged."""

    object_id: int
    key: str
    size: int
    committed_ms: int
    level: int = 1


class ObjectCounts(NamedTuple):
    live_objects: int
    live_bytes: int
    dead_objects: int  # no batch references them; waiting for their grace period
    deleted_objects: int  # gone from the store; the row stays for idempotent re-sends


@dataclass(slots=True)
class TxnWrite:
    """One change of transaction state, persisted in one transaction of the writer:
    the transactions' new rows, ids forgotten, the marker objects that end
    transactions (their batch rows and producer states, and the aborted-transaction
    index from their closes), offsets committed in transactions, and the pending
    offsets of ended transactions: moved to the group's offsets on commit, dropped
    on abort."""

    transactions: list[Transaction] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    markers: list[SequencedObject] = field(default_factory=list)
    pending_offsets: list[PendingOffset] = field(default_factory=list)
    settled: list[tuple[int, bool]] = field(default_factory=list)  # producer id, commit

    def aborted_rows(self) -> list[tuple[uuid.UUID, int, AbortedTxn]]:
        return [
            (c.topic_id, c.partition, AbortedTxn(c.producer_id, c.first_offset, c.marker_offset))
            for o in self.markers
            for c in o.txn_closes or ()
            if not c.commit and c.first_offset >= 0
        ]


@dataclass(frozen=True, slots=True)
class Fence:
    """The writer's credentials for one write: its lease epoch and the expiry to extend to."""

    shard: int
    epoch: int
    expires_ms: int


class Backend(Protocol):
    async def open(self) -> None:
        """Connect and apply schema migrations."""
        ...

    async def close(self) -> None: ...

    async def cluster_id(self, proposed: str) -> str:
        """The cluster's id, storing `proposed` if there is none yet."""
        ...

    # Membership ---------------------------------------------------------------
    async def heartbeat(self, agent: AgentInfo) -> None:
        """Register or refresh an agent (its `heartbeat_ms` is the time of this beat on
        its own clock; a database shared by many hosts stamps the beat with its own)."""
        ...

    async def live_agents(self, timeout_ms: int, now_ms: int) -> list[AgentInfo]:
        """Agents heard from within `timeout_ms`, with `heartbeat_ms` on the caller's
        clock (`now_ms`). A database shared by many hosts judges by its own clock, so
        agents whose clocks disagree still see each other."""
        ...

    async def remove_agent(self, agent_id: str) -> None: ...

    # Lease --------------------------------------------------------------------
    async def read_lease(self, shard: int) -> LeaseRecord | None: ...

    async def try_acquire_lease(self, expected: LeaseRecord | None, new: LeaseRecord) -> bool:
        """Install `new` if the row is still `expected` (by epoch; absent when None)."""
        ...

    async def renew_lease(self, fence: Fence) -> None:
        """Extend the lease; `Fenced` if the epoch is no longer the row's."""
        ...

    async def release_lease(self, fence: Fence) -> None:
        """Let the lease expire now, if it is still this epoch's (a clean stop)."""
        ...

    # Writer -------------------------------------------------------------------
    async def load_sequencer(self, shard: int) -> SequencerSnapshot: ...

    async def committed_outcomes(self, keys: Sequence[str]) -> dict[str, list[CommitOutcome]]:
        """Stored outcomes of the objects among `keys` that are already committed."""
        ...

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        """Store many object commits in one transaction (the group commit)."""
        ...

    async def put_topic(self, fence: Fence, topic: TopicInfo, old_partition_count: int) -> None:
        """Create or update a topic; partitions from `old_partition_count` on are new."""
        ...

    async def drop_topic(self, fence: Fence, topic: TopicInfo, now_ms: int) -> None:
        """Forget the topic and its batches; objects left unreferenced are dead from `now_ms`."""
        ...

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart], now_ms: int) -> None:
        """Move log starts forward and forget the batches wholly before them; objects left
        unreferenced are dead from `now_ms`."""
        ...

    async def relocate_batches(
        self,
        fence: Fence,
        new_object: NewObject,
        moves: Sequence[BatchMove],
        now_ms: int,
    ) -> int:
        """The compactor's swap, in one transaction: store `new_object`, point every
        batch of `moves` that still exists in its old object at its place in the new
        one, and mark the old objects left unreferenced dead from `now_ms`. Returns how
        many batches moved (batches deleted meanwhile are skipped)."""
        ...

    async def rewrite_batches(
        self,
        fence: Fence,
        new_object: NewObject | None,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
        now_ms: int,
    ) -> int:
        """Key compaction's swap, in one transaction: store `new_object` (if any), point
        each rewritten batch that is still in its old object at its new place and length,
        delete each removed batch still in its old object, store the partition's cleaning
        state, and mark the objects left unreferenced dead. Returns how many rows changed."""
        ...

    async def read_batch_refs(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int, limit: int
    ) -> list[BatchRef]:
        """Up to `limit` batches with offsets in [start_offset, end_offset), in order."""
        ...

    async def key_clean_state(
        self, topic_id: uuid.UUID, partition: int
    ) -> KeyCleanState | None: ...

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        """The smallest log start from `start_offset` on that leaves at most `keep_bytes`
        of batches (whole batches: the first kept one starts the log)."""
        ...

    # Object lifecycle (garbage collection, compaction) ------------------------
    # An object is dead once no batch references it. References are only ever
    # removed (an object's batches are written in the transaction that stores it,
    # and compaction points batches at a new object), so a dead object stays dead.

    async def dead_objects(self, dead_before_ms: int, limit: int) -> list[ObjectRef]:
        """Objects dead since before `dead_before_ms`, not yet deleted, oldest first."""
        ...

    async def mark_objects_deleted(self, object_ids: Sequence[int], now_ms: int) -> None:
        """Record that these dead objects are gone from the store (rows stay as tombstones)."""
        ...

    async def purge_tombstones(self, committed_before_ms: int, limit: int) -> int:
        """Drop rows of deleted objects committed before `committed_before_ms` (no commit
        of theirs can be re-sent any more); never the newest row, so ids are not reused."""
        ...

    async def known_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` have a row in `objects` (live, dead or deleted)."""
        ...

    async def compaction_candidates(
        self, committed_before_ms: int, smaller_than: int, limit: int
    ) -> list[ObjectRef]:
        """Live objects smaller than `smaller_than` bytes committed before
        `committed_before_ms`, by level, oldest first."""
        ...

    async def batches_in_objects(self, object_ids: Sequence[int]) -> list[ObjectBatch]:
        """The live batches stored in these objects, by topic, partition and offset."""
        ...

    async def object_counts(self) -> ObjectCounts: ...

    # Reads --------------------------------------------------------------------
    async def load_topics(self) -> list[TopicInfo]: ...

    async def load_partition_offsets(self) -> dict[PartitionKey, PartitionOffsets]: ...

    async def read_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        end_offset: int,
        max_bytes: int,
    ) -> list[BatchLocation]:
        """Batches holding offsets from `start_offset` up to (not including) `end_offset`,
        in order, stopping once about `max_bytes` are collected (the first always counts)."""
        ...

    async def first_batch_at_time(
        self,
        topic_id: uuid.UUID,
        partition: int,
        timestamp_ms: int,
        start_offset: int,
        end_offset: int,
    ) -> BatchLocation | None:
        """The first batch in [start_offset, end_offset) whose time index is >= timestamp_ms."""
        ...

    async def last_time_index(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> int:
        """The time index of the last batch below `end_offset`, or -1."""
        ...

    # Transactions -------------------------------------------------------------
    async def persist_transactions(self, fence: Fence, write: TxnWrite) -> None:
        """Store a change of transaction state in one transaction (see `TxnWrite`)."""
        ...

    async def load_transactions(self) -> list[Transaction]:
        """Every transactional id's state (DescribeTransactions, ListTransactions)."""
        ...

    async def read_aborted(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        """Aborted transactions of the partition that overlap [start_offset, end_offset):
        their abort marker is at or after `start_offset` and they began before
        `end_offset`, by marker offset."""
        ...

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        """The group's partitions with an offset committed in a transaction still open."""
        ...

    # Dynamic broker configs (KIP-226) --------------------------------------------
    async def load_broker_configs(self) -> dict[str, dict[str, str]]:
        """Every resource's dynamic broker configs: "" is the cluster-wide default, a
        node id's string that broker's own."""
        ...

    async def put_broker_configs(self, resource: str, configs: Mapping[str, str]) -> None:
        """Replace a resource's dynamic broker configs (none: the row goes)."""
        ...

    # Security (credentials, ACLs, quotas) and the cluster's own secret ------------
    # Every change of credentials, ACLs or quotas bumps one counter in the same
    # transaction: agents poll `security_version` each heartbeat and reload on a move.

    async def cluster_secret(self) -> bytes:
        """The secret agents authenticate each other's RPC with: 32 random bytes made by
        the first call, the same bytes for every call after (whichever agent made them)."""
        ...

    async def security_version(self) -> int:
        """Moves whenever credentials, ACLs or quotas change (and only then)."""
        ...

    async def load_scram_credentials(self) -> list[ScramCredential]: ...

    async def put_scram_credentials(
        self, upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
    ) -> None:
        """Store `upserts` (replacing a user's credential of the same mechanism) and delete
        the (user name, mechanism) pairs of `deletions`, in one transaction."""
        ...

    async def load_acls(self) -> list[AclBinding]: ...

    async def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Store the bindings; one already stored is not an error (Kafka's CreateAcls)."""
        ...

    async def delete_acls(self, bindings: Sequence[AclBinding]) -> int:
        """Delete exactly these bindings (filters are matched by the caller); returns
        how many were stored."""
        ...

    async def load_client_quotas(self) -> list[QuotaEntry]: ...

    async def alter_client_quotas(
        self, changes: Sequence[tuple[QuotaEntity, str, float | None]]
    ) -> None:
        """Set (a value) or remove (None) one quota key of an entity per change, in one
        transaction; an entity left without keys is gone."""
        ...

    # Node ids (see node_ids.py) ---------------------------------------------------
    async def claim_node_id(
        self, agent_id: str, requested: int | None, now_ms: int, live_timeout_ms: int
    ) -> int:
        """The node id `agent_id` is to use, recorded for it. With `requested` None: the
        one recorded before, or the smallest id no agent id holds. Otherwise `requested`,
        taken from its holder unless that holder is alive (a heartbeat or a claim within
        `live_timeout_ms` of `now_ms`; a database shared by many hosts judges by its own
        clock): then `NodeIdTaken`. Agents claiming at once never get the same id."""
        ...

    # Producer ids and consumer-group offsets ----------------------------------
    async def allocate_producer_id(self) -> int: ...

    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        """Move the group's claim to `agent_id` with the next epoch (1 for the first claim),
        atomically: of agents claiming at once, each gets its own epoch and the last one
        holds the claim. `taken_from` names the previous holder if it was another agent."""
        ...

    async def put_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim | None
    ) -> None:
        """Store committed offsets (the last one of a partition wins), in one transaction
        that first checks that `claim` is still the group's stored claim: `GroupFenced`,
        and nothing written, if not. A claim taken concurrently is ordered before or after
        the whole commit, never between the check and the write. None: no check (tools
        and tests only; agents always carry their claim)."""
        ...

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]: ...

    async def delete_group(self, group_id: str, claim: GroupClaim | None) -> None:
        """Delete the group's committed offsets, checked against `claim` as `put_offsets`
        is (the claim itself stays: epochs only grow)."""
        ...

    async def groups_with_offsets(self) -> list[str]: ...


@runtime_checkable
class OverlappingBackend(Protocol):
    """A backend whose transactions can overlap (PostgreSQL): the writer pipelines rounds.

    `persist_objects_overlapping` may be called for a round while the previous one
    is still in flight. `after` resolves to the previous round's outcome, and
    `after_object_id` is the last object sequenced before this round (None when
    no round is in flight). The backend commits this round only after that object
    committed, so rounds commit in order and none commits on top of a failed one.
    """

    async def persist_objects_overlapping(
        self,
        fence: Fence,
        objects: Sequence[SequencedObject],
        after: asyncio.Future[bool],
        after_object_id: int | None,
    ) -> None: ...


class BatchCollector:
    """Gathers a read's batches page by page: stops once about `max_bytes` are in
    (the first batch always counts, as Kafka returns at least one)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.batches: list[BatchLocation] = []
        self.total_bytes = 0

    def add_page(self, page: Sequence[BatchLocation]) -> bool:
        """Take what fits from one page; True when the read is complete."""
        for location in page:
            if self.batches and self.total_bytes + location.byte_length > self.max_bytes:
                return True
            self.batches.append(location)
            self.total_bytes += location.byte_length
            if self.total_bytes >= self.max_bytes:
                return True
        return len(page) < READ_BATCHES_PAGE

    @property
    def next_offset(self) -> int:
        return self.batches[-1].last_offset + 1


# Encodings shared by the backends ---------------------------------------------


_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def encode_outcomes(outcomes: Sequence[CommitOutcome]) -> str:
    # Named tuples of ints (the error code is an IntEnum) encode as arrays of numbers.
    return _JSON.encode(outcomes)


@functools.lru_cache(maxsize=64)
def _outcomes_format(count: int) -> str:
    """A %-format for `count` outcomes as JSON arrays (64 of them: a few KB)."""
    return "[" + ",".join(["[%d,%d,%d,%d]"] * count) + "]"


def outcomes_json(obj: SequencedObject) -> str:
    """The object's outcomes as JSON, encoded once and kept on the object.

    One %-format of all the numbers, in C: formatting outcome by outcome cost the
    writer about 1 µs each, and the JSON encoder stringifies the error code (an
    IntEnum) through Python code."""
    if not obj.outcomes_json:
        outcomes = obj.outcomes
        numbers = tuple(itertools.chain.from_iterable(outcomes))
        obj.outcomes_json = _outcomes_format(len(outcomes)) % numbers
    return obj.outcomes_json


def decode_outcomes(text: str) -> list[CommitOutcome]:
    return [CommitOutcome(ErrorCode(e), b, t, s) for e, b, t, s in json.loads(text)]


def encode_producer_batches(state: ProducerPartitionState) -> str:
    """The cached batches as JSON (`[[first sequence, last sequence, base offset], ...]`);
    with an open transaction, an object that adds its first offset (`{"b": [...], "t": N}`),
    so the column and the group-commit function stay as they are."""
    batches = [[b.first_sequence, b.last_sequence, b.base_offset] for b in state.batches]
    if state.txn_first_offset >= 0:
        return _JSON.encode({"b": batches, "t": state.txn_first_offset})
    return _JSON.encode(batches)


def decode_producer_state(epoch: int, text: str) -> ProducerPartitionState:
    state = ProducerPartitionState(epoch)
    value = json.loads(text)
    if isinstance(value, dict):
        state.txn_first_offset = int(value["t"])
        value = value["b"]
    for first, last, base in value:
        state.batches.append(CachedBatch(first, last, base))
    return state


def transaction_row(txn: Transaction) -> tuple[Any, ...]:
    """A `transactions` row: id, producer id, epoch, state, timeout, start, update time,
    partitions (JSON [[topic id hex, partition], ...]), groups (JSON), last producer id
    and epoch."""
    partitions = sorted([[t.hex, p] for t, p in txn.partitions])
    return (
        txn.transactional_id, txn.producer_id, txn.epoch, txn.state.value, txn.timeout_ms,
        txn.start_ms, txn.updated_ms, _JSON.encode(partitions), _JSON.encode(sorted(txn.groups)),
        txn.last_producer_id, txn.last_epoch,
    )  # fmt: skip


def transaction_from_row(row: Sequence[Any]) -> Transaction:
    (txn_id, pid, epoch, state, timeout_ms, start_ms, updated_ms, partitions, groups,
     last_pid, last_epoch) = row  # fmt: skip
    return Transaction(
        str(txn_id), int(pid), int(epoch), TxnState(state), int(timeout_ms), int(start_ms),
        int(updated_ms), frozenset((uuid.UUID(hex=t), int(p)) for t, p in json.loads(partitions)),
        frozenset(json.loads(groups)), int(last_pid), int(last_epoch),
    )  # fmt: skip


TRANSACTION_COLUMNS = (
    "transactional_id, producer_id, epoch, state, timeout_ms, start_ms, updated_ms,"
    " partitions, groups, last_producer_id, last_epoch"
)


def decode_passes(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in p) for p in json.loads(text))


def encode_configs(topic: TopicInfo) -> str:
    return json.dumps(dict(topic.configs), sort_keys=True)


def partition_offsets(snapshot: SequencerSnapshot) -> dict[PartitionKey, PartitionOffsets]:
    """Log starts and high watermarks as a read view wants them, from a loaded snapshot."""
    return {
        key: PartitionOffsets(p.log_start_offset, p.high_watermark)
        for key, p in snapshot.partitions.items()
    }


def high_watermark(log_start_offset: int, last_offset: int | None) -> int:
    return max(log_start_offset, -1 if last_offset is None else last_offset + 1)


# Security rows ------------------------------------------------------------------

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
CLUSTER_SECRET_BYTES = 32


def check_scram_mechanisms(
    upserts: Sequence[ScramCredential], deletions: Sequence[tuple[str, str]]
) -> None:
    """A mechanism Kafka does not know is the caller's mistake, not the database's."""
    for mechanism in [c.mechanism for c in upserts] + [m for _, m in deletions]:
        if mechanism not in SCRAM_MECHANISMS:
            raise ValueError(f"unknown SCRAM mechanism {mechanism!r}")


def quota_entity(entity: QuotaEntity) -> QuotaEntity:
    """The entity with its pairs sorted by type (one type at most once)."""
    ordered = tuple(sorted(entity, key=lambda pair: pair[0]))
    if len({entity_type for entity_type, _ in ordered}) != len(ordered) or not ordered:
        raise ValueError(f"a quota entity names each type once, at least one: {entity!r}")
    return ordered


def encode_quota_entity(entity: QuotaEntity) -> str:
    """The entity as the text key of its rows: JSON `[[type, name or null], ...]`."""
    return _JSON.encode([[entity_type, name] for entity_type, name in quota_entity(entity)])


def decode_quota_entity(text: str) -> QuotaEntity:
    return tuple((str(entity_type), name) for entity_type, name in json.loads(text))


def quota_entries(rows: Sequence[tuple[str, str, float]]) -> list[QuotaEntry]:
    """`client_quotas` rows (entity text, key, value) as entries, by entity text."""
    values: dict[str, dict[str, float]] = {}
    for entity, key, value in rows:
        values.setdefault(entity, {})[key] = float(value)
    return [QuotaEntry(decode_quota_entity(e), values[e]) for e in sorted(values)]


def acl_row(b: AclBinding) -> tuple[int, str, int, str, str, int, int]:
    """An `acls` row: the binding's seven fields in column order."""
    return (b.resource_type, b.resource_name, b.pattern_type, b.principal, b.host,
            b.operation, b.permission_type)  # fmt: skip


def encode_listeners(listeners: Sequence[tuple[str, str, int]]) -> str:
    return _JSON.encode([[name, host, port] for name, host, port in listeners])


def decode_listeners(text: str) -> tuple[tuple[str, str, int], ...]:
    return tuple((str(name), str(host), int(port)) for name, host, port in json.loads(text))


def unique_offsets(offsets: Sequence[CommittedOffset]) -> list[CommittedOffset]:
    """One offset per partition, the last given winning (as row-by-row upserts would):
    a single upsert statement may not touch a row twice."""
    return list({(o.topic, o.partition): o for o in offsets}.values())


def encode_roles(roles: frozenset[str]) -> str:
    return ",".join(sorted(roles))


def decode_roles(text: str) -> frozenset[str]:
    return frozenset(r for r in text.split(",") if r)


def agent_from_row(row: Sequence[Any]) -> AgentInfo:
    """An `agents` row (agent id, node id, host, port, zone, RPC address, heartbeat time,
    listeners as JSON, roles comma-separated, agent group) as `AgentInfo`."""
    agent_id, node_id, host, port, zone, rpc_address, heartbeat_ms, listeners, roles, group = row
    return AgentInfo(
        str(agent_id), int(node_id), str(host), int(port), str(zone), str(rpc_address),
        int(heartbeat_ms), decode_listeners(listeners), decode_roles(str(roles)), str(group),
    )  # fmt: skip
