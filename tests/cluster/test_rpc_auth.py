"""The writer RPC refuses peers that do not prove they hold the cluster secret
(`coordinator/runtime/peer_auth.py`), over real loopback sockets: agents with the secret commit
through the writer; an agent with another secret, and raw sockets sending garbage, an
unauthenticated commit or subscription, a reflected handshake or nothing at all, are
disconnected without any effect, while the good agent keeps committing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from kio.schema.errors import ErrorCode

from driftlog.clock import SystemClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest, TopicInfo
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime import peer_auth, rpc
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.peer_auth import HandshakeFailed
from driftlog.coordinator.runtime.rpc import authenticate_to_server, read_message
from driftlog.coordinator.runtime.service import AgentCoordinator

SECRET = b"the cluster's secret"
WRONG_SECRET = b"some other cluster's secret"
# How long a peer that says nothing may keep its connection, in these tests.
SHORT_HANDSHAKE_S = 0.5


def agent(database: MemoryDatabase, holder: str, secret: bytes | None) -> AgentCoordinator:
    return AgentCoordinator(
        MemoryBackend(database),
        SystemClock(),
        holder=holder,
        rpc_host="127.0.0.1",
        rpc_secret=secret,
        commit_timeout_s=1.5,
    )


@asynccontextmanager
async def writer_and_follower() -> AsyncIterator[tuple[AgentCoordinator, AgentCoordinator]]:
    """Agent "a" holds the lease; agent "b" (same secret) follows it over the RPC."""
    database = MemoryDatabase()
    writer = agent(database, "a", SECRET)
    await writer.start(wait_for_writer_s=5.0)
    follower = agent(database, "b", SECRET)
    try:
        await follower.start(wait_for_writer_s=5.0)
        assert writer.writer.is_writer
        assert follower.client is not None and follower.client.connected
        yield writer, follower
    finally:
        await follower.close()
        await writer.close()


def commit(topic: TopicInfo, key: str, partition: int = 0) -> CommitRequest:
    return CommitRequest(key, 100, [BatchToCommit(topic.topic_id, partition, 0, 100, 3, 0, 7)])


async def committed_keys(coordinator: AgentCoordinator, keys: list[str]) -> set[str]:
    return set(await coordinator.backend.committed_outcomes(keys))


async def open_rpc(
    coordinator: AgentCoordinator,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, _, port = coordinator.writer.address.rpartition(":")
    return await asyncio.open_connection(host, int(port))


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float = 3.0) -> bytes:
    """Everything the server sent until it closed the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), timeout_s)


async def read_hello(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readexactly(peer_auth.SERVER_HELLO_BYTES), 3.0)


async def assert_good_follower_commits(
    follower: AgentCoordinator, topic: TopicInfo, key: str
) -> None:
    outcomes = await asyncio.wait_for(follower.submit_commit(commit(topic, key)), 5.0)
    assert [o.error for o in outcomes] == [ErrorCode.none]
    assert await committed_keys(follower, [key]) == {key}


def test_agents_with_the_secret_commit_through_the_writer() -> None:
    async def scenario() -> None:
        async with writer_and_follower() as (writer, follower):
            _, topic = await follower.create_topic("t", 2, {})  # an admin call, over the RPC
            assert topic is not None and writer.topic("t") is not None
            first = await follower.submit_commit(commit(topic, "k1"))
            second = await follower.submit_commit(commit(topic, "k2"))
            assert [o.base_offset for o in first + second] == [0, 3]
            # The follower's view is fed by the writer's (authenticated) stream.
            await follower.wait_for_commit([(topic.topic_id, 0)], 5.0)
            assert writer.partition_offsets(topic.topic_id, 0) == (0, 6)

    asyncio.run(scenario())


