"""The size-prefixed frame decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftlog.protocol.framing import FrameDecoder, FrameTooLarge, NegativeFrameSize


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(1, 50))
def test_frames_survive_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(1000)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == payloads
    assert decoder.buffered_bytes == 0


def test_oversized_frame_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(100)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">i", 101))


def test_negative_size() -> None:
    with pytest.raises(NegativeFrameSize):
        FrameDecoder(100).feed(struct.pack(">i", -5))
