"""The key compactor against the real writer, an in-memory database and store: a pass
marks its range clean only if every batch it rewrote was still where it read it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

import crc32c
from batch_builder import build_batch

from driftlog.clock import FakeClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest
from driftlog.coordinator.engines.backend import BatchRemoval, BatchRewrite, KeyCleanState
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.service import LocalCoordinator
from driftlog.lifecycle.key_cleaning import policy_for
from driftlog.lifecycle.key_compactor import KeyCompactor
from driftlog.storage.obstore import open_store

COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01"}


def keyed_batch(key: bytes, value: bytes | None) -> bytes:
    """One keyed record (build_batch writes unkeyed ones: a header to put it under)."""
    return _with_record(build_batch([b"v"]), key, value)


def _varint(value: int) -> bytes:
    raw = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        out.append(byte | (0x80 if raw else 0))
        if not raw:
            return bytes(out)


def _with_record(template: bytes, key: bytes, value: bytes | None) -> bytes:
    body = b"\x00" + _varint(0) + _varint(0) + _varint(len(key)) + key
    body += _varint(-1) if value is None else _varint(len(value)) + value
    body += _varint(0)
    record = _varint(len(body)) + body
    out = bytearray(template[:61] + record)
    struct.pack_into(">i", out, 8, len(out) - 12)
    struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def run_pass(skip_rows: bool) -> KeyCleanState | None:
    async def scenario() -> KeyCleanState | None:
        clock = FakeClock()
        backend = MemoryBackend(MemoryDatabase())
        coordinator = LocalCoordinator(backend, clock, holder="a", commit_timeout_s=0)
        await coordinator.start(wait_for_writer_s=5.0)
        _, topic = await coordinator.create_topic("t", 1, COMPACT)
        assert topic is not None
        store = open_store("memory://")
        batches = [keyed_batch(b"K", b"old"), keyed_batch(b"K", None), keyed_batch(b"Z", b"z")]
        await store.put_new("objects/1", batches)
        at, coordinates = 0, []
        for data in batches:
            coordinates.append(BatchToCommit(topic.topic_id, 0, at, len(data), 1, 1, 1))
            at += len(data)
        await coordinator.submit_commit(CommitRequest("objects/1", at, coordinates))

        async def rewrite(
            key: str | None,
            size: int,
            rewrites: Sequence[BatchRewrite],
            removals: Sequence[BatchRemoval],
            state: KeyCleanState | None,
        ) -> int | None:
            changed = await coordinator.writer.rewrite_batches(key, size, rewrites, removals, state)
            # As if object compaction had moved a batch between the read and the swap.
            return None if changed is None else changed - (1 if skip_rows and removals else 0)

        compactor = KeyCompactor(backend, coordinator, store, clock, rewrite)
        policy = policy_for(COMPACT)
        assert policy is not None
        assert await compactor.clean_partition(topic.topic_id, 0, policy)
        state = await backend.key_clean_state(topic.topic_id, 0)
        await coordinator.close()
        return state

    return asyncio.run(scenario())


def test_a_pass_marks_its_range_clean() -> None:
    state = run_pass(skip_rows=False)
    assert state is not None and state.cleaned_offset == 2


def test_a_pass_with_a_moved_batch_does_not_mark_its_range_clean() -> None:
    # Marking it clean would let the old value outlive its tombstone (the next pass maps
    # only the dirty part, so it would never see K's tombstone supersede it).
    assert run_pass(skip_rows=True) is None