def test_without_an_explicit_secret_agents_use_the_databases() -> None:
    async def scenario() -> None:
        database = MemoryDatabase()
        writer = agent(database, "a", None)
        await writer.start(wait_for_writer_s=5.0)
        follower = agent(database, "b", None)
        try:
            await follower.start(wait_for_writer_s=5.0)
            assert follower.client is not None and follower.client.connected
            _, topic = await follower.create_topic("t", 1, {})
            assert topic is not None
            await assert_good_follower_commits(follower, topic, "k")
            # The secret both took is the cluster's, from the database: a peer that
            # knows it authenticates by hand.
            shared = await writer.backend.cluster_secret()
            reader, sock = await open_rpc(writer)
            await authenticate_to_server(reader, sock, shared)
            sock.close()
            reader, sock = await open_rpc(writer)
            with pytest.raises(HandshakeFailed):
                await authenticate_to_server(reader, sock, SECRET)
            sock.close()
        finally:
            await follower.close()
            await writer.close()

    asyncio.run(scenario())


def test_agent_with_another_secret_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="driftlog.coordinator.runtime.rpc")

    async def scenario() -> None:
        database = MemoryDatabase()
        writer = agent(database, "a", SECRET)
        await writer.start(wait_for_writer_s=5.0)
        stranger = agent(database, "c", WRONG_SECRET)
        try:
            _, topic = await writer.create_topic("t", 1, {})
            assert topic is not None
            await stranger.start(wait_for_writer_s=1.0)
            assert stranger.client is not None and not stranger.client.connected
            assert not stranger.has_writer
            with pytest.raises(Exception, match="writer"):
                await stranger.submit_commit(commit(topic, "from-stranger"))
            assert await committed_keys(writer, ["from-stranger"]) == set()
            assert writer.partition_offsets(topic.topic_id, 0) == (0, 0)
            # A good agent joining now is served as before.
            follower = agent(database, "b", SECRET)
            await follower.start(wait_for_writer_s=5.0)
            try:
                await assert_good_follower_commits(follower, topic, "from-follower")
            finally:
                await follower.close()
        finally:
            await stranger.close()
            await writer.close()

    asyncio.run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused peer" in r.getMessage()]
    assert any("127.0.0.1" in line and "wrong client proof" in line for line in refusals)
    # The stranger says why it cannot follow the writer.
    assert any("during authentication" in r.getMessage() for r in caplog.records)


