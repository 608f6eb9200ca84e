"""Fuzzing a real writer RPC port (`coordinator/runtime/rpc.py`) with random bytes, random and
mutated RPC frames, and mutated handshakes (`coordinator/runtime/peer_auth.py`), each on a
fresh connection over loopback.

A writer agent (`AgentCoordinator` on an in-memory database) serves from a thread of its
own; the examples use blocking sockets. A peer without the cluster secret must get the
server's hello and nothing else, then be disconnected (at once, or when it stops
sending); a mutated handshake that still carries a valid proof must be answered with a
server proof the client accepts. After each batch of examples the writer still serves
an authenticated peer, nothing the fuzzer sent was committed or created, no connection
is left open, and nothing was logged as an error. Last, an authenticated peer sends
mutated frames to a writer of its own: it stays the writer and keeps serving.

The seed is fixed (`fuzzlib.SEED`; override with DRIFTLOG_FUZZ_SEED); scale the number of
examples with DRIFTLOG_FUZZ_SCALE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from fuzz.fuzzlib import SEED, Mutation, mutate, mutations
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from driftlog.clock import SystemClock
from driftlog.coordinator.api import BatchToCommit, CommitRequest, TopicInfo
from driftlog.coordinator.engines.memory import MemoryBackend, MemoryDatabase
from driftlog.coordinator.runtime import peer_auth, rpc
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.peer_auth import (
    CLIENT_PROOF_BYTES,
    NONCE_BYTES,
    SERVER_HELLO_BYTES,
    SERVER_HELLO_MAGIC,
    SERVER_PROOF_BYTES,
    ClientHandshake,
)
from driftlog.coordinator.runtime.service import AgentCoordinator

T = TypeVar("T")
SCALE = float(os.environ.get("DRIFTLOG_FUZZ_SCALE", "1"))
SECRET = b"fuzzed cluster secret"
WRONG_SECRET = b"not the cluster secret"
TOPIC = "fuzz-rpc"
# Names the fuzzer's own messages use; none of them may ever exist.
EVIL_KEY = "fuzz-evil-object"
EVIL_TOPIC = "fuzz-evil-topic"
SOCKET_TIMEOUT_S = 5.0
# Long enough for the examples; short enough that a stuck handshake shows quickly.
HANDSHAKE_TIMEOUT_S = 1.0


def fuzz(examples: int) -> settings:
    return settings(
        database=None,
        deadline=None,
        max_examples=max(1, int(examples * SCALE)),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


class ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RunningWriter:
    """A writer agent serving its RPC on loopback from its own thread and event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.coordinator = AgentCoordinator(
            MemoryBackend(MemoryDatabase()),
            SystemClock(),
            holder="fuzzed",
            rpc_host="127.0.0.1",
            rpc_secret=SECRET,
        )
        self.call(self.coordinator.start(wait_for_writer_s=5.0))
        _, topic = self.call(self.coordinator.create_topic(TOPIC, 2, {}))
        assert topic is not None
        self.topic: TopicInfo = topic
        host, _, port = self.coordinator.writer.address.rpartition(":")
        self.address = (host, int(port))
        self.good_commits = 0

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30.0)

    def close(self) -> None:
        self.call(self.coordinator.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10.0)
        self.loop.close()

    def commit(self, key: str) -> CommitRequest:
        batch = BatchToCommit(self.topic.topic_id, 0, 0, 100, 1, 0, 7)
        return CommitRequest(key, 100, [batch])

    def assert_unharmed(self, errors: ErrorRecords) -> None:
        """Serves an authenticated peer; the fuzzer changed nothing and left nothing open."""
        with self.connect() as sock:
            authenticate(sock, SECRET)
            sock.sendall(messages.encode_commit(1, self.commit(f"good-{self.good_commits}")))
            reply = messages.decode(recv_frame(sock))
            self.good_commits += 1
            outcomes = messages.reply_outcomes(reply)
            assert [(o.error, o.base_offset) for o in outcomes] == [
                (ErrorCode.none, self.good_commits - 1)
            ]
        coordinator = self.coordinator
        assert [t.name for t in coordinator.topics()] == [TOPIC]
        assert coordinator.partition_offsets(self.topic.topic_id, 0) == (0, self.good_commits)
        assert coordinator.partition_offsets(self.topic.topic_id, 1) == (0, 0)
        counts = self.call(coordinator.backend.object_counts())
        assert counts.live_objects == self.good_commits
        assert self.call(coordinator.backend.committed_outcomes([EVIL_KEY])) == {}
        server = coordinator.server
        assert server is not None
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S + 3.0
        while server._connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server._connections, "connections left open"
        assert server._handshakes_pending == 0
        assert not errors.records, [r.getMessage() for r in errors.records]

    def connect(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=SOCKET_TIMEOUT_S)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = messages.LENGTH.unpack(recv_exactly(sock, messages.LENGTH.size))
    return recv_exactly(sock, length)


