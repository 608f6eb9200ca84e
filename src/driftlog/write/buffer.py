"""The agent's one write buffer shared by all partitions, and its flush decision. No awaits.

Batches from every producer and partition accumulate here until the buffer is
big enough or old enough to become one object (the brief's write path, step 3).
Whoever drives the buffer passes `now_ms`; the buffer never reads a clock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from driftlog.records.batch import BatchHeader


@dataclass(slots=True)
class PendingBatch:
    """One validated batch waiting for upload; `waiter` is completed with its outcome."""

    topic_id: uuid.UUID
    partition: int
    data: bytes
    header: BatchHeader
    waiter: Any  # asyncio.Future[CommitOutcome], opaque to this module
    appended_ms: int = 0


@dataclass(slots=True)
class WriteBuffer:
    flush_bytes: int
    flush_age_ms: int
    batches: list[PendingBatch] = field(default_factory=list)
    size_bytes: int = 0
    oldest_ms: int = -1

    def add(self, batch: PendingBatch, now_ms: int) -> None:
        if not self.batches:
            self.oldest_ms = now_ms
        batch.appended_ms = now_ms
        self.batches.append(batch)
        self.size_bytes += len(batch.data)

    def is_full(self) -> bool:
        return self.size_bytes >= self.flush_bytes

    def deadline_ms(self) -> int | None:
        """When the oldest batch must be flushed, or None when empty."""
        return self.oldest_ms + self.flush_age_ms if self.batches else None

    def take(self) -> list[PendingBatch]:
        batches = self.batches
        self.batches = []
        self.size_bytes = 0
        self.oldest_ms = -1
        return batches