def test_unauthenticated_sockets_are_disconnected_without_effect(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", SHORT_HANDSHAKE_S)
    caplog.set_level(logging.WARNING, logger="driftlog.coordinator.runtime.rpc")

    async def scenario() -> None:
        async with writer_and_follower() as (writer, follower):
            _, topic = await writer.create_topic("t", 1, {})
            assert topic is not None
            await assert_good_follower_commits(follower, topic, "before")
            before = writer.partition_offsets(topic.topic_id, 0)
            assert before is not None

            # A valid commit frame, but no handshake: the server reads it as a (wrong)
            # client proof and closes; nothing is committed, nothing answered.
            reader, sock = await open_rpc(writer)
            sock.write(messages.encode_commit(7, commit(topic, "evil")))
            sent = await closed_by_server(reader)
            assert sent == sent[: peer_auth.SERVER_HELLO_BYTES]  # the hello, nothing else
            assert sent.startswith(peer_auth.SERVER_HELLO_MAGIC)

            # A subscription without a handshake gets no stream.
            reader, sock = await open_rpc(writer)
            sock.write(messages.encode({"op": "subscribe"}).ljust(200, b" "))
            assert len(await closed_by_server(reader)) == peer_auth.SERVER_HELLO_BYTES

            # Garbage, longer than any handshake message.
            reader, sock = await open_rpc(writer)
            sock.write(bytes(range(256)) * 64)
            assert len(await closed_by_server(reader)) == peer_auth.SERVER_HELLO_BYTES

            # The server's own hello sent back (a reflection attempt).
            reader, sock = await open_rpc(writer)
            hello = await read_hello(reader)
            sock.write(hello + bytes(peer_auth.CLIENT_PROOF_BYTES - len(hello)))
            assert await closed_by_server(reader) == b""

            # A well-formed answer with a proof made from the wrong secret, then a commit.
            reader, sock = await open_rpc(writer)
            hello = await read_hello(reader)
            impostor = peer_auth.ClientHandshake(WRONG_SECRET, bytes(peer_auth.NONCE_BYTES))
            sock.write(impostor.receive_hello(hello))
            sock.write(messages.encode_commit(8, commit(topic, "evil")))
            assert await closed_by_server(reader) == b""

            # A handshake cut short, and a peer that says nothing: closed after the
            # handshake timeout, while the good follower keeps committing meanwhile.
            cut_reader, cut = await open_rpc(writer)
            cut.write(b"DLRPC/1C" + bytes(10))
            silent_reader, _silent = await open_rpc(writer)
            await assert_good_follower_commits(follower, topic, "meanwhile")
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert len(await closed_by_server(silent_reader)) == peer_auth.SERVER_HELLO_BYTES
            assert len(await closed_by_server(cut_reader)) == peer_auth.SERVER_HELLO_BYTES
            assert loop.time() - started < SHORT_HANDSHAKE_S + 1.0

            assert await committed_keys(writer, ["evil"]) == set()
            assert writer.partition_offsets(topic.topic_id, 0) == (0, before[1] + 3)
            await assert_good_follower_commits(follower, topic, "after")
            assert writer.server is not None

    asyncio.run(scenario())
    refusals = [r.getMessage() for r in caplog.records if "refused peer" in r.getMessage()]
    assert refusals and all("127.0.0.1" in line for line in refusals)
    assert any("no valid handshake within" in line for line in refusals)


def test_client_refuses_a_server_without_the_secret() -> None:
    async def scenario() -> None:
        database = MemoryDatabase()
        other = agent(database, "a", WRONG_SECRET)
        await other.start(wait_for_writer_s=5.0)
        try:
            reader, sock = await open_rpc(other)
            with pytest.raises(HandshakeFailed, match="during authentication"):
                await authenticate_to_server(reader, sock, SECRET)
            sock.close()
        finally:
            await other.close()

        # A fake writer that reflects the client's proof as its own.
        async def reflect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(peer_auth.SERVER_HELLO_MAGIC + bytes(range(peer_auth.NONCE_BYTES)))
            answer = await reader.readexactly(peer_auth.CLIENT_PROOF_BYTES)
            writer.write(peer_auth.SERVER_PROOF_MAGIC + answer[-peer_auth.PROOF_BYTES :])
            await reader.read()

        fake = await asyncio.start_server(reflect, "127.0.0.1", 0)
        port = fake.sockets[0].getsockname()[1]
        try:
            reader, sock = await asyncio.open_connection("127.0.0.1", port)
            with pytest.raises(HandshakeFailed, match="wrong server proof"):
                await authenticate_to_server(reader, sock, SECRET)
            sock.close()
        finally:
            fake.close()

    asyncio.run(scenario())


def test_pending_handshakes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", SHORT_HANDSHAKE_S)
    monkeypatch.setattr(rpc, "MAX_PENDING_HANDSHAKES", 3)

    async def scenario() -> None:
        async with writer_and_follower() as (writer, follower):
            _, topic = await writer.create_topic("t", 1, {})
            assert topic is not None
            idle = [await open_rpc(writer) for _ in range(3)]
            for reader, _ in idle:  # each got its hello: all three are authenticating
                await read_hello(reader)
            reader, _ = await open_rpc(writer)
            assert await closed_by_server(reader, timeout_s=SHORT_HANDSHAKE_S / 2) == b""
            # Once they time out, a good peer authenticates again.
            for reader, _ in idle:
                assert await closed_by_server(reader) == b""
            reader, sock = await open_rpc(writer)
            await authenticate_to_server(reader, sock, SECRET)
            sock.write(messages.encode({"op": "subscribe"}))
            assert await read_message(reader) == {"op": "subscribed"}
            sock.close()
            await assert_good_follower_commits(follower, topic, "still")

    asyncio.run(scenario())