def recv_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """What the server sends until it closes; True when it reset the connection instead
    (closing with our bytes unread), which may lose what it had sent."""
    data = b""
    try:
        while chunk := sock.recv(4096):  # a server that never closes times out: a failure
            data += chunk
    except ConnectionResetError:
        return data, True
    return data, False


def authenticate(sock: socket.socket, secret: bytes) -> None:
    handshake = ClientHandshake(secret, os.urandom(NONCE_BYTES))
    sock.sendall(handshake.receive_hello(recv_exactly(sock, SERVER_HELLO_BYTES)))
    handshake.receive_proof(recv_exactly(sock, SERVER_PROOF_BYTES))


def send_and_close(sock: socket.socket, payload: bytes) -> tuple[bytes, bool]:
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server sees the end at once, not at its timeout
    except (BrokenPipeError, ConnectionResetError):
        pass  # it already closed (it read enough to refuse)
    return recv_until_closed(sock)


def assert_only_hello(received: bytes, reset: bool) -> None:
    """An unauthenticated peer gets the hello and is closed: no answer, no stream."""
    if reset:
        assert len(received) <= SERVER_HELLO_BYTES
    else:
        assert len(received) == SERVER_HELLO_BYTES
    assert received[: len(SERVER_HELLO_MAGIC)] == SERVER_HELLO_MAGIC[: len(received)]


@pytest.fixture(scope="module")
def writer() -> Iterator[RunningWriter]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rpc, "HANDSHAKE_TIMEOUT_S", HANDSHAKE_TIMEOUT_S)
        running = RunningWriter()
        try:
            yield running
        finally:
            running.close()


@pytest.fixture
def errors() -> Iterator[ErrorRecords]:
    handler = ErrorRecords()
    logger = logging.getLogger()
    logger.addHandler(handler)
    # Refusals are warnings, rate-limited; keep them out of the test's output.
    quiet = logging.getLogger("driftlog.coordinator.runtime.rpc")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield handler
    finally:
        quiet.setLevel(level)
        logger.removeHandler(handler)


def rpc_messages(topic: TopicInfo) -> list[bytes]:
    """Valid frames of every kind a peer sends, naming only things that must not appear."""
    tid = topic.topic_id.hex
    batch = BatchToCommit(topic.topic_id, 1, 0, 100, 5, 0, 7)
    return [
        messages.encode_commit(9, CommitRequest(EVIL_KEY, 100, [batch])),
        messages.encode_commit(9, CommitRequest(EVIL_KEY, 100, [batch], retry=True)),
        messages.encode({"op": "subscribe"}),
        messages.encode(
            {
                "op": "admin",
                "id": 3,
                "action": "create_topic",
                "name": EVIL_TOPIC,
                "partitions": 1,
                "configs": {},
            }
        ),
        messages.encode({"op": "admin", "id": 4, "action": "delete_topic", "name": TOPIC}),
        messages.encode({"op": "delete_records", "id": 5, "partitions": [[tid, 0, 0]]}),
        messages.encode(
            {
                "op": "txn",
                "id": 6,
                "action": "init",
                "transactional_id": "fuzz",
                "timeout_ms": 1000,
                "producer_id": -1,
                "epoch": -1,
            }
        ),
    ]


def test_random_bytes(writer: RunningWriter, errors: ErrorRecords) -> None:
    @fuzz(300)
    @seed(SEED)
    @given(st.binary(max_size=CLIENT_PROOF_BYTES * 3))
    def examples(payload: bytes) -> None:
        with writer.connect() as sock:
            assert_only_hello(*send_and_close(sock, payload))

    examples()
    writer.assert_unharmed(errors)


def test_random_and_mutated_frames_without_handshake(
    writer: RunningWriter, errors: ErrorRecords
) -> None:
    corpus = rpc_messages(writer.topic)

    @fuzz(500)
    @seed(SEED)
    @given(
        st.one_of(
            st.binary(max_size=300).map(lambda body: messages.LENGTH.pack(len(body)) + body),
            st.tuples(st.sampled_from(corpus), mutations()).map(lambda c: mutate(*c)),
            st.lists(st.sampled_from(corpus), min_size=1, max_size=4).map(b"".join),
        )
    )
    def examples(payload: bytes) -> None:
        with writer.connect() as sock:
            assert_only_hello(*send_and_close(sock, payload))

    examples()
    writer.assert_unharmed(errors)


