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


class FrameDecoder:
    def __init__(self, max_frame_bytes: int) -> None:
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._wanted = -1

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete (without size prefixes)."""
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if self._wanted < 0:
                if len(self._buffer) < 4:
                    return frames
                (size,) = _SIZE.unpack_from(self._buffer, 0)
                if size < 0:
                    raise NegativeFrameSize(f"negative frame size {size}")
                if size > self._max_frame_bytes:
                    raise FrameTooLarge(size, self._max_frame_bytes)
                del self._buffer[:4]
                self._wanted = size
            if len(self._buffer) < self._wanted:
                return frames
            frames.append(bytes(self._buffer[: self._wanted]))
            del self._buffer[: self._wanted]
            self._wanted = -1


def encode_size(size: int) -> bytes:
    return _SIZE.pack(size)
