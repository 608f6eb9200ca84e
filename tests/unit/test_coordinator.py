"""The single-writer coordinator: dense offsets, group commit, rollback, reload from SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import BatchToCommit, CommittedOffset
from driftlog.coordinator.service import SingleWriterCoordinator
from driftlog.coordinator.sqlite import SqlitePersistence
from driftlog.coordinator.state import SequencedObject


def batch(topic_id: uuid.UUID, partition: int, count: int, start: int = 0) -> BatchToCommit:
    return BatchToCommit(topic_id, partition, start, 100, count, 1000, 1000 + count)


class FlakyPersistence(SqlitePersistence):
    """Fails the next `failures` group commits, as a lost database connection would."""

    failures = 0

    def persist_objects(self, objects: Sequence[SequencedObject]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database unavailable")
        super().persist_objects(objects)


async def _run(tmp_path: Path) -> None:
    persistence = FlakyPersistence(tmp_path / "c.sqlite3")
    coordinator = SingleWriterCoordinator(persistence)
    await coordinator.start()
    error, topic = await coordinator.create_topic("t", 2, {})
    assert error == ErrorCode.none and topic is not None
    tid = topic.topic_id

    # Many concurrent commits: offsets dense per partition, in commit order.
    results = await asyncio.gather(
        *(coordinator.commit_object(f"o{i}", 100, [batch(tid, i % 2, 3)]) for i in range(20))
    )
    offsets = [r[0].base_offset for r in results]
    assert offsets[0::2] == list(range(0, 30, 3))
    assert offsets[1::2] == list(range(0, 30, 3))
    assert coordinator.transactions < 20  # group commit batched them

    # A failed commit is an error and leaves no gap.
    persistence.failures = 1
    with pytest.raises(ConnectionError):
        await coordinator.commit_object("bad", 100, [batch(tid, 0, 5)])
    [outcome] = await coordinator.commit_object("good", 100, [batch(tid, 0, 2)])
    assert outcome.base_offset == 30
    offsets_after = coordinator.partition_offsets(tid, 0)
    assert offsets_after is not None and offsets_after.high_watermark == 32

    # Unknown partitions are refused without affecting the others.
    mixed = await coordinator.commit_object("m", 200, [batch(tid, 5, 1), batch(tid, 1, 1)])
    assert mixed[0].error == ErrorCode.unknown_topic_or_partition
    assert mixed[1].base_offset == 30

    # An idempotent batch whose commit failed is not remembered as a duplicate.
    idempotent = BatchToCommit(
        tid, 1, 0, 10, 2, 1000, 1001, producer_id=9, producer_epoch=0, base_sequence=0
    )
    persistence.failures = 1
    with pytest.raises(ConnectionError):
        await coordinator.commit_object("bad2", 10, [idempotent])
    [first_try] = await coordinator.commit_object("retry", 10, [idempotent])
    [duplicate] = await coordinator.commit_object("retry-dup", 10, [idempotent])
    assert first_try.base_offset == duplicate.base_offset == 31
    high = coordinator.partition_offsets(tid, 1)
    assert high is not None and high.high_watermark == 33

    await coordinator.commit_offsets("g", [CommittedOffset("t", 0, 17, 3, "meta")])
    await coordinator.close()

    # Everything is back after a restart.
    reloaded = SingleWriterCoordinator(SqlitePersistence(tmp_path / "c.sqlite3"))
    await reloaded.start()
    again = reloaded.topic("t")
    assert again is not None and again.topic_id == tid
    p0 = reloaded.partition_offsets(tid, 0)
    assert p0 is not None and p0.high_watermark == 32
    found = reloaded.find_batches(tid, 0, 4, 1 << 30)
    assert [b.base_offset for b in found][:2] == [3, 6]
    assert reloaded.fetch_offsets("g", None) == [CommittedOffset("t", 0, 17, 3, "meta")]
    [outcome] = await reloaded.commit_object("after", 100, [batch(tid, 0, 1)])
    assert outcome.base_offset == 32
    await reloaded.close()


def test_coordinator(tmp_path: Path) -> None:
    asyncio.run(_run(tmp_path))


async def _timestamps(tmp_path: Path) -> None:
    coordinator = SingleWriterCoordinator(SqlitePersistence(tmp_path / "c.sqlite3"))
    await coordinator.start()
    _, topic = await coordinator.create_topic("t", 1, {})
    assert topic is not None
    tid = topic.topic_id
    # max timestamps 1005, 1002 (late), 1010
    for count, max_ts in [(5, 1005), (2, 1002), (10, 1010)]:
        await coordinator.commit_object(
            f"o{max_ts}", 10, [BatchToCommit(tid, 0, 0, 10, count, 1000, max_ts)]
        )
    at = coordinator.batch_at_timestamp(tid, 0, 1003)
    assert at is not None and at.base_offset == 0
    at = coordinator.batch_at_timestamp(tid, 0, 1006)
    assert at is not None and at.base_offset == 7
    assert coordinator.batch_at_timestamp(tid, 0, 1011) is None
    await coordinator.close()


def test_batch_at_timestamp(tmp_path: Path) -> None:
    asyncio.run(_timestamps(tmp_path))
