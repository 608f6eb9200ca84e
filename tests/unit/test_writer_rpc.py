"""The writer RPC over real sockets: binary commits answered, the APPLIED stream decoded,
and a malformed frame closing only its own connection."""

from __future__ import annotations

import asyncio

from driftlog.clock import SystemClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.rpc import authenticate_to_server, read_body, read_message
from driftlog.coordinator.runtime.service import AgentCoordinator

SECRET = b"test cluster secret"


def test_commits_stream_and_malformed_frames() -> None:
    async def scenario() -> None:
        coordinator = AgentCoordinator(
            MemoryBackend(MemoryDatabase()),
            SystemClock(),
            holder="a",
            rpc_host="127.0.0.1",
            rpc_secret=SECRET,
        )
        await coordinator.start(wait_for_writer_s=5.0)
        try:
            _, topic = await coordinator.create_topic("t", 4, {})
            assert topic is not None
            host, _, port = coordinator.writer.address.rpartition(":")
            stream, stream_writer = await asyncio.open_connection(host, int(port))
            await authenticate_to_server(stream, stream_writer, SECRET)
            stream_writer.write(messages.encode({"op": "subscribe"}))
            assert (await read_message(stream)) == {"op": "subscribed"}

            reader, writer = await asyncio.open_connection(host, int(port))
            await authenticate_to_server(reader, writer, SECRET)
            batches = [BatchToCommit(topic.topic_id, p, 100 * p, 100, 3, 0, 7) for p in (0, 2)]
            writer.write(messages.encode_commit(41, CommitRequest("k1", 300, batches)))
            reply = await read_message(reader)
            assert reply["id"] == 41
            assert [o.base_offset for o in messages.reply_outcomes(reply)] == [0, 0]
            applied = messages.decode_applied(await read_body(stream))
            assert [
                (p, loc.object_key, loc.base_offset, loc.last_offset) for _, p, loc in applied
            ] == [
                (0, "k1", 0, 2),
                (2, "k1", 0, 2),
            ]

            # A commit whose batch count does not match its bytes: that connection closes.
            bad = messages.encode_commit(42, CommitRequest("k2", 300, batches))[:-5]
            bad = messages.LENGTH.pack(len(bad) - 4) + bad[4:]
            writer.write(bad)
            assert await reader.read() == b""
            # The writer still serves the others.
            reader, writer = await asyncio.open_connection(host, int(port))
            await authenticate_to_server(reader, writer, SECRET)
            writer.write(messages.encode_commit(43, CommitRequest("k3", 300, batches[:1])))
            reply = await read_message(reader)
            assert [o.base_offset for o in messages.reply_outcomes(reply)] == [3]
            writer.close()
            stream_writer.close()
        finally:
            await coordinator.close()

    asyncio.run(scenario())
