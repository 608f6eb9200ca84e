"""The coordinator as one agent uses it: its read view plus the writer it reaches.

Today the agent runs the writer itself (it takes the lease at start): the
embedded SQLite default, or one agent on PostgreSQL. Reads go to the view;
commits and topic changes go to the writer; group offsets and producer ids go
straight to the database (they need no sequencing).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence

from kio.schema.errors import ErrorCode

from driftlog.clock import Clock
from driftlog.coordinator.api import (
    BatchLocation,
    CommitOutcome,
    CommitRequest,
    CommittedOffset,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.backend import Backend
from driftlog.coordinator.view import CoordinatorView
from driftlog.coordinator.writer import DEFAULT_LEASE_MS, CommitWriter


class LocalCoordinator:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        holder: str,
        address: str = "",
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.backend = backend
        self.view = CoordinatorView(backend)
        self.writer = CommitWriter(
            backend, clock, self.view, holder=holder, address=address, lease_ms=lease_ms
        )

    async def start(self, wait_for_lease_s: float) -> None:
        await self.backend.open()
        await self.view.load()
        await self.writer.start(wait_for_lease_s)

    async def close(self) -> None:
        await self.writer.close()
        await self.backend.close()

    @property
    def commits_persisted(self) -> int:
        return self.writer.commits_persisted

    @property
    def transactions(self) -> int:
        return self.writer.transactions

    # Topics -----------------------------------------------------------------
    def topics(self) -> Sequence[TopicInfo]:
        return self.view.topics()

    def topic(self, name: str) -> TopicInfo | None:
        return self.view.topic(name)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self.view.topic_by_id(topic_id)

    async def create_topic(
        self, name: str, partition_count: int, configs: Mapping[str, str]
    ) -> tuple[ErrorCode, TopicInfo | None]:
        return await self.writer.create_topic(name, partition_count, configs)

    async def delete_topic(self, name: str) -> ErrorCode:
        return await self.writer.delete_topic(name)

    async def create_partitions(self, name: str, new_total: int) -> ErrorCode:
        topic = self.writer.topic(name)
        if topic is None:
            return ErrorCode.unknown_topic_or_partition
        if new_total <= topic.partition_count:
            return ErrorCode.invalid_partitions
        grown = TopicInfo(topic.name, topic.topic_id, new_total, topic.configs)
        await self.writer.put_topic(grown, topic.partition_count)
        return ErrorCode.none

    async def alter_topic_configs(self, name: str, configs: Mapping[str, str | None]) -> ErrorCode:
        topic = self.writer.topic(name)
        if topic is None:
            return ErrorCode.unknown_topic_or_partition
        await self.writer.put_topic(topic.with_configs(configs), topic.partition_count)
        return ErrorCode.none

    async def allocate_producer_id(self) -> int:
        return await self.backend.allocate_producer_id()

    # Write path -------------------------------------------------------------
    def submit_commit(self, request: CommitRequest) -> asyncio.Future[list[CommitOutcome]]:
        return self.writer.submit(request)

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        return self.view.partition_offsets(topic_id, partition)

    async def find_batches(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, max_bytes: int
    ) -> list[BatchLocation]:
        return await self.view.find_batches(topic_id, partition, start_offset, max_bytes)

    async def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        return await self.view.batch_at_timestamp(topic_id, partition, timestamp_ms)

    async def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        return await self.view.max_timestamp(topic_id, partition)

    async def wait_for_commit(
        self, partitions: Sequence[tuple[uuid.UUID, int]], timeout_s: float
    ) -> None:
        await self.view.wait_for_commit(partitions, timeout_s)

    # Consumer-group offsets ---------------------------------------------------
    async def commit_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None:
        await self.backend.put_offsets(group_id, offsets)

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        return await self.backend.fetch_offsets(group_id, partitions)

    async def delete_group_offsets(self, group_id: str) -> None:
        await self.backend.delete_group(group_id)

    async def groups_with_offsets(self) -> list[str]:
        return await self.backend.groups_with_offsets()
