"""The coordinator as one agent uses it: its read view plus the writer, wherever it is.

Every agent runs a writer candidate (`writer.py`): the one holding the lease
sequences for everybody. Reads go to the local view; commits and topic changes
go to the writer, in this process when it holds the lease, otherwise over the
writer RPC (`coordinator/runtime/rpc.py`) to the agent that does. Group offsets and
producer ids go straight to the database: they need no sequencing.

Commits are sent in submission order and re-sent after a failure (a lost
connection, a writer failover, an unknown transaction outcome) until
`commit_timeout_s`: the writer answers a re-sent object key with the outcome
stored the first time, so a retry never stores an object twice, and producers
wait through a failover instead of seeing errors.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from kio.schema.errors import ErrorCode

from driftlog.clock import Clock
from driftlog.coordinator.api import (
    BatchLocation,
    CommitOutcome,
    CommitRequest,
    CommittedOffset,
    CoordinatorError,
    CoordinatorUnavailable,
    Fenced,
    GroupClaim,
    NotWriter,
    PartitionOffsets,
    TopicInfo,
)
from driftlog.coordinator.core.producers import ProducerPartitionState
from driftlog.coordinator.core.retention import RetentionPolicy
from driftlog.coordinator.core.sequencer import ProducerKey
from driftlog.coordinator.core.transactions import (
    AbortedTxn,
    PendingOffset,
    Transaction,
    TxnEnd,
    TxnLimits,
)
from driftlog.coordinator.engines.backend import (
    Backend,
    BatchMove,
    BatchRemoval,
    BatchRewrite,
    KeyCleanState,
    NewObject,
)
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.rpc import FrameHandler, WriterClient, WriterServer
from driftlog.coordinator.runtime.view import CoordinatorView
from driftlog.coordinator.runtime.writer import DEFAULT_LEASE_MS, CommitWriter, Listeners

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_BACKOFF_S = 0.05
# A writer that holds its lease but does not answer (overloaded, paused) is asked again.
REMOTE_COMMIT_TIMEOUT_S = 5.0
# The same bound for this agent's own writer (a stuck database, a lost answer).
COMMIT_WAIT_S = 10.0


@dataclass(slots=True)
class _QueuedCommit:
    request: CommitRequest
    future: asyncio.Future[list[CommitOutcome]]
    deadline_s: float


class AgentCoordinator:
    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        holder: str,
        rpc_host: str | None = None,
        rpc_port: int = 0,
        rpc_advertise_host: str | None = None,
        rpc_advertise_address: str = "",
        lease_ms: int = DEFAULT_LEASE_MS,
        commit_timeout_s: float | None = None,
        retention: RetentionPolicy | None = None,
        max_commit_age_ms: int | None = None,
        txn_limits: TxnLimits | None = None,
        rpc_secret: bytes | None = None,
        writer_candidate: bool = True,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self.view = CoordinatorView(backend)
        self._listeners = Listeners(self.view)
        self.writer = CommitWriter(
            backend,
            clock,
            self._listeners,
            holder=holder,
            lease_ms=lease_ms,
            retention=retention,
            max_commit_age_ms=max_commit_age_ms,
            txn_limits=txn_limits,
            candidate=writer_candidate,
        )
        self.commit_timeout_s = (
            commit_timeout_s if commit_timeout_s is not None else 2 * lease_ms / 1000 + 5
        )
        # Without an RPC host the writer is only ever this process (embedded SQLite).
        # With one, the RPC's server and client are made in `start`, once the secret
        # peers authenticate with is known (given, or the cluster's from the database).
        self._rpc_host = rpc_host
        self._rpc_port = rpc_port
        self._rpc_advertise_host = rpc_advertise_host
        self._rpc_advertise_address = rpc_advertise_address
        self._rpc_secret = rpc_secret
        # The secret the RPC authenticates peers with, once `start` knows it (cluster mode).
        self.rpc_secret: bytes | None = None
        self._frame_handlers: list[tuple[tuple[int, ...], FrameHandler]] = []
        self._holder = holder
        self.server: WriterServer | None = None
        self.client: WriterClient | None = None
        self._queue: collections.deque[_QueuedCommit] = collections.deque()
        self._queue_wakeup = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None

    def add_frame_handler(self, tags: Sequence[int], handler: FrameHandler) -> None:
        """Another component's frames on the RPC port (`WriterServer.add_frame_handler`);
        before `start`, so none arrives unhandled."""
        self._frame_handlers.append((tuple(tags), handler))

    async def start(self, wait_for_writer_s: float) -> None:
        """Open the database, start the writer candidate and follow the lease holder."""
        await self.backend.open()
        await self.view.load()
        if self._rpc_host:
            secret = self._rpc_secret
            if secret is None:
                secret = await self.backend.cluster_secret()
            self.rpc_secret = secret
            self.server = WriterServer(
                self.writer,
                self._rpc_host,
                self._rpc_port,
                self._rpc_advertise_host or self._rpc_host,
                secret=secret,
                advertise_address=self._rpc_advertise_address,
            )
            for tags, handler in self._frame_handlers:
                self.server.add_frame_handler(tags, handler)
            self.client = WriterClient(
                self.backend,
                self.view,
                is_local_writer=lambda: self.writer.is_writer,
                holder=self._holder,
                secret=secret,
            )
            self.writer.address = await self.server.start()
            self._listeners.listeners.append(self.server)
            self.client.start()
        self._sender = asyncio.create_task(self._send_loop(), name="commit-sender")
        await self.writer.start()
        # Real time: this waits on I/O, not on the core's clock.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_for_writer_s
        while not self.has_writer and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if not self.has_writer:
            log.warning("no writer reachable after %.1fs; commits will wait", wait_for_writer_s)

    def writer_silent_s(self) -> float:
        """How long the writer, alive (it renews its lease), has not been heard from over
        the RPC; 0 when it has been, or when this agent writes."""
        if self.writer.is_writer or self.client is None:
            return 0.0
        return self.client.silent_s()

    @property
    def has_writer(self) -> bool:
        return self.writer.is_writer or (self.client is not None and self.client.connected)

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
        for entry in self._queue:
            if not entry.future.done():
                entry.future.set_exception(NotWriter("coordinator closed"))
        self._queue.clear()
        await self.writer.close()
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            await self.server.close()
        await self.backend.close()

    @property
    def commits_persisted(self) -> int:
        return self.writer.commits_persisted

    @property
    def transactions(self) -> int:
        return self.writer.transactions

    # Write path -----------------------------------------------------------------
    def submit_commit(self, request: CommitRequest) -> asyncio.Future[list[CommitOutcome]]:
        future: asyncio.Future[list[CommitOutcome]] = asyncio.get_running_loop().create_future()
        deadline = self._clock.monotonic_s() + self.commit_timeout_s
        self._queue.append(_QueuedCommit(request, future, deadline))
        self._queue_wakeup.set()
        return future

    def _send(self, request: CommitRequest) -> asyncio.Future[list[CommitOutcome]]:
        if self.writer.is_writer:
            return asyncio.ensure_future(_within(self.writer.submit(request), COMMIT_WAIT_S))
        if self.client is not None:
            reply = self.client.send_commit(request)
            return asyncio.ensure_future(_decoded(reply, REMOTE_COMMIT_TIMEOUT_S))
        raise NotWriter("no writer")

    async def _send_loop(self) -> None:
        while True:
            await self._queue_wakeup.wait()
            self._queue_wakeup.clear()
            while self._queue:
                entries = list(self._queue)
                sends: list[asyncio.Future[list[CommitOutcome]]] = []
                try:
                    # Sent synchronously, in order: the writer commits in that order.
                    for entry in entries:
                        sends.append(self._send(entry.request))
                        if not entry.request.retry:
                            entry.request = dataclasses.replace(entry.request, retry=True)
                except Exception as e:
                    for sent in sends:
                        sent.add_done_callback(_ignore)
                    await self._back_off(_retriable(e))
                    continue
                for entry, send in zip(entries, sends, strict=True):
                    try:
                        outcomes = await send
                    except Exception as e:
                        # Whatever went wrong, the commit is re-sent (it is idempotent by
                        # key): this loop must never die, or the agent's produce path hangs.
                        for later in sends:
                            later.add_done_callback(_ignore)
                        await self._back_off(_retriable(e))
                        break
                    self._queue.popleft()
                    if not entry.future.done():
                        entry.future.set_result(outcomes)

    async def _back_off(self, error: CoordinatorError) -> None:
        """Fail the commits whose time is up; the rest are re-sent after a pause."""
        now = self._clock.monotonic_s()
        while self._queue and self._queue[0].deadline_s <= now:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(error)
        await asyncio.sleep(RETRY_BACKOFF_S)

    # Topics -----------------------------------------------------------------
    def topics(self) -> Sequence[TopicInfo]:
        return self.view.topics()

    def topic(self, name: str) -> TopicInfo | None:
        return self.view.topic(name)

    def topic_by_id(self, topic_id: uuid.UUID) -> TopicInfo | None:
        return self.view.topic_by_id(topic_id)

    async def _admin(
        self,
        local: Callable[[], Awaitable[T]],
        message: messages.Message,
        from_reply: Callable[[messages.Message], T],
        *,
        retry_on: tuple[type[CoordinatorError], ...] = (CoordinatorError,),
    ) -> T:
        """Run `local` if this agent writes, else send `message` to the writer; errors in
        `retry_on` are tried again until the commit timeout."""
        deadline = self._clock.monotonic_s() + self.commit_timeout_s
        while True:
            try:
                if self.writer.is_writer:
                    return await local()
                if self.client is None:
                    raise NotWriter("no writer")
                reply = await self.client.call(dict(message))
                messages.raise_error(reply)
                return from_reply(reply)
            except retry_on:
                if self._clock.monotonic_s() >= deadline:
                    raise
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def create_topic(
        self, name: str, partition_count: int, configs: Mapping[str, str]
    ) -> tuple[ErrorCode, TopicInfo | None]:
        message = {"op": "admin", "action": "create_topic", "name": name,
                   "partitions": partition_count, "configs": dict(configs)}  # fmt: skip
        return await self._admin(
            lambda: self.writer.create_topic(name, partition_count, configs),
            message,
            lambda r: (
                ErrorCode(r["error_code"]),
                messages.topic_from(r["topic"]) if r["topic"] else None,
            ),
        )

    async def delete_topic(self, name: str) -> ErrorCode:
        message = {"op": "admin", "action": "delete_topic", "name": name}
        return await self._admin(
            lambda: self.writer.delete_topic(name), message, lambda r: ErrorCode(r["error_code"])
        )

    async def create_partitions(self, name: str, new_total: int) -> ErrorCode:
        message = {"op": "admin", "action": "create_partitions", "name": name,
                   "partitions": new_total}  # fmt: skip
        return await self._admin(
            lambda: self.writer.create_partitions(name, new_total),
            message,
            lambda r: ErrorCode(r["error_code"]),
        )

    async def alter_topic_configs(self, name: str, configs: Mapping[str, str | None]) -> ErrorCode:
        message = {"op": "admin", "action": "alter_configs", "name": name,
                   "configs": dict(configs)}  # fmt: skip
        return await self._admin(
            lambda: self.writer.alter_topic_configs(name, configs),
            message,
            lambda r: ErrorCode(r["error_code"]),
        )

    async def delete_records(
        self, requests: Sequence[tuple[uuid.UUID, int, int]]
    ) -> list[tuple[ErrorCode, int]]:
        """Move log starts forward (DeleteRecords): per request, the error and low watermark."""
        message = {"op": "delete_records",
                   "partitions": [[t.hex, p, o] for t, p, o in requests]}  # fmt: skip
        return await self._admin(
            lambda: self.writer.advance_log_starts(requests),
            message,
            lambda r: [(ErrorCode(e), s) for e, s in r["results"]],
        )

    # The background jobs' swaps --------------------------------------------------------
    # A jobs agent (lifecycle/) that is not the writer sends them over the RPC.

    async def relocate(
        self, key: str, size: int, moves: Sequence[BatchMove], level: int = 1
    ) -> tuple[NewObject, int] | None:
        """Compaction's swap at the writer (`CommitWriter.relocate`)."""
        return await self._swap(
            lambda: self.writer.relocate(key, size, moves, level),
            messages.relocate_request(key, size, moves, level),
            messages.relocated_from,
        )

    async def rewrite_batches(
        self,
        key: str | None,
        size: int,
        rewrites: Sequence[BatchRewrite],
        removals: Sequence[BatchRemoval],
        state: KeyCleanState | None,
    ) -> int | None:
        """Key compaction's swap at the writer (`CommitWriter.rewrite_batches`)."""
        return await self._swap(
            lambda: self.writer.rewrite_batches(key, size, rewrites, removals, state),
            messages.rewrite_request(key, size, rewrites, removals, state),
            messages.rewritten_from,
        )

    async def _swap(
        self,
        local: Callable[[], Awaitable[T]],
        message: messages.Message,
        from_reply: Callable[[messages.Message], T],
    ) -> T:
        """Send a swap to the writer; sent again only while it certainly did not happen
        (no writer reachable, or the agent asked was not, or no longer, the writer: a
        swap's transaction is fenced). An unknown outcome (a lost connection, no answer
        in time) fails the job's run, which starts over at its next interval: the swap
        may have committed, and re-sending would store its new object twice."""
        return await self._admin(local, message, from_reply, retry_on=(NotWriter, Fenced))

    async def allocate_producer_id(self) -> int:
        return await self.backend.allocate_producer_id()

    # Transactions -------------------------------------------------------------
    # Every change goes to the writer, which sequences transaction state with the data.

    async def _txn(
        self, local: Callable[[], Awaitable[tuple[ErrorCode, int, int]]], message: messages.Message
    ) -> tuple[ErrorCode, int, int]:
        return await self._admin(
            local,
            {"op": "txn", **message},
            lambda r: (ErrorCode(r["error_code"]), int(r["producer_id"]), int(r["epoch"])),
        )

    async def init_transactional_producer(
        self, transactional_id: str, timeout_ms: int, producer_id: int, epoch: int
    ) -> tuple[ErrorCode, int, int]:
        """InitProducerId with a transactional id: (error, producer id, epoch)."""
        message = {
            "action": "init", "transactional_id": transactional_id, "timeout_ms": timeout_ms,
            "producer_id": producer_id, "epoch": epoch,
        }  # fmt: skip
        return await self._txn(
            lambda: self.writer.init_producer_id(transactional_id, timeout_ms, producer_id, epoch),
            message,
        )

    async def add_to_transaction(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        *,
        partitions: Sequence[tuple[uuid.UUID, int]] = (),
        groups: Sequence[str] = (),
    ) -> ErrorCode:
        """AddPartitionsToTxn (partitions), AddOffsetsToTxn (groups)."""

        async def local() -> tuple[ErrorCode, int, int]:
            error = await self.writer.add_to_transaction(
                transactional_id, producer_id, epoch, partitions=partitions, groups=groups
            )
            return error, producer_id, epoch

        message = {
            "action": "add", "transactional_id": transactional_id, "producer_id": producer_id,
            "epoch": epoch, "partitions": [[t.hex, p] for t, p in partitions],
            "groups": list(groups),
        }  # fmt: skip
        return (await self._txn(local, message))[0]

    async def txn_offset_commit(
        self, transactional_id: str, producer_id: int, epoch: int, offsets: Sequence[PendingOffset]
    ) -> ErrorCode:
        async def local() -> tuple[ErrorCode, int, int]:
            error = await self.writer.txn_offset_commit(
                transactional_id, producer_id, epoch, offsets
            )
            return error, producer_id, epoch

        message = {"action": "offsets", "transactional_id": transactional_id,
                   "producer_id": producer_id, "epoch": epoch,
                   "offsets": [messages.pending_offset_value(o) for o in offsets]}  # fmt: skip
        return (await self._txn(local, message))[0]

    async def end_transaction(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> ErrorCode:
        async def local() -> tuple[ErrorCode, int, int]:
            error = await self.writer.end_transaction(transactional_id, producer_id, epoch, commit)
            return error, producer_id, epoch

        message = {"action": "end", "transactional_id": transactional_id,
                   "producer_id": producer_id, "epoch": epoch, "commit": commit}  # fmt: skip
        return (await self._txn(local, message))[0]

    async def write_markers(
        self, markers: Sequence[TxnEnd]
    ) -> dict[tuple[int, uuid.UUID, int], ErrorCode]:
        """WriteTxnMarkers: errors per (producer id, topic id, partition)."""
        message = {
            "op": "txn", "action": "markers",
            "markers": [[m.producer_id, m.epoch, m.commit,
                         [[t.hex, p] for t, p in sorted(m.partitions, key=str)]]
                        for m in markers],
        }  # fmt: skip
        return await self._admin(
            lambda: self.writer.write_markers(markers),
            message,
            lambda r: {
                (int(pid), uuid.UUID(hex=t), int(p)): ErrorCode(e) for pid, t, p, e in r["errors"]
            },
        )

    async def transaction_states(self) -> list[Transaction]:
        """Every transactional id's state, as the database has it (describe, list)."""
        return await self.backend.load_transactions()

    async def producer_states(self) -> dict[ProducerKey, ProducerPartitionState]:
        """Every producer's state per partition, as the database has it (DescribeProducers)."""
        return (await self.backend.load_sequencer(0)).producers

    def last_stable_offset(self, topic_id: uuid.UUID, partition: int) -> int | None:
        return self.view.last_stable_offset(topic_id, partition)

    async def aborted_transactions(
        self, topic_id: uuid.UUID, partition: int, start_offset: int, end_offset: int
    ) -> list[AbortedTxn]:
        return await self.view.aborted_transactions(topic_id, partition, start_offset, end_offset)

    async def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        """The group's partitions with offsets committed in a transaction still open."""
        return await self.backend.pending_offsets(group_id)

    # Read path --------------------------------------------------------------
    def partition_offsets(self, topic_id: uuid.UUID, partition: int) -> PartitionOffsets | None:
        return self.view.partition_offsets(topic_id, partition)

    def forget_cached(self, partitions: Sequence[tuple[uuid.UUID, int]]) -> None:
        """Forget cached coordinates of these partitions (see `CoordinatorView.forget_cached`)."""
        self.view.forget_cached(partitions)

    async def find_batches(
        self,
        topic_id: uuid.UUID,
        partition: int,
        start_offset: int,
        max_bytes: int,
        end_offset: int | None = None,
    ) -> list[BatchLocation]:
        return await self.view.find_batches(
            topic_id, partition, start_offset, max_bytes, end_offset
        )

    async def batch_at_timestamp(
        self, topic_id: uuid.UUID, partition: int, timestamp_ms: int
    ) -> BatchLocation | None:
        return await self.view.batch_at_timestamp(topic_id, partition, timestamp_ms)

    async def max_timestamp(self, topic_id: uuid.UUID, partition: int) -> int:
        return await self.view.max_timestamp(topic_id, partition)

    async def wait_for_commit(
        self, partitions: Sequence[tuple[uuid.UUID, int]], timeout_s: float
    ) -> None:
        await self.view.wait_for_commit(partitions, timeout_s)

    def note_acknowledged(self, topic_id: uuid.UUID, partition: int, end_offset: int) -> None:
        """This agent acknowledged a produce up to `end_offset` (see `caught_up`)."""
        self.view.note_acknowledged(topic_id, partition, end_offset)

    async def caught_up(self, topic_id: uuid.UUID, partition: int, timeout_s: float) -> None:
        await self.view.caught_up(topic_id, partition, timeout_s)

    # Consumer-group offsets ---------------------------------------------------
    # They go straight to the database, fenced by the group's claim (api.GroupClaim): the
    # check is inside the commit's own transaction, so it costs no extra round trip.
    async def claim_group(self, group_id: str, agent_id: str) -> GroupClaim:
        return await self.backend.claim_group(group_id, agent_id)

    async def commit_offsets(
        self, group_id: str, offsets: Sequence[CommittedOffset], claim: GroupClaim
    ) -> None:
        await self.backend.put_offsets(group_id, offsets, claim)

    async def fetch_offsets(
        self, group_id: str, partitions: Sequence[tuple[str, int]] | None
    ) -> list[CommittedOffset]:
        return await self.backend.fetch_offsets(group_id, partitions)

    async def delete_group_offsets(self, group_id: str, claim: GroupClaim) -> None:
        await self.backend.delete_group(group_id, claim)

    async def groups_with_offsets(self) -> list[str]:
        return await self.backend.groups_with_offsets()


def _retriable(error: Exception) -> CoordinatorError:
    if isinstance(error, CoordinatorError):
        return error
    log.warning("commit attempt failed unexpectedly: %r", error)
    return CoordinatorUnavailable(repr(error))


async def _within(
    future: asyncio.Future[list[CommitOutcome]], timeout_s: float
) -> list[CommitOutcome]:
    try:
        return await asyncio.wait_for(future, timeout_s)
    except TimeoutError as e:
        raise CoordinatorUnavailable("the writer did not answer in time") from e


async def _decoded(reply: Awaitable[messages.Message], timeout_s: float) -> list[CommitOutcome]:
    try:
        return messages.reply_outcomes(await asyncio.wait_for(reply, timeout_s))
    except TimeoutError as e:
        # Re-sending is safe: a commit that did land is answered from the database.
        raise CoordinatorUnavailable("the writer did not answer in time") from e


def _ignore(future: asyncio.Future[list[CommitOutcome]]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a re-send will carry the outcome


# The embedded default and the tests' name for it.
LocalCoordinator = AgentCoordinator
