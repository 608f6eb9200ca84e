"""TCP connections to frames and back. No business logic.

Kafka clients pipeline requests on one connection and expect responses in
request order. Each request runs as its own task (a Produce waits for a flush,
and must not hold up the requests behind it), and responses are written in
order as they complete. A broken frame disconnects that client only.

Limits per connection: frame size (checked before buffering), requests and
request bytes in flight (reading pauses past either), time per request, idle
time without a request, and unread responses (writing pauses while the
client does not read).

While a large frame arrives, the socket's SO_RCVLOWAT is the part of it still to
come (up to 256 KiB, Linux): the loop wakes once per 256 KiB instead of once per
segment the client sent. Over TLS that matters: librdkafka writes a TLS record (and
a segment) per buffer slice, often ~1 KiB, and each wakeup costs a read, a copy
into the TLS layer and a pass through the protocol. Responses go to a TLS
transport with their small chunks joined, each chunk written being a TLS record
of its own.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from driftlog.protocol.framing import FrameReceiver, FrameTooLarge, NegativeFrameSize
from driftlog.server.session import Session

log = logging.getLogger(__name__)

# Decodes the frame at once and returns the work that produces the response
# frame chunks, or None when no response is due (acks=0).
FrameHandler = Callable[[memoryview, Session], Coroutine[Any, Any, list[bytes] | None]]
# The session of a new connection (after its TLS handshake): who the client is.
# Raises ConnectionClosed to refuse it.
SessionOpener = Callable[[asyncio.BaseTransport], Session]


# SO_RCVLOWAT while a large frame arrives: at most this (what uvloop's TLS transport
# reads at once), and not below the minimum (then 1: wake for any byte).
RCVLOWAT_MAX = 256 * 1024
RCVLOWAT_MIN = 32 * 1024
# Over TLS, what the TLS layer may hold of the frame still encrypted (a partial
# record: 16 KiB + its overhead), not counted as received yet.
TLS_RECORD_SLACK = 32 * 1024
# Response chunks below this are joined before a TLS transport writes them.
TLS_SMALL_CHUNK = 16 * 1024


class ConnectionClosed(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_frame_bytes: int
    max_in_flight: int
    max_in_flight_bytes: int
    request_timeout_s: float
    idle_timeout_s: float


class KafkaConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        handle_frame: FrameHandler,
        limits: ConnectionLimits,
        on_close: Callable[[KafkaConnection], None],
        *,
        open_session: SessionOpener,
        refuse: bool = False,
    ) -> None:
        self._refuse = refuse
        self._open_session = open_session
        self._session: Session | None = None
        self._handle_frame = handle_frame
        self._limits = limits
        self._receiver = FrameReceiver(limits.max_frame_bytes)
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._responses: collections.deque[tuple[int, asyncio.Task[list[bytes] | None]]] = (
            collections.deque()
        )
        self._in_flight_bytes = 0
        self._writer_wakeup = asyncio.Event()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._reading_paused = False
        self._muted = False
        self._unmuted = asyncio.Event()
        self._unmuted.set()
        self._draining = False
        self._closed = False
        self._last_activity = time.monotonic()
        self._idle_handle: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._tls = False
        self._lowat_socket: Any = None  # None: SO_RCVLOWAT not used
        self._rcvlowat = 1

    # asyncio.BufferedProtocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._refuse:  # over the connection limit
            self._closed = True
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Responses are small and late (after a flush): never let Nagle hold them
            # back waiting for the client's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sys.platform == "linux":
                self._lowat_socket = sock
        self._tls = transport.get_extra_info("sslcontext") is not None
        peer: Any = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            self._session = self._open_session(transport)
        except ConnectionClosed:
            self._closed = True
            transport.close()
            return
        self._writer = asyncio.create_task(self._write_responses())
        self._idle_handle = asyncio.get_running_loop().call_later(
            self._limits.idle_timeout_s, self._check_idle
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._receiver.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._receiver.buffer_updated(nbytes)
        except (FrameTooLarge, NegativeFrameSize) as e:
            log.warning("closing %s: %s", self._peer, e)
            self.close()
            return
        if frames and self._session is not None:
            self._take_frames(frames)
        if self._lowat_socket is not None:
            self._update_rcvlowat()

    def _take_frames(self, frames: list[memoryview]) -> None:
        assert self._session is not None
        for frame in frames:
            try:
                work = self._handle_frame(frame, self._session)
            except Exception:
                # A decoding path we did not foresee: this client only pays for it.
                log.exception("cannot decode a request from %s; closing", self._peer)
                self.close()
                return
            task = asyncio.create_task(_with_timeout(work, self._limits.request_timeout_s))
            self._responses.append((len(frame), task))
            self._in_flight_bytes += len(frame)
        self._writer_wakeup.set()
        self._last_activity = time.monotonic()
        if not self._reading_paused and (
            len(self._responses) >= self._limits.max_in_flight
            or self._in_flight_bytes >= self._limits.max_in_flight_bytes
        ):
            assert self._transport is not None
            self._transport.pause_reading()
            self._reading_paused = True

    def _update_rcvlowat(self) -> None:
        """Wake for the bytes the frame in progress is sure to bring, not for each segment.

        Never more than will arrive: the frame's bytes still due (over TLS, less what the
        TLS layer may hold undecrypted), so a frame is never left waiting. Kept while it
        stays below what is due; back to 1 when the frame is complete."""
        due = self._receiver.frame_bytes_due()
        if self._tls:
            due -= TLS_RECORD_SLACK
        if due < RCVLOWAT_MIN:
            lowat = 1
        elif 1 < self._rcvlowat <= due:
            return
        else:
            lowat = min(due, RCVLOWAT_MAX)
        if lowat == self._rcvlowat or self._closed:
            return
        try:
            self._lowat_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            self._lowat_socket = None  # closing, or not a TCP socket: plain wakeups
            return
        self._rcvlowat = lowat

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refuse:
            return
        self._closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._writer_wakeup.set()
        self._can_write.set()
        self._unmuted.set()
        self._on_close(self)

    # -------------------------------------------------------------------------
    def stop_reading(self) -> None:
        """Take no more requests (agent draining); pending ones still get answers."""
        self._draining = True
        if self._transport is not None and not self._closed and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True

    @property
    def has_pending_responses(self) -> bool:
        return bool(self._responses) and not self._closed

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _check_idle(self) -> None:
        idle_s = time.monotonic() - self._last_activity
        if idle_s >= self._limits.idle_timeout_s and not self._responses:
            log.info("closing idle connection %s", self._peer)
            self.close()
            return
        remaining = max(self._limits.idle_timeout_s - idle_s, 1.0)
        self._idle_handle = asyncio.get_running_loop().call_later(remaining, self._check_idle)

    def _mute(self, ms: int) -> None:
        """Read nothing and answer nothing more for `ms` (a quota's throttle, KIP-219).

        Kafka serves one request per connection at a time, so its mute stops the client
        outright; requests this agent already read (clients pipeline) wait for their
        answers instead, which holds back a client that keeps requests in flight."""
        if self._muted:
            return
        self._muted = True
        self._unmuted.clear()
        if self._transport is not None and not self._closed and not self._reading_paused:
            self._transport.pause_reading()
            self._reading_paused = True
        asyncio.get_running_loop().call_later(ms / 1000, self._unmute)

    def _unmute(self) -> None:
        self._muted = False
        self._unmuted.set()
        self._maybe_resume_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._closed
            and not self._draining
            and not self._muted
            and len(self._responses) < self._limits.max_in_flight // 2
            and self._in_flight_bytes < self._limits.max_in_flight_bytes // 2
        ):
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    async def _write_responses(self) -> None:
        try:
            while True:
                while not self._responses:
                    if self._closed:
                        return
                    self._writer_wakeup.clear()
                    await self._writer_wakeup.wait()
                size, task = self._responses[0]
                try:
                    chunks = await task
                except ConnectionClosed:
                    self.close()
                    chunks = None
                except TimeoutError:
                    log.warning("request from %s timed out; closing its connection", self._peer)
                    self.close()
                    chunks = None
                except Exception:
                    log.exception("request from %s failed; closing its connection", self._peer)
                    self.close()
                    chunks = None
                self._responses.popleft()
                self._in_flight_bytes -= size
                self._maybe_resume_reading()
                if chunks is not None and self._transport is not None and not self._closed:
                    await self._unmuted.wait()
                    await self._can_write.wait()
                    if not self._closed:
                        self._transport.writelines(
                            _join_small_chunks(chunks) if self._tls else chunks
                        )
                if self._session is not None and self._session.close_after_response:
                    # A failed login: its answer is the last thing this client gets.
                    self.close()
                    return
                if self._session is not None and self._session.mute_ms > 0:
                    self._mute(self._session.mute_ms)
                    self._session.mute_ms = 0
        finally:
            for _, task in self._responses:
                task.cancel()


def _join_small_chunks(chunks: list[bytes]) -> list[bytes]:
    """Runs of small chunks joined, large ones (record batches) kept as they are."""
    out: list[bytes] = []
    run: list[bytes] = []
    for chunk in chunks:
        if len(chunk) < TLS_SMALL_CHUNK:
            run.append(chunk)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else b"".join(run))
            run = []
        out.append(chunk)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


async def _with_timeout(
    work: Coroutine[Any, Any, list[bytes] | None], timeout_s: float
) -> list[bytes] | None:
    # asyncio.timeout rather than wait_for: no second task per request (Python 3.11).
    async with asyncio.timeout(timeout_s):
        return await work
