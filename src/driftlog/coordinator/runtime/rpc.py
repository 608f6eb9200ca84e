"""The writer RPC over TCP: agents send commits and topic changes to the lease holder,
and the lease holder streams what became durable back to every agent.

Messages are in `rpc_messages.py`. Each agent serves the RPC (`WriterServer`) on
its own address, which it publishes in the lease row when it takes the lease;
while it is not the writer it answers `not_writer`. Every agent runs a
`WriterClient` that follows the lease: it connects to the holder's address,
subscribes to its stream (feeding the local view), and carries requests.
The writer pings its subscribers every `PING_INTERVAL_S`; a client that hears nothing
for `STREAM_SILENCE_S` drops the connection and connects again, since a link whose
packets vanish is not seen by TCP for minutes. A client also measures how long the
writer, while alive (its lease keeps being renewed), has not been heard (`silent_s`):
the agent steps aside when that passes the agent timeout (cluster/membership.py).
A broken connection fails the requests in flight with `CoordinatorUnavailable`;
the caller re-sends them, which is safe because commits are idempotent by
object key. After (re)subscribing, the client resynchronizes its view from the
database, so nothing committed while it was disconnected is missed.

Peers authenticate before anything else (`peer_auth.py`): on every connection the
server sends a fresh nonce, the client answers with its own nonce and an HMAC-SHA256
proof of the cluster secret over both, and the server answers with its proof, so each
side knows the other holds the secret. Each step reads a fixed number of bytes within
`HANDSHAKE_TIMEOUT_S`; a peer that fails closes only its own connection, with a
rate-limited warning naming its address, before the server reads any RPC frame from it.
At most `MAX_PENDING_HANDSHAKES` connections may be authenticating at once (more are
closed at once), so unauthenticated peers cannot hold the agent's sockets.

Other components of the agent share the authenticated port for their own binary frames
(`WriterServer.add_frame_handler`: the zone cache's peer reads, `read/zone/messages.py`),
told apart by their first byte; this package knows nothing of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    CoordinatorUnavailable,
    NotWriter,
    TopicInfo,
)
from driftlog.coordinator.core.sequencer import PartitionKey, SequencedObject, SequencerSnapshot
from driftlog.coordinator.core.transactions import TxnEnd
from driftlog.coordinator.engines.backend import Backend, LogStart
from driftlog.coordinator.runtime import peer_auth
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.peer_auth import HANDSHAKE_TIMEOUT_S, HandshakeFailed, RefusalLog
from driftlog.coordinator.runtime.rpc_messages import Message, ProtocolError
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import CommitWriter

log = logging.getLogger(__name__)

# Commits whose batches are kept (as received) until the stream forwards them.
MAX_RAW_BATCHES_KEPT = 100_000
# A subscriber that lets this much pile up unread is dropped (it resynchronizes).
MAX_SUBSCRIBER_BACKLOG_BYTES = 256 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
RECONNECT_BACKOFF_S = 0.2
# How often a follower re-reads the lease: a writer that hangs (a pause, a frozen VM)
# keeps its TCP connections open, so followers leave it when the lease moves on.
LEASE_CHECK_S = 0.25
# The writer pings its stream's subscribers this often (other frames count as well).
PING_INTERVAL_S = 0.5
# A follower that hears nothing from the writer for this long reconnects. Also the
# margin by which the lease must have been renewed after the writer's last word for
# the follower to count as cut off from a live writer: a writer that died cannot
# have renewed it that long after its last ping.
STREAM_SILENCE_S = 2.5
# Connections still authenticating at once: the agents are few, and each one retries.
MAX_PENDING_HANDSHAKES = 64
_COMMIT_TAG = bytes([messages.COMMIT])
# A frame for another component: its body and the connection to answer on. It runs in
# the connection's read loop, so it must not block (spawn what waits); a ProtocolError
# closes that connection only.
FrameHandler = Callable[[bytes, asyncio.StreamWriter], None]
_APPLIED_TAG = bytes([messages.APPLIED])
_PING_FRAME = messages.encode({"op": "ping"})


async def read_body(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(messages.LENGTH.size)
    (length,) = messages.LENGTH.unpack(header)
    if length > messages.MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {length} bytes exceeds {messages.MAX_FRAME_BYTES}")
    return await reader.readexactly(length)


async def read_message(reader: asyncio.StreamReader) -> Message:
    return messages.decode(await read_body(reader))


async def authenticate_to_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: bytes
) -> None:
    """The client's side of the handshake (see `peer_auth`), within `HANDSHAKE_TIMEOUT_S`;
    raises `HandshakeFailed` unless both sides proved they hold `secret`."""
    handshake = peer_auth.ClientHandshake(secret, secrets.token_bytes(peer_auth.NONCE_BYTES))
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            hello = await reader.readexactly(peer_auth.SERVER_HELLO_BYTES)
            writer.write(handshake.receive_hello(hello))
            handshake.receive_proof(await reader.readexactly(peer_auth.SERVER_PROOF_BYTES))
    except asyncio.IncompleteReadError as e:
        # The server closes without a word when our proof is wrong.
        raise HandshakeFailed(
            "the writer closed the connection during authentication (a different cluster secret?)"
        ) from e
    except TimeoutError as e:
        raise HandshakeFailed("the writer did not finish authentication in time") from e


class WriterServer:
    """The writer side: serves requests when this agent holds the lease, streams events."""

    def __init__(
        self,
        writer: CommitWriter,
        host: str,
        port: int = 0,
        advertise_host: str = "",
        *,
        secret: bytes,
        advertise_address: str = "",
    ) -> None:
        self._secret = peer_auth.check_secret(secret)
        self._refusals = RefusalLog()
        self._handshakes_pending = 0
        self._writer = writer
        self._host = host
        self._port = port
        self._advertise_host = advertise_host or host
        # HOST:PORT published instead (something relays the port to this one).
        self._advertise_address = advertise_address
        self._server: asyncio.Server | None = None
        self._subscribers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._raw_batches: dict[str, bytes] = {}
        self._pinger: asyncio.Task[None] | None = None
        self._frame_handlers: dict[int, FrameHandler] = {}

    def add_frame_handler(self, tags: Iterable[int], handler: FrameHandler) -> None:
        """Send authenticated frames whose first byte is one of `tags` to `handler`."""
        for tag in tags:
            if tag in (messages.COMMIT, messages.APPLIED, ord("{")) or tag in self._frame_handlers:
                raise ValueError(f"frame tag {tag:#x} is taken")
            self._frame_handlers[tag] = handler

    async def start(self) -> str:
        """Listen; returns the address to publish (host:port)."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self._pinger = asyncio.create_task(self._ping_loop(), name="writer-rpc-ping")
        port = self._server.sockets[0].getsockname()[1]
        return self._advertise_address or f"{self._advertise_host}:{port}"

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        for task in list(self._tasks):
            task.cancel()

    # Events from the writer (a WriterListener) -------------------------------------
    def on_applied(self, objects: Sequence[SequencedObject]) -> None:
        raw = self._raw_batches
        if self._subscribers:
            # Transactions opened hold the stable offset back before their data shows;
            # markers show before the transactions they end let go (view.on_applied).
            opens = [o for obj in objects if obj.txn_opens for o in obj.txn_opens]
            if opens:
                self._broadcast(messages.txn_opens_message(opens))
            self._broadcast_frame(messages.applied_frame(objects, raw))
            closes = [c for obj in objects if obj.txn_closes for c in obj.txn_closes]
            if closes:
                self._broadcast(messages.txn_closes_message(closes))
        for o in objects:
            raw.pop(o.object_key, None)

    def on_reloaded(self, snapshot: SequencerSnapshot) -> None:
        self._broadcast({"op": "reloaded"})

    def on_topic_put(self, topic: TopicInfo) -> None:
        self._broadcast({"op": "topic", "topic": messages.topic_value(topic)})

    def on_topic_dropped(self, topic: TopicInfo) -> None:
        self._broadcast({"op": "topic_dropped", "topic": messages.topic_value(topic)})

    def on_log_starts(self, starts: Sequence[LogStart]) -> None:
        self._broadcast({"op": "log_starts", "partitions": [[t.hex, p, o] for t, p, o in starts]})

    def on_relocated(self, partitions: Sequence[PartitionKey]) -> None:
        self._broadcast({"op": "relocated", "partitions": [[t.hex, p] for t, p in partitions]})

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL_S)
            if self._subscribers:
                self._broadcast_frame(_PING_FRAME)

    def _broadcast(self, message: Message) -> None:
        self._broadcast_frame(messages.encode(message))

    def _broadcast_frame(self, frame: bytes) -> None:
        for subscriber in list(self._subscribers):
            transport = subscriber.transport
            if transport.is_closing():
                self._subscribers.discard(subscriber)  # gone; its reader cleans up
                continue
            if transport.get_write_buffer_size() > MAX_SUBSCRIBER_BACKLOG_BYTES:
                log.warning("dropping a subscriber that stopped reading")
                self._subscribers.discard(subscriber)
                subscriber.close()
                continue
            try:
                subscriber.write(frame)
            except (RuntimeError, ConnectionError):
                self._subscribers.discard(subscriber)

    # Connections -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            if not await self._authenticate(reader, writer):
                return
            while True:
                body = await read_body(reader)
                if body[:1] == _COMMIT_TAG:
                    self._commit(body, writer)
                    continue
                handler = self._frame_handlers.get(body[0]) if body else None
                if handler is not None:
                    handler(body, writer)
                    continue
                message = messages.decode(body)
                op = message.get("op")
                if op == "admin":
                    self._spawn(self._admin(message, writer))
                elif op == "delete_records":
                    self._spawn(self._delete_records(message, writer))
                elif op == "txn":
                    self._spawn(self._txn(message, writer))
                elif op in ("relocate", "rewrite_batches"):
                    self._spawn(self._swap(message, writer))
                elif op == "subscribe":
                    self._subscribers.add(writer)
                    # From here on every event reaches this subscriber, after this.
                    writer.write(messages.encode({"op": "subscribed"}))
                else:
                    raise ProtocolError(f"unknown op {op!r}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolError as e:
            log.warning("closing writer RPC connection: %s", e)
        finally:
            self._subscribers.discard(writer)
            self._connections.discard(writer)
            writer.close()

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """The server's side of the handshake: True once the peer proved it holds the
        secret; False (logged) for anything else, and the caller closes."""
        if self._handshakes_pending >= MAX_PENDING_HANDSHAKES:
            self._refused(writer, "too many connections authenticating at once")
            return False
        self._handshakes_pending += 1
        handshake = peer_auth.ServerHandshake(
            self._secret, secrets.token_bytes(peer_auth.NONCE_BYTES)
        )
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                writer.write(handshake.hello())
                answer = await reader.readexactly(peer_auth.CLIENT_PROOF_BYTES)
                writer.write(handshake.receive_proof(answer))
            return True
        except HandshakeFailed as e:
            self._refused(writer, str(e))
        except TimeoutError:
            self._refused(writer, f"no valid handshake within {HANDSHAKE_TIMEOUT_S:g}s")
        except asyncio.IncompleteReadError as e:
            self._refused(writer, f"closed after {len(e.partial)} bytes of its handshake")
        except OSError as e:  # a reset, mostly
            self._refused(writer, repr(e))
        finally:
            self._handshakes_pending -= 1
        return False

    def _refused(self, writer: asyncio.StreamWriter, reason: str) -> None:
        unlogged = self._refusals.admit(asyncio.get_running_loop().time())
        if unlogged is not None:
            more = f" ({unlogged} more refusals not logged)" if unlogged else ""
            log.warning(
                "writer RPC: refused peer %s: %s%s", writer.get_extra_info("peername"), reason, more
            )

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _commit(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        request_id, request, raw = messages.decode_commit(body)
        if self._subscribers:
            # Forwarded as is in the stream; dropped when the object is applied (or
            # bounded, should it never be).
            if len(self._raw_batches) >= MAX_RAW_BATCHES_KEPT:
                self._raw_batches.clear()
            self._raw_batches[request.object_key] = raw
        # Submitted now, in arrival order: the writer commits in submission order.
        # Answered from a callback: a task per commit would cost more than the commit.
        future = self._writer.submit(request)
        future.add_done_callback(functools.partial(_answer_commit, request_id, writer))

    async def _admin(self, message: Message, writer: asyncio.StreamWriter) -> None:
        request_id = int(message.get("id", -1))
        try:
            error, topic = await self._admin_action(message)
            reply = messages.admin_reply(request_id, error, topic)
        except CoordinatorError as e:
            reply = messages.error_reply(request_id, e)
        except (KeyError, TypeError, ValueError) as e:
            reply = messages.error_reply(request_id, CoordinatorUnavailable(f"bad admin: {e!r}"))
        if not writer.is_closing():
            writer.write(messages.encode(reply))

    async def _admin_action(self, message: Message) -> tuple[ErrorCode, TopicInfo | None]:
        action = message["action"]
        name = str(message["name"])
        w = self._writer
        if action == "create_topic":
            return await w.create_topic(name, int(message["partitions"]), message["configs"])
        if action == "delete_topic":
            return await w.delete_topic(name), None
        if action == "create_partitions":
            return await w.create_partitions(name, int(message["partitions"])), None
        if action == "alter_configs":
            return await w.alter_topic_configs(name, message["configs"]), None
        raise ValueError(f"unknown admin action {action!r}")

    async def _txn(self, message: Message, writer: asyncio.StreamWriter) -> None:
        request_id = int(message.get("id", -1))
        try:
            if message.get("action") == "markers":
                await self._write_markers(request_id, message, writer)
                return
            error, producer_id, epoch = await self._txn_action(message)
            reply: Message = {"id": request_id, "error_code": int(error),
                              "producer_id": producer_id, "epoch": epoch}  # fmt: skip
        except CoordinatorError as e:
            reply = messages.error_reply(request_id, e)
        except (KeyError, TypeError, ValueError) as e:
            reply = messages.error_reply(request_id, CoordinatorUnavailable(f"bad txn: {e!r}"))
        if not writer.is_closing():
            writer.write(messages.encode(reply))

    async def _write_markers(
        self, request_id: int, message: Message, writer: asyncio.StreamWriter
    ) -> None:
        markers = [
            TxnEnd("", int(pid), int(epoch), bool(commit),
                   frozenset((uuid.UUID(hex=t), int(p)) for t, p in partitions), frozenset())
            for pid, epoch, commit, partitions in message["markers"]
        ]  # fmt: skip
        errors = await self._writer.write_markers(markers)
        reply: Message = {
            "id": request_id,
            "errors": [[pid, t.hex, p, int(e)] for (pid, t, p), e in errors.items()],
        }
        if not writer.is_closing():
            writer.write(messages.encode(reply))

    async def _txn_action(self, message: Message) -> tuple[ErrorCode, int, int]:
        action = message["action"]
        w = self._writer
        txn_id = str(message["transactional_id"])
        if action == "init":
            return await w.init_producer_id(
                txn_id, int(message["timeout_ms"]), int(message["producer_id"]),
                int(message["epoch"]),
            )  # fmt: skip
        pid, epoch = int(message["producer_id"]), int(message["epoch"])
        if action == "add":
            error = await w.add_to_transaction(
                txn_id, pid, epoch,
                partitions=[(uuid.UUID(hex=t), int(p)) for t, p in message["partitions"]],
                groups=[str(g) for g in message["groups"]],
            )  # fmt: skip
        elif action == "offsets":
            offsets = [messages.pending_offset_from(o) for o in message["offsets"]]
            error = await w.txn_offset_commit(txn_id, pid, epoch, offsets)
        elif action == "end":
            error = await w.end_transaction(txn_id, pid, epoch, bool(message["commit"]))
        else:
            raise ValueError(f"unknown txn action {action!r}")
        return error, pid, epoch

    async def _swap(self, message: Message, writer: asyncio.StreamWriter) -> None:
        """A background job's swap from the jobs agent (lifecycle/): compaction's
        `relocate`, key compaction's `rewrite_batches`."""
        request_id = int(message.get("id", -1))
        try:
            if message["op"] == "relocate":
                key, size, moves, level = messages.relocate_from(message)
                moved = await self._writer.relocate(key, size, moves, level)
                reply = messages.relocate_reply(request_id, moved)
            else:
                key_, size, rewrites, removals, state = messages.rewrite_from(message)
                changed = await self._writer.rewrite_batches(key_, size, rewrites, removals, state)
                reply = messages.rewrite_reply(request_id, changed)
        except CoordinatorError as e:
            reply = messages.error_reply(request_id, e)
        except Exception as e:  # a malformed message (from an authenticated peer)
            reply = messages.error_reply(request_id, CoordinatorUnavailable(f"bad swap: {e!r}"))
        if not writer.is_closing():
            writer.write(messages.encode(reply))

    async def _delete_records(self, message: Message, writer: asyncio.StreamWriter) -> None:
        request_id = int(message.get("id", -1))
        try:
            requests = [(uuid.UUID(hex=t), int(p), int(o)) for t, p, o in message["partitions"]]
            answers = await self._writer.advance_log_starts(requests)
            reply: Message = {"id": request_id, "results": [[int(e), s] for e, s in answers]}
        except CoordinatorError as e:
            reply = messages.error_reply(request_id, e)
        except (KeyError, TypeError, ValueError) as e:
            reply = messages.error_reply(request_id, CoordinatorUnavailable(f"bad request: {e!r}"))
        if not writer.is_closing():
            writer.write(messages.encode(reply))


def _answer_commit(
    request_id: int,
    writer: asyncio.StreamWriter,
    future: asyncio.Future[list[CommitOutcome]],
) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None:
        frame = messages.outcomes_reply_frame(request_id, future.result())
    elif isinstance(error, CoordinatorError):
        frame = messages.encode(messages.error_reply(request_id, error))
    else:
        frame = messages.encode(
            messages.error_reply(request_id, CoordinatorUnavailable(repr(error)))
        )
    if not writer.is_closing():
        writer.write(frame)


class WriterClient:
    """The agent side: follows the lease holder, carries requests, feeds the view."""

    def __init__(
        self,
        backend: Backend,
        view: CoordinatorView,
        *,
        shard: int = 0,
        is_local_writer: Callable[[], bool],
        holder: str,
        secret: bytes,
    ) -> None:
        self._secret = peer_auth.check_secret(secret)
        self._refusals = RefusalLog()
        self._backend = backend
        self._view = view
        self._shard = shard
        self._is_local_writer = is_local_writer
        self._holder = holder
        self._writer: asyncio.StreamWriter | None = None
        self._connected_to = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.resyncs = 0
        self._watcher: asyncio.Task[None] | None = None
        # The lease holder to follow ("" while there is none, or it is this agent), when
        # it was last heard from (or became the one to follow), and when its lease was
        # last seen renewed: loop time, seconds.
        self._target = ""
        self._heard_s = 0.0
        self._renewed_s = 0.0
        self._expires_ms = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="writer-client")
        self._watcher = asyncio.create_task(self._watch(), name="writer-client-watch")

    def silent_s(self) -> float:
        """Seconds the writer has not been heard from, counted only once its lease was
        renewed well after its last word (so it is alive, yet does not reach this
        agent); 0 otherwise."""
        if not self._target or self._renewed_s - self._heard_s < STREAM_SILENCE_S:
            return 0.0
        return asyncio.get_running_loop().time() - self._heard_s

    async def close(self) -> None:
        for task in (self._task, self._watcher):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._writer is not None:
            self._writer.close()

    async def _run(self) -> None:
        while True:
            try:
                lease = await self._backend.read_lease(self._shard)
                if lease is None or lease.holder == self._holder or not lease.address:
                    # No writer yet, or it is this agent (its view is fed locally).
                    await asyncio.sleep(RECONNECT_BACKOFF_S)
                    continue
                await self._follow(lease.address)
            except asyncio.CancelledError:
                raise
            except HandshakeFailed as e:
                unlogged = self._refusals.admit(asyncio.get_running_loop().time())
                if unlogged is not None:
                    more = f" ({unlogged} more not logged)" if unlogged else ""
                    log.warning("writer at %s: %s%s", self._connected_to, e, more)
            except (OSError, CoordinatorError, ProtocolError, asyncio.IncompleteReadError) as e:
                log.info("writer connection: %r", e)
            except Exception:
                log.exception("writer client failed")
            self._disconnected()
            await asyncio.sleep(RECONNECT_BACKOFF_S)

    async def _follow(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), REQUEST_TIMEOUT_S
        )
        self._writer = writer
        self._connected_to = address
        await authenticate_to_server(reader, writer, self._secret)
        writer.write(messages.encode({"op": "subscribe"}))
        # Subscribed first (confirmed by the writer), then read the database: a
        # commit is either in what we read or in the stream after the confirmation
        # (or both: the view skips what it already has).
        confirmation = await asyncio.wait_for(read_message(reader), REQUEST_TIMEOUT_S)
        if confirmation.get("op") != "subscribed":
            raise ProtocolError(f"expected the subscription's confirmation, got {confirmation}")
        self._heard(address)
        await self._view.resync()
        self.resyncs += 1
        self._connected.set()
        log.info("following writer at %s", address)
        await self._read_stream(reader, address)

    def _heard(self, address: str) -> None:
        if address == self._target:
            self._heard_s = asyncio.get_running_loop().time()

    async def _watch(self) -> None:
        """Follow the lease: drop the connection once it names another writer (or this
        agent), or once the writer has been silent for `STREAM_SILENCE_S`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(LEASE_CHECK_S)
            try:
                lease = await self._backend.read_lease(self._shard)
            except CoordinatorError:
                continue
            now = loop.time()
            target = ""
            if lease is not None and lease.holder != self._holder:
                target = lease.address
            if target != self._target:
                self._target = target
                self._heard_s = self._renewed_s = now
                self._expires_ms = lease.expires_ms if lease is not None else 0
            elif lease is not None and lease.expires_ms > self._expires_ms:
                self._expires_ms = lease.expires_ms
                self._renewed_s = now
            if self._writer is None:
                continue
            if self._connected_to != target:
                log.info("the lease moved from %s; leaving it", self._connected_to)
                self._disconnected()  # at once: no request may go to the old writer now
            elif self._connected.is_set() and now - self._heard_s > STREAM_SILENCE_S:
                log.warning(
                    "no word from the writer at %s for %.1fs; connecting again",
                    target,
                    now - self._heard_s,
                )
                self._disconnected()

    async def _read_stream(self, reader: asyncio.StreamReader, address: str) -> None:
        while True:
            body = await read_body(reader)
            self._heard(address)
            if self._is_local_writer():
                # This agent took the lease: its view is fed by its own writer now, and
                # frames the old writer sent before would undo what it has done since.
                log.info("this agent is the writer now; leaving the old writer's stream")
                return
            if body[:1] == _APPLIED_TAG:
                self._view.on_remote_applied(messages.decode_applied(body))
                continue
            message = messages.decode(body)
            request_id = message.get("id")
            if request_id is not None:
                future = self._pending.pop(int(request_id), None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            op = message.get("op")
            if op == "topic":
                self._view.on_topic_put(messages.topic_from(message["topic"]))
            elif op == "topic_dropped":
                self._view.on_topic_dropped(messages.topic_from(message["topic"]))
            elif op == "log_starts":
                self._view.on_log_starts(
                    [LogStart(uuid.UUID(hex=t), p, o) for t, p, o in message["partitions"]]
                )
            elif op == "relocated":
                self._view.forget_cached([(uuid.UUID(hex=t), p) for t, p in message["partitions"]])
            elif op == "txn_opens":
                self._view.on_txn_opens(messages.txn_opens_from(message))
            elif op == "txn_closes":
                self._view.on_txn_closes(messages.txn_closes_from(message))
            elif op == "reloaded":
                await self._view.resync()
                self.resyncs += 1

    def _disconnected(self) -> None:
        self._connected.clear()
        if self._writer is not None:
            # Abort, not close: a close waits to flush what is buffered, which over a
            # silent link never ends, and the stream's reader would wait with it. What
            # was in flight fails below and is re-sent.
            self._writer.transport.abort()
        self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(CoordinatorUnavailable("lost the connection to the writer"))

    def _usable_writer(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is None or not self._connected.is_set() or writer.is_closing():
            raise NotWriter("not connected to a writer")
        return writer

    async def call(self, message: Message) -> Message:
        """Send one request to the writer and wait for its reply."""
        writer = self._usable_writer()
        request_id = next(self._ids)
        message["id"] = request_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(messages.encode(message))
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError as e:
            self._pending.pop(request_id, None)
            raise CoordinatorUnavailable("the writer did not answer in time") from e

    def send_commit(self, request: CommitRequest) -> asyncio.Future[Message]:
        """Send a commit now (keeping submission order on the wire); await the reply later."""
        writer = self._usable_writer()
        request_id = next(self._ids)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(messages.encode_commit(request_id, request))
        return future
