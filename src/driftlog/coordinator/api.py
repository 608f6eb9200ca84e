"""The batch coordinator's interface: what agents ask of it, with no SQL and no I/O.

The coordinator orders the data and keeps the metadata: topics and partitions,
the coordinates of every committed batch (which object, which byte range, which
offsets), high watermarks and log start offsets, and committed consumer-group
offsets. Offsets are assigned here, atomically for a whole object, so they have
no gaps and no duplicates whatever the agents do.

Two halves (see docs/ARCHITECTURE.md, "Coordinator"):
- the commit side: one writer per shard sequences object commits in memory and
  persists them in group-commit transactions (`writer.py`); its requests and
  replies are plain values (`CommitRequest`, `CommitOutcome`) so they can cross
  an RPC;
- the read side: any agent's view of topics, watermarks and batch coordinates
  (`view.py`), a bounded tail cache in front of indexed database queries.

Errors a client caused are returned as Kafka error codes inside results;
`CoordinatorError` exceptions mean the coordinator could not do it and the
caller must treat the request as not done (a retriable error to clients).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from kio.schema.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: uuid.UUID
    partition_count: int
    configs: Mapping[str, str] = field(default_factory=dict)

    def with_configs(self, changes: Mapping[str, str | None]) -> TopicInfo:
        """This topic with configs set (value) or removed (None)."""
        configs = dict(self.configs)
        for key, value in changes.items():
            if value is None:
                configs.pop(key, None)
            else:
                configs[key] = value
        return TopicInfo(self.name, self.topic_id, self.partition_count, configs)


class BatchToCommit(NamedTuple):
    """One record batch inside an uploaded object, as the agent describes it.

    Named tuples rather than frozen dataclasses for the values made per batch on
    the commit path: they are several times cheaper to build.
    """

    topic_id: uuid.UUID
    partition: int
    byte_offset: int
    byte_length: int
    record_count: int
    base_timestamp_ms: int
    max_timestamp_ms: int
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    # The batch header's attributes (codec, timestamp type, transactional, control).
    attributes: int = 0


# Batch attribute bits the coordinator reads (Kafka's record-batch attributes).
TRANSACTIONAL_ATTRIBUTE = 0x10
CONTROL_ATTRIBUTE = 0x20


class CommitOutcome(NamedTuple):
    """The coordinator's answer for one `BatchToCommit`, in the same order."""

    error: ErrorCode
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = 0


class EncodedOutcomes(list[CommitOutcome]):
    """An object's outcomes with their JSON (`[[error, base offset, log append time, log
    start], ...]`), encoded once for the database: the writer RPC replies with it as is."""

    __slots__ = ("json",)

    def __init__(self, outcomes: Sequence[CommitOutcome], json: str) -> None:
        super().__init__(outcomes)
        self.json = json


class BatchLocation(NamedTuple):
    """Where a committed batch lives, and the offsets it was given.

    A tuple of strings and ints, so the garbage collector stops tracking it: the
    index holds one per committed batch, and tracked objects would make every
    full collection pause the event loop longer as the log grows.
    """

    object_key: str
    byte_offset: int
    byte_length: int
    base_offset: int
    last_offset: int
    max_timestamp_ms: int
    log_append_time_ms: int


class PartitionOffsets(NamedTuple):
    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None


# An agent's roles (`--roles`): produce and fetch traffic, the background jobs (garbage
# collection, compaction, key compaction), the writer lease (cluster/placement.py).
ROLE_ORDER = ("produce", "fetch", "jobs", "writer")
ALL_ROLES = frozenset(ROLE_ORDER)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A live agent as registered in the coordinator database (cluster membership)."""

    agent_id: str
    node_id: int
    host: str
    port: int
    zone: str
    rpc_address: str
    heartbeat_ms: int = 0
    # (listener name, advertised host, port) for each listener clients may use.
    listeners: tuple[tuple[str, str, int], ...] = ()
    # What it does (`produce`, `fetch`, `jobs`, `writer`: cluster/placement.py) and the
    # agent group it serves; rows from before roles have every role and no group.
    roles: frozenset[str] = ALL_ROLES
    group: str = ""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    """A SCRAM credential as Kafka keeps it (RFC 5802): never the password itself."""

    user_name: str
    mechanism: str  # "SCRAM-SHA-256" or "SCRAM-SHA-512"
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL as Kafka models it, with Kafka's integer codes (resource type, pattern
    type, operation, permission type); `security/acl.py` gives them names."""

    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission_type: int


