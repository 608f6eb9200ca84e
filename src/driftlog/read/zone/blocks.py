"""Blocks: aligned byte ranges of an object, the unit the zone cache fetches, keeps and owns.

Pure. Block `i` of an object is bytes [i * block_bytes, (i + 1) * block_bytes), cut
short at the object's end: an object no larger than a block is one block, fetched
whole with one GET (the store clamps a range that runs past the end; S3 and
obstore's memory store do). Objects are written in `--flush-bytes` pieces, so with
a block at least that large almost every object is one GET per zone, however many
partitions read it.

A block is named by (object key, index). Objects are immutable (create-only keys), so
a block's bytes never change: whoever holds a copy may serve it. What the cache may
hold is only ever found through committed coordinates (the fetcher asks for the
byte ranges of committed batches), so nothing uncommitted is served.
"""

from __future__ import annotations

from collections.abc import Sequence

BlockId = tuple[str, int]  # (object key, block index)
Range = tuple[int, int]  # (start, end), end exclusive

# Whole blocks are fetched, kept and sent between agents: bounded so a peer frame
# stays under the RPC's frame limit (64 MiB) and a cache holds several.
MIN_BLOCK_BYTES = 64 * 1024
MAX_BLOCK_BYTES = 32 * 1024 * 1024


def check_block_bytes(block_bytes: int) -> int:
    if not MIN_BLOCK_BYTES <= block_bytes <= MAX_BLOCK_BYTES:
        raise ValueError(f"block size {block_bytes} outside [{MIN_BLOCK_BYTES}, {MAX_BLOCK_BYTES}]")
    return block_bytes


def block_span(index: int, block_bytes: int) -> Range:
    """The bytes block `index` covers (the last block of an object is cut short)."""
    return index * block_bytes, (index + 1) * block_bytes


def plan_blocks(ranges: Sequence[Range], block_bytes: int) -> dict[int, list[Range]]:
    """For each block index the ranges touch, the parts of them inside it (absolute
    offsets, sorted, overlapping or adjacent parts merged). Empty ranges touch nothing."""
    pieces: dict[int, list[Range]] = {}
    for start, end in ranges:
        if start < 0 or end < start:
            raise ValueError(f"bad range {start}-{end}")
        position = start
        while position < end:
            index = position // block_bytes
            stop = min(end, (index + 1) * block_bytes)
            pieces.setdefault(index, []).append((position, stop))
            position = stop
    return {index: _merged(parts) for index, parts in sorted(pieces.items())}


def _merged(parts: list[Range]) -> list[Range]:
    parts.sort()
    out: list[Range] = []
    for start, end in parts:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


class RangeBeyondObject(ValueError):
    """Coordinates name bytes past the object's end (the block came back shorter)."""


def slice_range(
    block: memoryview, index: int, block_bytes: int, start: int, end: int
) -> memoryview:
    """The absolute range [start, end), which lies in block `index`, out of its bytes."""
    base = index * block_bytes
    if not base <= start <= end <= base + block_bytes:
        raise ValueError(f"range {start}-{end} is not inside block {index}")
    if end - base > len(block):
        raise RangeBeyondObject(
            f"bytes {start}-{end} asked of a block of {len(block)} bytes at {base}"
        )
    return block[start - base : end - base]


def object_blocks(chunks: Sequence[bytes], size: int, block_bytes: int) -> list[bytes]:
    """An object's bytes (as the write path lays them out: chunks in order) cut in blocks,
    for an uploader warming the blocks' owners."""
    joined = b"".join(chunks)
    if len(joined) != size:
        raise ValueError(f"chunks hold {len(joined)} bytes, not {size}")
    return [joined[i : i + block_bytes] for i in range(0, size, block_bytes)]