# How a peer answers the server's hello before the fuzzer edits the answer: with a valid
# proof (and an evil commit after it), with another secret's proof, reflecting the hello.
def _valid(hello: bytes) -> bytes:
    return ClientHandshake(SECRET, os.urandom(NONCE_BYTES)).receive_hello(hello)


def _wrong_secret(hello: bytes) -> bytes:
    return ClientHandshake(WRONG_SECRET, os.urandom(NONCE_BYTES)).receive_hello(hello)


def _echoed_nonce(hello: bytes) -> bytes:
    nonce = hello[len(SERVER_HELLO_MAGIC) :]
    return (
        peer_auth.CLIENT_PROOF_MAGIC
        + nonce
        + peer_auth.proof(WRONG_SECRET, peer_auth.CLIENT_LABEL, nonce, nonce)
    )


def _reflected(hello: bytes) -> bytes:
    return (hello * 2)[:CLIENT_PROOF_BYTES]


ANSWERS: dict[str, Callable[[bytes], bytes]] = {
    "valid": _valid,
    "wrong-secret": _wrong_secret,
    "echoed-nonce": _echoed_nonce,
    "reflected": _reflected,
}


def test_mutated_handshakes(writer: RunningWriter, errors: ErrorRecords) -> None:
    evil_commit = rpc_messages(writer.topic)[0]

    @fuzz(500)
    @seed(SEED)
    @given(st.sampled_from(sorted(ANSWERS)), st.booleans(), mutations())
    def examples(answer: str, then_commit: bool, edits: list[Mutation]) -> None:
        with writer.connect() as sock:
            hello = recv_exactly(sock, SERVER_HELLO_BYTES)
            assert hello.startswith(SERVER_HELLO_MAGIC)
            sent = ANSWERS[answer](hello)
            payload = mutate(sent + (evil_commit if then_commit else b""), edits)
            if answer == "valid" and payload[:CLIENT_PROOF_BYTES] == sent:
                # The edits missed the proof: an authenticated peer (it sends nothing more,
                # so that nothing gets committed), answered with the server's proof.
                sock.sendall(sent)
                proof = recv_exactly(sock, SERVER_PROOF_BYTES)
                client = ClientHandshake(SECRET, sent[8 : 8 + NONCE_BYTES], hello[8:])
                client.receive_proof(proof)
                assert send_and_close(sock, b"") == (b"", False)
                return
            received, _ = send_and_close(sock, payload)
            assert received == b"", "an unauthenticated peer got an answer"

    examples()
    writer.assert_unharmed(errors)


def is_duplicate_key_error(record: logging.LogRecord) -> bool:
    """The writer's own error for a commit that re-uses a committed object's key without
    the re-send flag (only an authenticated peer can send one; agents never do)."""
    return record.name == "driftlog.coordinator.runtime.writer" and "exists" in record.getMessage()


def test_authenticated_peer_with_mutated_frames(errors: ErrorRecords) -> None:
    # A writer of its own: what an authenticated peer sends does take effect.
    running = RunningWriter()
    corpus = rpc_messages(running.topic)
    try:

        @fuzz(300)
        @seed(SEED)
        @given(
            st.lists(
                st.tuples(st.sampled_from(corpus), mutations()).map(lambda c: mutate(*c)),
                min_size=1,
                max_size=3,
            ).map(b"".join)
        )
        def examples(payload: bytes) -> None:
            with running.connect() as sock:
                authenticate(sock, SECRET)
                # Answered or refused as the frames deserve; closed once we are done
                # (a connection the server kept open would time out the socket here).
                send_and_close(sock, payload)

        examples()
        # Still the writer, still serving.
        with running.connect() as sock:
            authenticate(sock, SECRET)
            sock.sendall(messages.encode({"op": "subscribe"}))
            assert messages.decode(recv_frame(sock)) == {"op": "subscribed"}
            sock.sendall(messages.encode_commit(1, running.commit("after-fuzzing")))
            while (body := recv_frame(sock))[:1] != b"{" or b'"id"' not in body:
                pass  # stream events before the reply
            outcomes = messages.reply_outcomes(messages.decode(body))
            assert [o.error for o in outcomes] == [ErrorCode.none]
        assert running.coordinator.writer.is_writer
        unexpected = [r.getMessage() for r in errors.records if not is_duplicate_key_error(r)]
        assert not unexpected
    finally:
        running.close()
