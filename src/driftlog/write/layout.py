"""Packs buffered batches into one object, each partition's data contiguous. No uploads.

Sorting by (topic id, partition) makes each partition one byte range of the
object, so a consumer of one partition reads one range. The sort is stable, so
batches of a partition keep their arrival order, which is their offset order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from driftlog.coordinator.api import BatchToCommit
from driftlog.write.buffer import PendingBatch


@dataclass(frozen=True, slots=True)
class ObjectLayout:
    chunks: list[bytes]  # the object's bytes, in order, not joined (the store writes them)
    size: int
    batches: list[PendingBatch]  # in object order
    coordinates: list[BatchToCommit]  # same order


def lay_out(pending: Sequence[PendingBatch]) -> ObjectLayout:
    ordered = sorted(pending, key=lambda b: (b.topic_id.bytes, b.partition))
    coordinates: list[BatchToCommit] = []
    position = 0
    for batch in ordered:
        header = batch.header
        coordinates.append(
            BatchToCommit(
                topic_id=batch.topic_id,
                partition=batch.partition,
                byte_offset=position,
                byte_length=len(batch.data),
                record_count=header.last_offset_delta + 1,
                base_timestamp_ms=header.base_timestamp_ms,
                max_timestamp_ms=header.max_timestamp_ms,
                producer_id=header.producer_id,
                producer_epoch=header.producer_epoch,
                base_sequence=header.base_sequence,
                attributes=header.attributes,
            )
        )
        position += len(batch.data)
    return ObjectLayout([b.data for b in ordered], position, ordered, coordinates)
