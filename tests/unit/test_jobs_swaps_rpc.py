"""The background jobs' swaps from an agent that is not the writer (roles): compaction's
`relocate` and key compaction's `rewrite_batches` travel over the writer RPC, real
sockets, and an agent without the writer role never takes the lease."""

from __future__ import annotations

import asyncio
import uuid

from driftlog.clock import SystemClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest
from driftlog.coordinator.engines.backend import (
    BatchMove,
    BatchRemoval,
    BatchRewrite,
    KeyCleanState,
    NewObject,
)
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.service import AgentCoordinator
from driftlog.storage.keys import new_object_key

SECRET = b"test cluster secret"
LEASE_MS = 600


def coordinator(db: MemoryDatabase, holder: str, *, candidate: bool) -> AgentCoordinator:
    return AgentCoordinator(
        MemoryBackend(db),
        SystemClock(),
        holder=holder,
        rpc_host="127.0.0.1",
        rpc_secret=SECRET,
        lease_ms=LEASE_MS,
        max_commit_age_ms=60_000,
        writer_candidate=candidate,
    )


def test_swap_messages_round_trip() -> None:
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    moves = [BatchMove(t1, 0, 9, 3, 0), BatchMove(t2, 1, 4, 5, 120)]
    key = new_object_key(1_000)
    message = messages.decode(messages.encode(messages.relocate_request(key, 240, moves, 2))[4:])
    assert messages.relocate_from(message) == (key, 240, moves, 2)
    stored = (NewObject(7, key, 240, 1_500, 2), 2)
    reply = messages.decode(messages.encode(messages.relocate_reply(1, stored))[4:])
    assert messages.relocated_from(reply) == stored
    assert messages.relocated_from(messages.relocate_reply(1, None)) is None

    rewrites = [BatchRewrite(t2, 0, 12, 4, 0, 80)]
    removals = [BatchRemoval(t1, 3, 2, 4)]
    state = KeyCleanState(t1, 3, 13, ((13, 1_000, 0), (20, 2_000, 1)))
    cases: list[tuple[str | None, int, list[BatchRewrite], list[BatchRemoval], KeyCleanState]] = [
        (key, 80, rewrites, removals, state),
        (None, 0, [], [], state),
    ]
    for args in cases:
        message = messages.decode(messages.encode(messages.rewrite_request(*args))[4:])
        assert messages.rewrite_from(message) == args
    assert messages.rewritten_from(messages.rewrite_reply(1, None)) is None
    assert messages.rewritten_from(messages.rewrite_reply(1, 3)) == 3


def test_a_jobs_agent_that_is_not_the_writer_swaps_over_the_rpc() -> None:
    async def scenario() -> None:
        db = MemoryDatabase()
        writer = coordinator(db, "w", candidate=True)
        await writer.start(wait_for_writer_s=5.0)
        jobs = coordinator(db, "j", candidate=False)
        await jobs.start(wait_for_writer_s=5.0)
        try:
            assert writer.writer.is_writer and not jobs.writer.is_writer
            assert jobs.has_writer  # follows the writer over the RPC
            _, topic = await jobs.create_topic("t", 2, {})
            assert topic is not None
            tid = topic.topic_id
            for n in range(2):
                batches = [BatchToCommit(tid, p, 100 * p, 100, 3, 0, 7) for p in (0, 1)]
                await jobs.submit_commit(CommitRequest(f"objects/k{n}", 200, batches))
            backend = jobs.backend
            sources = await backend.compaction_candidates(2**62, 2**30, 10)
            assert len(sources) == 2
            live = await backend.batches_in_objects([o.object_id for o in sources])
            moves = [
                BatchMove(b.topic_id, b.partition, b.last_offset, b.object_id, 100 * i)
                for i, b in enumerate(live)
            ]
            key = new_object_key(SystemClock().wall_ms())
            moved = await jobs.relocate(key, 100 * len(moves), moves, 1)
            assert moved is not None
            new_object, count = moved
            assert (new_object.key, new_object.level, count) == (key, 1, 4)
            after = await backend.batches_in_objects([new_object.object_id])
            assert [b.byte_offset for b in after] == [m.byte_offset for m in moves]

            # Key compaction: one batch rewritten smaller, one removed, then the state.
            first, second = after[0], after[1]
            key2 = new_object_key(SystemClock().wall_ms())
            rewrite = BatchRewrite(first.topic_id, first.partition, first.last_offset,
                                   new_object.object_id, 0, 50)  # fmt: skip
            removal = BatchRemoval(second.topic_id, second.partition, second.last_offset,
                                   new_object.object_id)  # fmt: skip
            assert await jobs.rewrite_batches(key2, 50, [rewrite], [removal], None) == 2
            state = KeyCleanState(first.topic_id, first.partition, 3, ((3, 1_000, 0),))
            assert await jobs.rewrite_batches(None, 0, [], [], state) is not None
            assert await backend.key_clean_state(first.topic_id, first.partition) == state
            # An upload too old to commit (the collector may take it for an orphan).
            assert await jobs.relocate(new_object_key(1_000), 10, moves[3:], 1) is None

            # The writer stops: the agent without the writer role never takes the lease.
            await writer.close()
            await asyncio.sleep(3 * LEASE_MS / 1000)
            assert not jobs.writer.is_writer and not jobs.has_writer
        finally:
            await jobs.close()
            if writer.writer.is_writer:
                await writer.close()

    asyncio.run(scenario())
