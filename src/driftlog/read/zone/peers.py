"""The asking side of the zone cache's peer protocol: connections to the zone's agents.

One connection per peer address, opened on first use over the agents' authenticated
RPC (the same handshake as the writer RPC: both ends prove they hold the cluster
secret before any frame), carrying READ requests (answered by id, many in flight)
and WARM frames (no answer). A request that gets no answer within its timeout, a
refused or broken connection, or a reply that does not decode is `PeerUnavailable`:
the caller reads the store itself. Nothing here waits without a deadline, and what
is queued toward a peer is bounded (requests in flight, bytes of warm frames).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Protocol

from driftlog.coordinator.runtime import peer_auth
from driftlog.coordinator.runtime.rpc import authenticate_to_server
from driftlog.coordinator.runtime.rpc_messages import LENGTH, ProtocolError
from driftlog.read.zone import messages
from driftlog.read.zone.blocks import Range
from driftlog.read.zone.messages import ReadRequest, Reply
from driftlog.read.zone.ownership import ZoneAgent

log = logging.getLogger(__name__)

# Requests waiting for answers on one connection; more wait their turn (within their
# deadline).
MAX_IN_FLIGHT_PER_PEER = 64
# Warm frames queued toward one peer (in the socket's buffer or waiting for the
# connection); past it, warming that peer is skipped (its blocks are fetched on demand).
MAX_WARM_BACKLOG_BYTES = 64 * 1024 * 1024


class PeerUnavailable(Exception):
    """The peer could not be asked (refused, reset: `timed_out` False), or did not answer
    in time (`timed_out` True)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class PeerTransport(Protocol):
    async def read(
        self,
        peer: ZoneAgent,
        key: str,
        index: int,
        block_bytes: int,
        ranges: Sequence[Range],
        *,
        prefetch: bool,
        timeout_s: float,
        held_only: bool = False,
    ) -> Reply:
        """Ask `peer` for `ranges` (relative to the block's start) of a block (`held_only`:
        the whole block if it holds it, without a GET)."""
        ...

    def warm(self, peer: ZoneAgent, key: str, index: int, block_bytes: int, data: bytes) -> bool:
        """Send a block to its owner, best effort; False when it was skipped."""
        ...

    async def close(self) -> None: ...


class _Connection:
    def __init__(self, address: str, secret: bytes) -> None:
        self.address = address
        self._secret = secret
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[asyncio.StreamWriter] | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT_PER_PEER)
        self.warm_backlog_bytes = 0

    async def _open(self) -> asyncio.StreamWriter:
        host, _, port = self.address.rpartition(":")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        try:
            await authenticate_to_server(reader, writer, self._secret)
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read_replies(reader, writer))
        return writer

    async def connected(self) -> asyncio.StreamWriter:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            return writer
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _read_replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        error: BaseException = PeerUnavailable(f"connection to {self.address} closed")
        try:
            while True:
                header = await reader.readexactly(LENGTH.size)
                (length,) = LENGTH.unpack(header)
                if length > messages.MAX_REPLY_BYTES:
                    raise ProtocolError(f"a reply of {length} bytes")
                reply = messages.decode_reply(await reader.readexactly(length))
                future = self._pending.pop(reply.request_id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except ProtocolError as e:
            log.warning("zone cache peer %s sent a bad frame: %s", self.address, e)
            error = PeerUnavailable(f"{self.address}: {e}")
        except (OSError, asyncio.IncompleteReadError) as e:
            error = PeerUnavailable(f"{self.address}: {e!r}")
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(error)

    async def request(self, make: ReadRequest) -> Reply:
        async with self._slots:
            writer = await self.connected()
            request_id = next(self._ids)
            future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                request = dataclasses.replace(make, request_id=request_id)
                writer.write(messages.encode_read(request))
                return await future
            finally:
                self._pending.pop(request_id, None)

    async def send_warm(self, chunks: list[bytes], size: int) -> None:
        try:
            writer = await self.connected()
            if not writer.is_closing():
                writer.writelines(chunks)
        finally:
            self.warm_backlog_bytes -= size

    def backlog_bytes(self) -> int:
        writer = self._writer
        buffered = writer.transport.get_write_buffer_size() if writer is not None else 0
        return buffered + self.warm_backlog_bytes

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


def _retrieve(task: asyncio.Future[asyncio.StreamWriter]) -> None:
    if not task.cancelled():
        task.exception()  # the awaiting caller reports it


class PeerClient:
    """`PeerTransport` over TCP to the peers' RPC servers, authenticated by `secret`."""

    def __init__(self, secret: bytes, *, max_peers: int = 1024) -> None:
        self._secret = peer_auth.check_secret(secret)
        self._connections: dict[str, _Connection] = {}
        self._max_peers = max_peers
        self._tasks: set[asyncio.Task[None]] = set()
        self.warms_skipped = 0

    def _connection(self, address: str) -> _Connection:
        connection = self._connections.get(address)
        if connection is None:
            if len(self._connections) >= self._max_peers:
                raise PeerUnavailable(f"more than {self._max_peers} peers")
            connection = self._connections[address] = _Connection(address, self._secret)
        return connection

    async def read(
        self,
        peer: ZoneAgent,
        key: str,
        index: int,
        block_bytes: int,
        ranges: Sequence[Range],
        *,
        prefetch: bool,
        timeout_s: float,
        held_only: bool = False,
    ) -> Reply:
        request = ReadRequest(0, prefetch, block_bytes, index, key, tuple(ranges), held_only)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._connection(peer.rpc_address).request(request)
        except TimeoutError as e:
            raise PeerUnavailable(
                f"{peer.agent_id} did not answer in {timeout_s:g} s", timed_out=True
            ) from e
        except (OSError, asyncio.IncompleteReadError, ProtocolError, ValueError) as e:
            raise PeerUnavailable(f"{peer.agent_id}: {e!r}") from e

    def warm(self, peer: ZoneAgent, key: str, index: int, block_bytes: int, data: bytes) -> bool:
        try:
            connection = self._connection(peer.rpc_address)
        except PeerUnavailable:
            self.warms_skipped += 1
            return False
        if connection.backlog_bytes() + len(data) > MAX_WARM_BACKLOG_BYTES:
            self.warms_skipped += 1
            return False
        chunks = messages.encode_warm(block_bytes, index, key, data)
        connection.warm_backlog_bytes += len(data)
        task = asyncio.create_task(connection.send_warm(chunks, len(data)))
        self._tasks.add(task)
        task.add_done_callback(self._warm_done)
        return True

    def _warm_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.warms_skipped += 1

    def forget(self, live_addresses: set[str]) -> None:
        """Close connections to addresses no live agent has any more."""
        for address in [a for a in self._connections if a not in live_addresses]:
            connection = self._connections.pop(address)
            task = asyncio.ensure_future(connection.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._connections.values()):
            await connection.close()
        self._connections.clear()