# A client-quota entity: (entity type, name) pairs sorted by type ("client-id", "user");
# a name of None is that type's default entity (Kafka's <default>).
QuotaEntity = tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class QuotaEntry:
    """An entity's client quotas (KIP-546): `producer_byte_rate`, `consumer_byte_rate`,
    `request_percentage` and so on, by key."""

    entity: QuotaEntity
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class CommitRequest:
    """One uploaded object to commit: what an agent sends the writer."""

    object_key: str
    object_size: int
    batches: Sequence[BatchToCommit]
    # A re-send of a commit whose answer was lost: the writer checks whether the
    # key is already committed (first sends carry fresh keys, so they skip that).
    retry: bool = False


class CoordinatorError(Exception):
    """The coordinator could not do it; the request is not done (retriable for clients)."""


class NotWriter(CoordinatorError):
    """This process does not hold the writer lease (another may; `holder` names it)."""

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


class Fenced(NotWriter):
    """A newer writer took the lease: this one's writes were refused by the database."""


class CoordinatorUnavailable(CoordinatorError):
    """The database could not be reached or the transaction failed; the outcome is unknown."""


@dataclass(frozen=True, slots=True)
class GroupClaim:
    """An agent's right to coordinate a consumer group: Kafka's coordinator epoch.

    The database keeps one claim per group (`group_claims`). An agent that starts
    coordinating a group claims it: the claim moves to that agent and the epoch goes
    up. Offset commits carry the claim and land only while it is still the stored one,
    so of two agents that both believe they coordinate a group (their membership lists
    differ for a heartbeat or two), only the one that claimed last writes.
    """

    group_id: str
    agent_id: str
    epoch: int
    # The agent that held the claim before this one took it ("" if none, or this one);
    # for the log only.
    taken_from: str = field(default="", compare=False)

    def admits(self, stored: tuple[str, int] | None) -> bool:
        """Does the stored claim (agent id, epoch), if any, still name this one?"""
        return stored == (self.agent_id, self.epoch)


class GroupFenced(CoordinatorError):
    """Another agent claimed the group since this claim was taken: nothing was written.

    Clients are answered NOT_COORDINATOR and look the coordinator up again."""

    def __init__(self, claim: GroupClaim, stored: tuple[str, int] | None) -> None:
        holder = f"{stored[0]} (epoch {stored[1]})" if stored is not None else "nobody"
        super().__init__(
            f"group {claim.group_id!r}: the claim of epoch {claim.epoch} was superseded;"
            f" {holder} holds it"
        )
        self.claim = claim
        self.stored = stored


class Coordinator(Protocol):
    """What the agent's handlers use: the local view plus a way to reach the writer."""

    # Topics -----------------------------------------------------------------
    async def create_topic(
        self, name: str, partition_count: int, configs: Mapping[str, str]
    ) -> tuple[ErrorCode, TopicInfo | None]: ...

    async def delete_topic(self, name: str) -> ErrorCode: ...

    async def create_partitions(self, name: str, new_total: int) -> ErrorCode: ...

    async def alter_topic_configs(self, name: str, configs: Mapping[str, str | None]) -> ErrorCode:
        """Set (value) or remove (None) topic configs."""
        ...

    def topics(self) -> Sequence[TopicInfo]: ...

    def topic(self, name: str) -> TopicInfo | None: ...

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None: ...

    async def allocate_producer_id(self) -> int:
        """A producer id never handed out before, durable before it is returned."""
        ...

    # Write path -------------------------------------------------------------
    def submit_commit(self, request: CommitRequest) -> asyncio.Future[list[CommitOutcome]]:
        """Queue one uploaded object for commit; objects commit in submission order.

        The future resolves once offsets are assigned to every batch of the object,
        atomically and durably, or fails with a `CoordinatorError`. Committing the
        same object key twice returns the first commit's outcomes.
        """
        ...

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None: ...

    async def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        """Committed batches holding `start_offset` and after, up to about `max_bytes`.

        The first batch is always included (Kafka returns at least one batch even
        when it exceeds the limit, so consumers make progress).
        """
        ...

    async def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        """The first live batch whose running max timestamp is at or after `timestamp_ms`."""
        ...

    async def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        """The largest batch timestamp of the partition, or -1 when empty."""
        ...

    async def wait_for_commit(
        self, partitions: Sequence[tuple[uuid.UUID, int]], timeout_s: float
    ) -> None:
        """Return after the next commit to one of `partitions`, or after `timeout_s`."""
        ...

    # Consumer-group offsets ---------------------------------------------------
    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        """Move the group's claim to `agent_id` with the next epoch (see `GroupClaim`)."""
        ...

    async def commit_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim
    ) -> None:
        """Store the offsets if `claim` is still the group's; `GroupFenced` otherwise."""
        ...

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        """Committed offsets of a group; all of them when `partitions` is None."""
        ...

    async def delete_group_offsets(self, group_id: str, claim: GroupClaim) -> None:
        """Delete the group's offsets if `claim` is still the group's; `GroupFenced` otherwise."""
        ...

    async def groups_with_offsets(self) -> list[str]: ...

    async def close(self) -> None: ...
