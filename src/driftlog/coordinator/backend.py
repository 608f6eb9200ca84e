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

import json
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    AgentInfo,
    BatchLocation,
    CommitOutcome,
    CommittedOffset,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.lease import LeaseRecord
from driftlog.coordinator.producers import CachedBatch, ProducerPartitionState
from driftlog.coordinator.sequencer import PartitionKey, SequencedObject, SequencerSnapshot

# Rows per round trip when a read walks the batch index.
READ_BATCHES_PAGE = 256


class LogStart(NamedTuple):
    topic_id: uuid.UUID
    partition: int
    log_start_offset: int


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
        """Register or refresh an agent (its `heartbeat_ms` is the time of this beat)."""
        ...

    async def live_agents(self, since_ms: int) -> list[AgentInfo]:
        """Agents whose last heartbeat is at or after `since_ms`."""
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

    async def drop_topic(self, fence: Fence, topic: TopicInfo) -> None: ...

    async def set_log_starts(self, fence: Fence, starts: Sequence[LogStart]) -> None:
        """Move log starts forward and forget the batches wholly before them."""
        ...

    async def log_start_for_bytes(
        self, topic_id: uuid.UUID, partition: int, keep_bytes: int, start_offset: int
    ) -> int:
        """The smallest log start from `start_offset` on that leaves at most `keep_bytes`
        of batches (whole batches: the first kept one starts the log)."""
        ...

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

    # Producer ids and consumer-group offsets ----------------------------------
    async def allocate_producer_id(self) -> int: ...

    async def put_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None: ...

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]: ...

    async def delete_group(self, group_id: str) -> None: ...

    async def groups_with_offsets(self) -> list[str]: ...


@runtime_checkable
class OverlappingBackend(Protocol):
    """A backend whose transactions can overlap (PostgreSQL): the writer pipelines rounds.

    `persist_objects_overlapping` writes the round's rows, then waits for `after`
    (the previous round's outcome) and commits only if it succeeded, so rounds
    commit in order and none commits on top of a failed one.
    """

    async def persist_objects_overlapping(
        self, fence: Fence, objects: Sequence[SequencedObject], after: Awaitable[bool]
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


def outcomes_json(obj: SequencedObject) -> str:
    """The object's outcomes as JSON, encoded once and kept on the object."""
    if not obj.outcomes_json:
        obj.outcomes_json = _JSON.encode(obj.outcomes)
    return obj.outcomes_json


def decode_outcomes(text: str) -> list[CommitOutcome]:
    return [CommitOutcome(ErrorCode(e), b, t, s) for e, b, t, s in json.loads(text)]


def encode_producer_batches(state: ProducerPartitionState) -> str:
    return json.dumps(
        [[b.first_sequence, b.last_sequence, b.base_offset] for b in state.batches],
        separators=(",", ":"),
    )


def decode_producer_state(epoch: int, text: str) -> ProducerPartitionState:
    state = ProducerPartitionState(epoch)
    for first, last, base in json.loads(text):
        state.batches.append(CachedBatch(first, last, base))
    return state


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
