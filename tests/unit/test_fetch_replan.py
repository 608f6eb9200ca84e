"""Fetch re-plans partitions whose object was not found: real agent, SQLite, local store.

The race these tests set up is the one a garbage collector and a compactor make
possible: a fetch planned its batches from coordinates, then the batches moved
(compaction's swap through the writer) or were removed (DeleteRecords), and the old
object was deleted before the fetch read it. The agent runs in this process so the
test can act between planning (`fetch._plan`) and reading (`fetch._respond`); data
is produced with confluent-kafka through the agent's socket, and the swap is the
writer's own `relocate`, as the compactor calls it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from kio.schema.errors import ErrorCode
from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.types import TopicName
from kio.static.primitive import i32, i32Timedelta, i64
from services import free_port

from driftlog.agent import Agent
from driftlog.config import AgentConfig
from driftlog.coordinator.api import BatchLocation
from driftlog.coordinator.engines.backend import BatchMove
from driftlog.server import fetch
from driftlog.server.context import RequestContext
from driftlog.server.session import Session
from driftlog.storage.keys import new_object_key


def with_agent(tmp_path: Path, body: Callable[[Agent], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(_with_agent(tmp_path, body), 60))


async def _with_agent(tmp_path: Path, body: Callable[[Agent], Awaitable[None]]) -> None:
    port = free_port()
    config = AgentConfig(
        listen_port=port,
        advertise_port=port,
        data_dir=tmp_path,
        flush_ms=5,
        cache_bytes=0,  # every read goes to the store
    )
    agent = Agent(config)
    await agent.start()
    try:
        await body(agent)
    finally:
        await agent.drain_and_stop()


def produce_blocking(bootstrap: str, topic: str, partition: int, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for value in values:
        producer.produce(topic, value=value, partition=partition)
        assert producer.flush(10) == 0  # one batch (and object) per record


async def setup_topic(agent: Agent, name: str, produced: dict[int, list[bytes]]) -> Any:
    error, topic = await agent.coordinator.create_topic(name, len(produced), {})
    assert error == ErrorCode.none and topic is not None
    bootstrap = f"127.0.0.1:{agent.config.listen_port}"
    for partition, values in produced.items():
        await asyncio.to_thread(produce_blocking, bootstrap, name, partition, values)
    return topic


def context(agent: Agent) -> RequestContext:
    session = Session.open(agent.listeners[0], "127.0.0.1:1")
    return RequestContext(agent, session, 1, 12, 0, "replan-test")


def request(topic: str, partitions: list[int]) -> FetchRequest:
    return FetchRequest(
        max_wait=i32Timedelta.parse(datetime.timedelta(0)),
        min_bytes=i32(1),
        max_bytes=i32(50 << 20),
        topics=(
            FetchTopic(
                topic=TopicName(topic),
                partitions=tuple(
                    FetchPartition(
                        partition=i32(p), fetch_offset=i64(0), partition_max_bytes=i32(1 << 20)
                    )
                    for p in partitions
                ),
            ),
        ),
        forgotten_topics_data=(),
    )


async def respond(agent: Agent, plans: Any) -> dict[int, Any]:
    response = await fetch._respond(context(agent), plans)
    return {p.partition_index: p for p in response.responses[0].partitions}


def planned(plans: Any, partition: int) -> tuple[BatchLocation, ...]:
    [part] = [p for p in plans[0].partitions if p.partition == partition]
    return tuple(part.locations)


def object_file(agent: Agent, key: str) -> Path:
    return agent.config.data_dir / "objects" / key


def test_moved_batches_are_read_from_their_new_object(tmp_path: Path) -> None:
    with_agent(tmp_path, _moved_batches_are_read_from_their_new_object)


async def _moved_batches_are_read_from_their_new_object(agent: Agent) -> None:
    topic = await setup_topic(agent, "moved", {0: [b"value-a", b"value-b"], 1: [b"value-c"]})
    plans, _ = await fetch._plan(context(agent), request("moved", [0, 1]))
    old = planned(plans, 0)
    assert len(old) == 2 and len({loc.object_key for loc in old}) == 2

    # Compaction: both batches copied into one new object, the swap committed by the
    # writer, then the old objects deleted (a collector past its grace period).
    parts = [
        bytes((await agent.store.get_ranges(loc.object_key, [(0, loc.byte_length)]))[0])
        for loc in old
    ]
    assert all(loc.byte_offset == 0 for loc in old)  # one batch per object
    new_key = new_object_key(int(time.time() * 1000))
    await agent.store.put_new(new_key, parts)
    with contextlib.closing(sqlite3.connect(agent.config.sqlite_path)) as db:
        ids = dict(db.execute("SELECT key, object_id FROM objects").fetchall())
    moves = [
        BatchMove(topic.topic_id, 0, old[0].last_offset, ids[old[0].object_key], 0),
        BatchMove(topic.topic_id, 0, old[1].last_offset, ids[old[1].object_key], len(parts[0])),
    ]
    relocated = await agent.coordinator.writer.relocate(new_key, sum(map(len, parts)), moves)
    assert relocated is not None and relocated[1] == 2
    await agent.store.delete_many([loc.object_key for loc in old])

    answers = await respond(agent, plans)
    assert answers[0].error_code == ErrorCode.none
    records = bytes(answers[0].records)
    assert records.find(b"value-a") < records.find(b"value-b") and b"value-a" in records
    assert answers[1].error_code == ErrorCode.none and b"value-c" in bytes(answers[1].records)
    assert agent.fetcher.missing.count == 0


def test_removed_batches_are_out_of_range(tmp_path: Path) -> None:
    with_agent(tmp_path, _removed_batches_are_out_of_range)


async def _removed_batches_are_out_of_range(agent: Agent) -> None:
    topic = await setup_topic(agent, "trimmed", {0: [b"first", b"second"]})
    plans, _ = await fetch._plan(context(agent), request("trimmed", [0]))
    first = planned(plans, 0)[0]
    [(error, low)] = await agent.coordinator.delete_records([(topic.topic_id, 0, 1)])
    assert (error, low) == (ErrorCode.none, 1)
    object_file(agent, first.object_key).unlink()

    answers = await respond(agent, plans)
    assert answers[0].error_code == ErrorCode.offset_out_of_range
    assert answers[0].log_start_offset == 1
    assert agent.fetcher.missing.count == 0


def test_still_referenced_missing_object_is_lost_data(tmp_path: Path) -> None:
    with_agent(tmp_path, _still_referenced_missing_object_is_lost_data)


async def _still_referenced_missing_object_is_lost_data(agent: Agent) -> None:
    await setup_topic(agent, "gone", {0: [b"only"], 1: [b"other"]})
    plans, _ = await fetch._plan(context(agent), request("gone", [0, 1]))
    object_file(agent, planned(plans, 0)[0].object_key).unlink()

    answers = await respond(agent, plans)
    assert answers[0].error_code == ErrorCode.corrupt_message
    assert bytes(answers[0].records) == b""
    assert answers[1].error_code == ErrorCode.none and b"other" in bytes(answers[1].records)
    assert agent.fetcher.missing.count == 1
