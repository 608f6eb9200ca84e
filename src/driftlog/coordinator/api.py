"""The batch coordinator's interface: what agents ask of it, with no SQL and no I/O.

The coordinator orders the data and keeps the metadata: topics and partitions,
the coordinates of every committed batch (which object, which byte range, which
offsets), high watermarks and log start offsets, and committed consumer-group
offsets. Offsets are assigned here, atomically for a whole object, so they have
no gaps and no duplicates whatever the agents do.

Backends (`sqlite.py`, later PostgreSQL) implement `Coordinator`. Errors a
client caused are returned as Kafka error codes inside results; exceptions mean
the coordinator itself failed and the caller must treat the request as not done.
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


@dataclass(frozen=True, slots=True)
class BatchToCommit:
    """One record batch inside an uploaded object, as the agent describes it."""

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


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """The coordinator's answer for one `BatchToCommit`, in the same order."""

    error: ErrorCode
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = 0


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


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str | None


class Coordinator(Protocol):
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
    def submit_commit(
        self, object_key: str, object_size: int, batches: Sequence[BatchToCommit]
    ) -> asyncio.Future[list[CommitOutcome]]:
        """Queue one uploaded object for commit; objects commit in submission order.

        The future resolves once offsets are assigned to every batch of the object,
        atomically and durably, or fails when the commit failed.
        """
        ...

    async def commit_object(
        self, object_key: str, object_size: int, batches: Sequence[BatchToCommit]
    ) -> list[CommitOutcome]:
        """`submit_commit` and wait for it."""
        ...

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None: ...

    def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        """Committed batches holding `start_offset` and after, up to about `max_bytes`.

        The first batch is always included (Kafka returns at least one batch even
        when it exceeds the limit, so consumers make progress).
        """
        ...

    def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        """The first batch whose max timestamp is at or after `timestamp_ms`."""
        ...

    def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        """The largest batch timestamp of the partition, or -1 when empty."""
        ...

    async def wait_for_commit(
        self, partitions: Sequence[tuple[uuid.UUID, int]], timeout_s: float
    ) -> None:
        """Return after the next commit to one of `partitions`, or after `timeout_s`."""
        ...

    # Consumer-group offsets ---------------------------------------------------
    async def commit_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None: ...

    def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        """Committed offsets of a group; all of them when `partitions` is None."""
        ...

    async def delete_group_offsets(self, group_id: str) -> None: ...

    def groups_with_offsets(self) -> list[str]: ...

    async def close(self) -> None: ...
