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
    of it there directly, so a large Produce is copied once from the kernel and
    never again before decoding. Both buffers are reused.

    Frames are returned as read-only memoryviews (kio's readers require that)
    into those buffers: they are valid only until the next `get_buffer()`, so
    the caller must decode them before handing out the next buffer.
    """

    # A large-frame buffer up to this size is kept for the next large frame.
    KEEP_LARGE_BYTES = 16 * 1024 * 1024

    def __init__(self, max_frame_bytes: int, scratch_bytes: int = 256 * 1024) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._scratch = bytearray(scratch_bytes)
        self._start = 0  # first unconsumed byte in scratch
        self._end = 0  # end of received bytes in scratch
        self._large: memoryview | None = None  # body of a frame bigger than scratch
        self._large_filled = 0
        self._spare: bytearray | None = None

    def get_buffer(self) -> memoryview:
        if self._large is not None:
            return self._large[self._large_filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < 4096:
            # Move the partial frame to the front so there is room to receive.
            pending = self._end - self._start
            self._scratch[:pending] = self._scratch[self._start : self._end]
            self._start, self._end = 0, pending
        return memoryview(self._scratch)[self._end :]

    def buffer_updated(self, received: int) -> list[memoryview]:
        """Account for `received` bytes written into the last buffer; return finished frames."""
        frames: list[memoryview] = []
        if self._large is not None:
            self._large_filled += received
            if self._large_filled < len(self._large):
                return frames
            frames.append(self._large.toreadonly())
            self._large = None
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
                # Give this frame its own buffer; the socket fills the rest of it.
                self._large = self._large_buffer(size)
                self._large[:available] = self._scratch[self._start + 4 : self._end]
                self._large_filled = available
                self._start = self._end = 0
            break
        return frames

    def _large_buffer(self, size: int) -> memoryview:
        spare = self._spare
        if spare is None or len(spare) < size:
            spare = bytearray(size)
            if size <= self.KEEP_LARGE_BYTES:
                self._spare = spare
        return memoryview(spare)[:size]

    @property
    def buffered_bytes(self) -> int:
        return (self._end - self._start) + self._large_filled


def encode_size(size: int) -> bytes:
    return _SIZE.pack(size)
