"""A follower's view and what its agent acknowledged: ListOffsets waits (bounded) until
the writer's stream shows the agent's own acknowledged commits (read your writes)."""

from __future__ import annotations

import asyncio
import uuid

from driftlog.coordinator.api import BatchLocation, TopicInfo
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime.view import CoordinatorView

TOPIC = uuid.UUID(int=7)


def view_with_topic() -> CoordinatorView:
    view = CoordinatorView(MemoryBackend(MemoryDatabase()))
    view.on_topic_put(TopicInfo("t", TOPIC, 1))
    return view


def row(base: int, count: int) -> tuple[uuid.UUID, int, BatchLocation]:
    return (TOPIC, 0, BatchLocation("objects/x", 0, 10, base, base + count - 1, 1, -1))


def high_watermark(view: CoordinatorView) -> int:
    offsets = view.partition_offsets(TOPIC, 0)
    assert offsets is not None
    return offsets.high_watermark


def test_caught_up_waits_for_the_stream_to_show_the_acknowledged_commit() -> None:
    async def scenario() -> None:
        view = view_with_topic()
        view.on_remote_applied([row(0, 3)])
        # The answer to this agent's commit of offsets 3-4 came before the stream did.
        view.note_acknowledged(TOPIC, 0, 5)
        waiting = asyncio.ensure_future(view.caught_up(TOPIC, 0, 10))
        await asyncio.sleep(0.05)
        assert not waiting.done() and high_watermark(view) == 3
        view.on_remote_applied([row(3, 2)])  # the stream catches up
        await asyncio.wait_for(waiting, 1)
        assert high_watermark(view) == 5

    asyncio.run(scenario())


def test_caught_up_gives_up_at_its_bound_and_returns_at_once_with_nothing_owed() -> None:
    async def scenario() -> None:
        view = view_with_topic()
        view.on_remote_applied([row(0, 3)])
        await asyncio.wait_for(view.caught_up(TOPIC, 0, 10), 0.5)  # nothing acknowledged
        view.note_acknowledged(TOPIC, 0, 9)
        view.note_acknowledged(TOPIC, 0, 4)  # an older answer does not lower it
        # The stream never comes: it gives up at its bound (0.2 s; 5 s is a backstop).
        await asyncio.wait_for(view.caught_up(TOPIC, 0, 0.2), 5)
        assert high_watermark(view) == 3

    asyncio.run(scenario())
