"""The write pipeline against a fault-injecting store: retries, failures, no gaps, FIFO room."""

from __future__ import annotations

import asyncio
from pathlib import Path

from batch_builder import build_batch
from kio.schema.errors import ErrorCode

from driftlog.clock import SYSTEM_CLOCK
from driftlog.coordinator.engines.sqlite import SqliteBackend
from driftlog.coordinator.runtime.service import LocalCoordinator
from driftlog.records.batch import parse_header
from driftlog.storage.faulty import FaultConfig, FaultyObjectStore
from driftlog.storage.obstore import open_store
from driftlog.write.pipeline import WritePipeline


async def _run(tmp_path: Path) -> None:
    coordinator = LocalCoordinator(SqliteBackend(tmp_path / "c.sqlite3"), SYSTEM_CLOCK, holder="t")
    await coordinator.start(wait_for_writer_s=5)
    _, topic = await coordinator.create_topic("t", 1, {})
    assert topic is not None
    inner = open_store("memory://")
    batch = build_batch([b"x"])
    header = parse_header(batch)

    async def produce(store: FaultyObjectStore, max_pending: int = 1 << 20) -> ErrorCode | int:
        pipeline = WritePipeline(store, coordinator, flush_bytes=1, flush_age_ms=1,
                                 max_pending_bytes=max_pending)  # fmt: skip
        await pipeline.reserve(len(batch))
        outcome = await pipeline.append(topic.topic_id, 0, batch, header)
        return outcome.base_offset if outcome.error == ErrorCode.none else outcome.error

    # Every acknowledgement of a PUT is lost: the retry finds the object there.
    lost_acks = FaultyObjectStore(inner, FaultConfig(put_lost_ack=1.0))
    assert await produce(lost_acks) == 0
    # Every PUT fails: after the retries the producer gets a retriable error...
    failing = FaultyObjectStore(inner, FaultConfig(put_error=1.0))
    assert await produce(failing) == ErrorCode.kafka_storage_error
    assert failing.injected == 3
    # ...and no offset was used up.
    healthy = FaultyObjectStore(inner, FaultConfig())
    assert await produce(healthy) == 1

    # Room is first-in first-out: a request too big for the room waits for a flush,
    # and one arriving after it waits behind it even though it would fit.
    pipeline = WritePipeline(healthy, coordinator, flush_bytes=10**9, flush_age_ms=50,
                             max_pending_bytes=len(batch) * 2)  # fmt: skip
    order: list[str] = []
    await pipeline.reserve(len(batch) * 2)
    first = pipeline.append(topic.topic_id, 0, batch, header)
    pipeline.append(topic.topic_id, 0, batch, header)

    async def waiting(name: str, batches: int) -> None:
        await pipeline.reserve(len(batch) * batches)
        order.append(name)
        for _ in range(batches):
            pipeline.append(topic.topic_id, 0, batch, header)

    big = asyncio.create_task(waiting("big", 2))
    await asyncio.sleep(0)
    small = asyncio.create_task(waiting("small", 1))
    await asyncio.sleep(0)
    assert order == []
    assert (await first).base_offset == 2
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert order == ["big", "small"]
    await pipeline.drain()
    await coordinator.close()


def test_pipeline_with_faults(tmp_path: Path) -> None:
    asyncio.run(_run(tmp_path))
