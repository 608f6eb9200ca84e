"""Key compaction of `cleanup.policy=compact` topics: runs `key_cleaning.py`'s rules
against the database and the object store, on the jobs agent (its swaps go to the writer).

A pass over a partition scans the batch rows from the log start to the cleanable end a
page at a time, maps the dirty part's keys (the map is bounded: `map_bytes`), then walks
the log from its start in chunks of about `chunk_bytes`: each batch is read, its
records decoded (with its own codec) and filtered; a batch that lost records is written
again (`rewrite_batch`: same base offset, last offset delta, producer id, epoch, base
sequence and bits) into a new object, a batch left without records is removed (readers
see a gap, as in Kafka).
Each chunk is one swap through the writer (`CommitWriter.rewrite_batches`): one fenced
transaction points the rewritten batches at the new object and deletes the removed rows,
only where a row still names the object it was read from (retention or object
compaction may have moved on meanwhile: then that batch is left for the next pass).
Only when every chunk's swap changed every row it meant to does one more fenced write
store the partition's new cleaned offset and pass history: a range with a batch left
behind is not clean (its superseded records are still there), and stamping it clean
would let an older value outlive its tombstone.

Restartable at any point: a crash before a swap leaves an orphan upload; after it, the
log holds the latest record of every key it held (a removed record always has a later
committed record of its key, below the last stable offset), so a new pass over the same
part changes nothing wrong. Markers are never rewritten or removed.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from driftlog.clock import Clock
from driftlog.coordinator.api import CoordinatorError, PartitionOffsets, TopicInfo
from driftlog.coordinator.core.transactions import AbortedTxn
from driftlog.coordinator.engines.backend import (
    Backend,
    BatchRef,
    BatchRemoval,
    BatchRewrite,
    KeyCleanState,
)
from driftlog.lifecycle.key_cleaning import (
    KEY_MAP_ENTRY_BYTES,
    BatchInfo,
    CleaningHistory,
    KeyCompactionPolicy,
    KeyMap,
    LogScan,
    aborted_in,
    keep_record,
    key_digest,
    policy_for,
)
from driftlog.records.batch import BatchHeader, InvalidBatch
from driftlog.records.control import is_marker_key
from driftlog.records.recordset import Record, decode_records, rewrite_batch
from driftlog.storage.api import ObjectNotFound, ObjectStore, ObjectStoreError
from driftlog.storage.keys import new_object_key

log = logging.getLogger(__name__)

# The writer's swap: (key or None, size, rewrites, removals, state) -> rows changed, or
# None when the upload is too old to commit.
Rewrite = Callable[
    [str | None, int, Sequence[BatchRewrite], Sequence[BatchRemoval], KeyCleanState | None],
    Awaitable[int | None],
]
_PAGE = 5_000


class _Unopenable(Exception):
    """A batch key compaction cannot open (see `KeyCompactor._open`)."""


class PartitionView(Protocol):
    """What the compactor reads of the coordinator's view."""

    def topics(self) -> Sequence[TopicInfo]: ...
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None: ...
    def last_stable_offset(self, topic_id: uuid.UUID, partition: int) -> int | None: ...


@dataclass(frozen=True, slots=True)
class KeyCompactionConfig:
    interval_ms: int = 30_000
    # The key map's memory: about KEY_MAP_ENTRY_BYTES per distinct key of the dirty part.
    map_bytes: int = 64 * 1024 * 1024
    # Bytes of batches read (and at most written) per swap.
    chunk_bytes: int = 16 * 1024 * 1024


@dataclass(slots=True)
class KeyCompactionStats:
    runs: int = 0  # calls of compact_once
    passes: int = 0  # partitions cleaned
    batches_rewritten: int = 0
    batches_removed: int = 0
    records_removed: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    unreadable_batches: int = 0
    errors: int = 0
    last_run_ms: int = 0  # wall clock at the end of the last run (failed partitions or not)


