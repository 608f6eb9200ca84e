"""A writer cut off from its database steps down at its lease's expiry by its own clock,
even while its renewal and its rounds hang, and what it was committing fails with a
retriable error instead of waiting (issue 16). Real time, a short lease."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, cast

import pytest

from driftlog.clock import SYSTEM_CLOCK
from driftlog.coordinator.api import BatchToCommit, CommitRequest, CoordinatorUnavailable
from driftlog.coordinator.core.sequencer import SequencedObject
from driftlog.coordinator.engines.backend import Backend, Fence
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.writer import CommitWriter, Listeners

LEASE_MS = 600


class SilentDatabase:
    """Passes calls through until `cut`; then every lease renewal and every commit waits
    for an answer that never comes (the packets vanish: no error, no reset)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.cut = False
        self._never = asyncio.Event()

    async def renew_lease(self, fence: Fence) -> None:
        if self.cut:
            await self._never.wait()
        await self.inner.renew_lease(fence)

    async def persist_objects(self, fence: Fence, objects: Sequence[SequencedObject]) -> None:
        if self.cut:
            await self._never.wait()
        await self.inner.persist_objects(fence, objects)

    def heal(self) -> None:
        self.cut = False
        self._never.set()

    def __getattr__(self, name: str) -> Any:
        if name == "persist_objects_overlapping":
            raise AttributeError(name)
        return getattr(self.inner, name)


def request(topic_id: uuid.UUID, key: str) -> CommitRequest:
    return CommitRequest(key, 100, [BatchToCommit(topic_id, 0, 0, 100, 1, 1000, 1001)])


def test_a_writer_whose_database_goes_silent_steps_down_at_its_lease_expiry() -> None:
    async def scenario() -> None:
        database = SilentDatabase(MemoryBackend(MemoryDatabase()))
        await database.inner.open()
        writer = CommitWriter(
            cast(Backend, database), SYSTEM_CLOCK, Listeners(), holder="a", lease_ms=LEASE_MS
        )
        await writer.start()
        _, topic = await writer.create_topic("t", 1, {})
        assert topic is not None and writer.is_writer
        committed = await asyncio.wait_for(writer.submit(request(topic.topic_id, "k0")), 5)
        assert committed[0].base_offset == 0

        database.cut = True
        stuck = writer.submit(request(topic.topic_id, "k1"))  # its round hangs
        # Bounded by the lease (0.6 s) plus a lease-loop step; 10 s is only a backstop.
        for _ in range(200):
            if not writer.is_writer:
                break
            await asyncio.sleep(0.05)
        assert not writer.is_writer, "still the writer with a silent database"
        with pytest.raises(CoordinatorUnavailable):
            await asyncio.wait_for(stuck, 10)
        database.heal()  # the hung round finishes (or is fenced): close does not wait on it
        await writer.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
