"""The size-prefixed frame receiver, driven the way asyncio's BufferedProtocol drives it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftlog.protocol.framing import FrameReceiver, FrameTooLarge, NegativeFrameSize


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def deliver(receiver: FrameReceiver, stream: bytes, chunk: int) -> list[bytes]:
    """Write `stream` into the receiver's buffers at most `chunk` bytes at a time."""
    out: list[bytes] = []
    position = 0
    while position < len(stream):
        buffer = receiver.get_buffer()
        n = min(chunk, len(buffer), len(stream) - position)
        assert n > 0
        buffer[:n] = stream[position : position + n]
        position += n
        out += [bytes(f) for f in receiver.buffer_updated(n)]
    return out


@given(
    st.lists(st.binary(max_size=3000), max_size=20),
    st.integers(1, 5000),
    st.sampled_from([64, 1024, 8192]),
)
def test_frames_survive_any_chunking(payloads: list[bytes], chunk: int, scratch: int) -> None:
    receiver = FrameReceiver(100_000, scratch_bytes=scratch)
    stream = b"".join(frame(p) for p in payloads)
    assert deliver(receiver, stream, chunk) == payloads
    assert receiver.buffered_bytes == 0


def test_large_frame_gets_its_own_read_only_buffer() -> None:
    receiver = FrameReceiver(1000, scratch_bytes=16)
    data = frame(b"x" * 100)
    frames: list[memoryview] = []
    position = 0
    while position < len(data):
        buffer = receiver.get_buffer()
        n = min(len(buffer), len(data) - position)
        buffer[:n] = data[position : position + n]
        position += n
        frames += receiver.buffer_updated(n)
    [view] = frames
    assert view.readonly
    assert bytes(view) == b"x" * 100


def test_oversized_frame_is_refused_before_buffering() -> None:
    receiver = FrameReceiver(100)
    receiver.get_buffer()[:4] = struct.pack(">i", 101)
    with pytest.raises(FrameTooLarge):
        receiver.buffer_updated(4)


def test_negative_size() -> None:
    receiver = FrameReceiver(100)
    receiver.get_buffer()[:4] = struct.pack(">i", -5)
    with pytest.raises(NegativeFrameSize):
        receiver.buffer_updated(4)