class KeyCompactor:
    def __init__(
        self,
        backend: Backend,
        view: PartitionView,
        store: ObjectStore,
        clock: Clock,
        rewrite: Rewrite,
        config: KeyCompactionConfig | None = None,
    ) -> None:
        self._backend = backend
        self._view = view
        self._store = store
        self._clock = clock
        self._rewrite = rewrite
        self.config = config or KeyCompactionConfig()
        self.stats = KeyCompactionStats()

    async def compact_once(self) -> int:
        """One pass over every compacted partition that needs one; how many were cleaned."""
        self.stats.runs += 1
        cleaned = 0
        for topic in list(self._view.topics()):
            policy = policy_for(topic.configs)
            if policy is None:
                continue
            for partition in range(topic.partition_count):
                try:
                    cleaned += await self.clean_partition(topic.topic_id, partition, policy)
                except (CoordinatorError, ObjectStoreError, ObjectNotFound, ValueError) as e:
                    self.stats.errors += 1
                    log.warning(
                        "key compaction of %s-%d failed (retried next run): %s",
                        topic.name, partition, e,
                    )  # fmt: skip
        self.stats.last_run_ms = self._clock.wall_ms()
        return cleaned

    async def clean_partition(
        self, topic_id: uuid.UUID, partition: int, policy: KeyCompactionPolicy
    ) -> bool:
        offsets = self._view.partition_offsets(topic_id, partition)
        stable = self._view.last_stable_offset(topic_id, partition)
        if offsets is None or stable is None:
            return False
        start, high_watermark = offsets.log_start_offset, offsets.high_watermark
        newest = await self._backend.read_batch_refs(
            topic_id, partition, high_watermark - 1, high_watermark, 1
        )
        if not newest:
            return False
        now_ms = self._clock.wall_ms()
        state = await self._backend.key_clean_state(topic_id, partition)
        history = CleaningHistory(state.passes if state else ())
        cleaned_offset = max(state.cleaned_offset if state else 0, start)
        # One scan of the rows, a page at a time (memory does not grow with the log):
        # where cleaning stops, and whether the partition needs a pass.
        scan = LogScan.start(
            min(stable, newest[0].location.base_offset), cleaned_offset, now_ms, policy
        )
        async for page in self._pages(topic_id, partition, start, scan.end):
            if not all(scan.add(_info(ref)) for ref in page):
                break
        end = scan.end
        if not scan.needs_pass(history, now_ms, policy):
            return False
        self.stats.passes += 1
        aborted = await self._backend.read_aborted(topic_id, partition, start, end)
        key_map = KeyMap(self.config.map_bytes // KEY_MAP_ENTRY_BYTES)
        map_end = await self._map_keys(
            self._chunks(topic_id, partition, cleaned_offset, end), key_map, aborted
        )
        if map_end is None:
            map_end = max(end, cleaned_offset)
        kept_tombstones: list[int] = []
        complete = True
        async for chunk in self._chunks(topic_id, partition, start, map_end):
            complete &= await self._clean_chunk(
                chunk, key_map, aborted, history, now_ms, policy, kept_tombstones, topic_id,
                partition,
            )  # fmt: skip
        if not complete:
            # A batch moved between the read and the swap (object compaction, retention):
            # its superseded records are still there, so the range is not clean. The
            # next pass goes over it again; stamping it clean would let an older value
            # outlive its tombstone.
            log.info("key compaction of %s-%d: a batch moved meanwhile; again next pass",
                     topic_id, partition)  # fmt: skip
            return True
        after = CleaningHistory(history.as_tuples())
        after.after_pass(map_end, now_ms, kept_tombstones)
        state = KeyCleanState(topic_id, partition, map_end, after.as_tuples())
        await self._rewrite(None, 0, [], [], state)
        return True

    async def _pages(
        self, topic_id: uuid.UUID, partition: int, start: int, end: int
    ) -> AsyncIterator[list[BatchRef]]:
        """The batch rows in [start, end), a page at a time."""
        while start < end:
            page = await self._backend.read_batch_refs(topic_id, partition, start, end, _PAGE)
            page = [r for r in page if r.location.last_offset < end]
            if page:
                yield page
            if len(page) < _PAGE:
                return
            start = page[-1].location.last_offset + 1

    async def _chunks(
        self, topic_id: uuid.UUID, partition: int, start: int, end: int
    ) -> AsyncIterator[list[BatchRef]]:
        """The batch rows in [start, end) in chunks of about `chunk_bytes` of batches."""
        chunk: list[BatchRef] = []
        size = 0
        async for page in self._pages(topic_id, partition, start, end):
            for ref in page:
                if chunk and size + ref.location.byte_length > self.config.chunk_bytes:
                    yield chunk
                    chunk, size = [], 0
                chunk.append(ref)
                size += ref.location.byte_length
        if chunk:
            yield chunk

    async def _read(self, refs: Sequence[BatchRef]) -> list[bytes | None]:
        """Each batch's bytes (None for markers, which have none)."""
        by_key: dict[str, list[int]] = {}
        for i, ref in enumerate(refs):
            if not is_marker_key(ref.location.object_key):
                by_key.setdefault(ref.location.object_key, []).append(i)
        out: list[bytes | None] = [None] * len(refs)

        async def read(key: str, indexes: list[int]) -> None:
            ranges = [(refs[i].location.byte_offset,
                       refs[i].location.byte_offset + refs[i].location.byte_length)
                      for i in indexes]  # fmt: skip
            parts = await self._store.get_ranges(key, ranges)
            for i, part in zip(indexes, parts, strict=True):
                out[i] = bytes(part)
                self.stats.bytes_read += len(part)

        await asyncio.gather(*(read(k, v) for k, v in by_key.items()))
        return out

    def _open(self, data: bytes | None, ref: BatchRef) -> tuple[BatchHeader, list[Record]] | None:
        """The batch's header and records; None for a marker (no bytes). `_Unopenable` for a
        batch that cannot be opened (corrupt, or expanding past the bound): cleaning stops
        before it, since its superseded records could not be removed, and a tombstone
        after it removed later would bring an old value back."""
        if data is None:
            return None
        try:
            return decode_records(data)
        except (ValueError, InvalidBatch) as e:
            self.stats.unreadable_batches += 1
            log.warning(
                "key compaction stops at the batch at offset %d of object %s: %s",
                ref.location.base_offset, ref.location.object_key, e,
            )  # fmt: skip
            raise _Unopenable from e

    async def _map_keys(
        self,
        dirty: AsyncIterator[list[BatchRef]],
        key_map: KeyMap,
        aborted: Sequence[AbortedTxn],
    ) -> int | None:
        """Map the dirty part's keys to their latest offsets; the offset the map stops at
        when it fills (a batch boundary), or None when it took everything."""
        async for chunk in dirty:
            for ref, data in zip(chunk, await self._read(chunk), strict=True):
                try:
                    opened = self._open(data, ref)
                except _Unopenable:
                    return ref.location.base_offset  # the pass ends before it
                if opened is None:
                    continue
                header, records = opened
                if header.is_control or (
                    header.is_transactional
                    and aborted_in(aborted, header.producer_id, ref.location.base_offset)
                ):
                    continue
                base = ref.location.base_offset
                keyed = [
                    (key_digest(r.key), base + r.offset_delta) for r in records if r.key is not None
                ]
                new = len({d for d, _ in keyed if key_map.latest(d) is None})
                if key_map.offsets and len(key_map.offsets) + new > key_map.max_entries:
                    return base  # a batch is mapped whole or not at all
                for digest, offset in keyed:
                    key_map.offsets[digest] = offset
        return None

    async def _clean_chunk(
        self,
        chunk: Sequence[BatchRef],
        key_map: KeyMap,
        aborted: Sequence[AbortedTxn],
        history: CleaningHistory,
        now_ms: int,
        policy: KeyCompactionPolicy,
        kept_tombstones: list[int],
        topic_id: uuid.UUID,
        partition: int,
    ) -> bool:
        """Filter one chunk and swap it; False if a batch was not where it was read (then
        the pass must not mark its range clean)."""
        parts: list[bytes] = []
        rewrites: list[BatchRewrite] = []
        removals: list[BatchRemoval] = []
        position = 0
        removed_records = 0
        complete = True
        for ref, data in zip(chunk, await self._read(chunk), strict=True):
            try:
                opened = self._open(data, ref)
            except _Unopenable:
                complete = False  # left as it is: the range is not clean
                continue
            if opened is None:
                continue  # a marker: kept as it is
            header, records = opened
            location = ref.location
            if header.is_control:
                continue
            kept: list[Record] = []
            if not (
                header.is_transactional
                and aborted_in(aborted, header.producer_id, location.base_offset)
            ):
                for record in records:
                    offset = location.base_offset + record.offset_delta
                    digest = key_digest(record.key) if record.key is not None else None
                    if keep_record(offset, digest, record.is_tombstone, key_map, history,
                                   now_ms, policy):  # fmt: skip
                        kept.append(record)
                        if record.is_tombstone:
                            kept_tombstones.append(offset)
            if len(kept) == len(records):
                continue
            removed_records += len(records) - len(kept)
            key = (topic_id, partition, location.last_offset, ref.object_id)
            if not kept:
                removals.append(BatchRemoval(*key))
                continue
            assert data is not None  # opened above
            rewritten = rewrite_batch(data, kept)
            rewrites.append(BatchRewrite(*key, position, len(rewritten)))
            parts.append(rewritten)
            position += len(rewritten)
        if not (rewrites or removals):
            return complete
        object_key = None
        if rewrites:
            object_key = new_object_key(self._clock.wall_ms())
            await self._store.put_new(object_key, parts)
            self.stats.bytes_written += position
        changed = await self._rewrite(object_key, position, rewrites, removals, None)
        if changed is None:
            log.warning("key compaction output %s was too old to commit; an orphan", object_key)
            return False
        self.stats.batches_rewritten += len(rewrites)
        self.stats.batches_removed += len(removals)
        self.stats.records_removed += removed_records
        return complete and changed == len(rewrites) + len(removals)


def _info(ref: BatchRef) -> BatchInfo:
    location = ref.location
    return BatchInfo(
        location.base_offset, location.last_offset, location.byte_length,
        location.max_timestamp_ms,
    )  # fmt: skip
