"""TCP connections to frames and back. No business logic.

Kafka clients pipeline requests on one connection and expect responses in
request order. Each request runs as its own task (a Produce waits for a flush,
and must not hold up the requests behind it), and responses are written in
order as they complete. A broken frame disconnects that client only.

Limits per connection: frame size (checked before buffering), requests in
flight (reading pauses past it), idle time without a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from driftlog.protocol.framing import FrameReceiver, FrameTooLarge, NegativeFrameSize

log = logging.getLogger(__name__)

# Returns the response frame chunks, or None when no response is due (acks=0).
FrameHandler = Callable[[memoryview, str], Coroutine[Any, Any, list[bytes] | None]]


class ConnectionClosed(Exception):
    pass


class KafkaConnection(asyncio.BufferedProtocol):
    def __init__(
        self,
        handle_frame: FrameHandler,
        *,
        max_frame_bytes: int,
        max_in_flight: int,
        idle_timeout_s: float,
        on_close: Callable[[KafkaConnection], None],
    ) -> None:
        self._handle_frame = handle_frame
        self._receiver = FrameReceiver(max_frame_bytes)
        self._max_in_flight = max_in_flight
        self._idle_timeout_s = idle_timeout_s
        self._on_close = on_close
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._responses: collections.deque[asyncio.Task[list[bytes] | None]] = collections.deque()
        self._writer_wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        self._idle_handle: asyncio.TimerHandle | None = None

    # asyncio.BufferedProtocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer: Any = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._writer_task = asyncio.create_task(self._write_responses())
        self._arm_idle_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._receiver.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self._receiver.buffer_updated(nbytes)
        except (FrameTooLarge, NegativeFrameSize) as e:
            log.warning("closing %s: %s", self._peer, e)
            self.close()
            return
        for frame in frames:
            self._responses.append(asyncio.create_task(self._handle_frame(frame, self._peer)))
        if frames:
            self._writer_wakeup.set()
            self._arm_idle_timer()
        if len(self._responses) >= self._max_in_flight and not self._paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._writer_wakeup.set()
        self._on_close(self)

    # -------------------------------------------------------------------------
    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _arm_idle_timer(self) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_later(self._idle_timeout_s, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self._responses:
            log.info("closing idle connection %s", self._peer)
            self.close()
        else:
            self._arm_idle_timer()

    async def _write_responses(self) -> None:
        try:
            while True:
                while not self._responses:
                    if self._closed:
                        return
                    self._writer_wakeup.clear()
                    await self._writer_wakeup.wait()
                task = self._responses[0]
                try:
                    chunks = await task
                except ConnectionClosed:
                    self.close()
                    chunks = None
                except Exception:
                    log.exception("request from %s failed; closing its connection", self._peer)
                    self.close()
                    chunks = None
                self._responses.popleft()
                if self._paused and len(self._responses) < self._max_in_flight // 2:
                    self._paused = False
                    if self._transport is not None and not self._closed:
                        self._transport.resume_reading()
                if chunks is not None and self._transport is not None and not self._closed:
                    self._transport.writelines(chunks)
        finally:
            for task in self._responses:
                task.cancel()
