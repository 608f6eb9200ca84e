"""Kafka's size-prefixed frames: bytes in, whole frames out. No sockets, no asyncio.

Every Kafka request and response is an int32 size followed by that many bytes.
`FrameDecoder` accumulates received bytes and yields complete frames, refusing
any frame larger than the configured limit before buffering it, so a client
cannot make the agent hold more than one limit's worth of a single frame.
"""

from __future__ import annotations

import struct

_SIZE = struct.Struct(">i")


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}")
        self.size = size


class NegativeFrameSize(Exception):
    pass


class FrameReceiver:
    """Receives frames into buffers it hands out (for asyncio.BufferedProtocol).

    Small frames are read into a scratch buffer. A frame larger than the
    scratch buffer goes into a buffer of its own, and the socket writes the rest
    of it there directly, so a large Produce is copied from the kernel once and
    never again before decoding. That buffer starts at `LARGE_INITIAL_BYTES` and
    doubles as data arrives, so a client announcing a huge frame and sending
    nothing costs little memory. Buffers are reused.

    Frames are returned as read-only memoryviews (kio's readers require that)
    into those buffers: they are valid only until the next `get_buffer()`, so
    the caller must decode them before handing out the next buffer.
    """

    LARGE_INITIAL_BYTES = 1024 * 1024
    # A large-frame buffer up to this size is kept for the next large frame.
    KEEP_LARGE_BYTES = 16 * 1024 * 1024

    def __init__(self, max_frame_bytes: int, scratch_bytes: int = 64 * 1024) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._scratch = bytearray(scratch_bytes)
        self._start = 0  # first unconsumed byte in scratch
        self._end = 0  # end of received bytes in scratch
        self._large: bytearray | None = None  # body of a frame bigger than scratch
        self._large_size = 0
        self._large_filled = 0
        self._spare: bytearray | None = None

    def get_buffer(self) -> memoryview:
        large = self._large
        if large is not None:
            if self._large_filled == len(large):
                # Full but the frame is not complete: double (never past the frame).
                grown = bytearray(min(self._large_size, 2 * len(large)))
                grown[: self._large_filled] = large
                self._large = large = grown
            return memoryview(large)[self._large_filled : self._large_size]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < 4096:
            # Move the partial frame to the front so there is room to receive.
            pending = self._end - self._start
            self._scratch[:pending] = memoryview(self._scratch)[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._scratch)[self._end :]

    def frame_bytes_due(self) -> int:
        """Bytes of the large frame being received that have not arrived yet (0: none)."""
        return self._large_size - self._large_filled if self._large is not None else 0

    def buffer_updated(self, received: int) -> list[memoryview]:
        """Account for `received` bytes written into the last buffer; return finished frames."""
        frames: list[memoryview] = []
        large = self._large
        if large is not None:
            self._large_filled += received
            if self._large_filled < self._large_size:
                return frames
            frames.append(memoryview(large)[: self._large_size].toreadonly())
            if len(large) <= self.KEEP_LARGE_BYTES:
                self._spare = large
            self._large = None
            self._large_size = self._large_filled = 0
            return frames
        self._end += received
        while self._end - self._start >= 4:
            (size,) = _SIZE.unpack_from(self._scratch, self._start)
            if size < 0:
                raise NegativeFrameSize(f"negative frame size {size}")
            if size > self._max_frame_bytes:
                raise FrameTooLarge(size, self._max_frame_bytes)
            available = self._end - self._start - 4
            if available >= size:
                body_start = self._start + 4
                view = memoryview(self._scratch)[body_start : body_start + size]
                frames.append(view.toreadonly())
                self._start = body_start + size
                continue
            if size + 4 > len(self._scratch):
                self._start_large(size, memoryview(self._scratch)[self._start + 4 : self._end])
                self._start = self._end = 0
            break
        return frames

    def _start_large(self, size: int, received: memoryview) -> None:
        wanted = min(size, max(self.LARGE_INITIAL_BYTES, len(received)))
        spare = self._spare
        large = spare if spare is not None and len(spare) >= wanted else bytearray(wanted)
        large[: len(received)] = received
        self._large = large
        self._large_size = size
        self._large_filled = len(received)

    @property
    def buffered_bytes(self) -> int:
        return (self._end - self._start) + self._large_filled


def encode_size(size: int) -> bytes:
    return _SIZE.pack(size)
