"""Transaction markers: the control batches that end a transaction in a partition. Pure.

A marker takes one offset in each partition of the transaction, like a
one-record batch, but it is not uploaded: the writer commits its coordinates
under a marker key that says everything the batch holds (commit or abort, the
producer id and epoch, the coordinator epoch), and a fetch builds the bytes
from the key, its offset and its timestamp. The bytes are what Kafka writes
(KIP-98 control batch): attributes with the control and transactional bits,
the producer's id and epoch, base sequence -1, and one record whose key is
int16 version 0 and int16 type (0 abort, 1 commit) and whose value is int16
version 0 and int32 coordinator epoch.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import crc32c

from driftlog.records.batch import CONTROL_FLAG, CRC_START, HEADER_SIZE, TRANSACTIONAL_FLAG

MARKER_KEY_PREFIX = "txn-markers/"
ABORT = 0
COMMIT = 1

_HEADER = struct.Struct(">qiibIhiqqqhii")
# The record: length 16 (zigzag varint 32), attributes 0, timestamp delta 0, offset
# delta 0, key length 4 (varint 8), key, value length 6 (varint 12), value, no headers.
_RECORD = struct.Struct(">bbbbbhhbhib")
MARKER_BATCH_BYTES = HEADER_SIZE + _RECORD.size


class MarkerKey(NamedTuple):
    commit: bool
    producer_id: int
    producer_epoch: int
    coordinator_epoch: int


def marker_key(marker: MarkerKey, unique: int) -> str:
    """The key a marker's coordinates are committed under (`unique`: the object id)."""
    kind = "commit" if marker.commit else "abort"
    return (
        f"{MARKER_KEY_PREFIX}{kind}/{marker.producer_id}/{marker.producer_epoch}/"
        f"{marker.coordinator_epoch}/{unique}"
    )


def is_marker_key(key: str) -> bool:
    return key.startswith(MARKER_KEY_PREFIX)


def parse_marker_key(key: str) -> MarkerKey:
    """The marker a key names; ValueError for anything else."""
    parts = key.removeprefix(MARKER_KEY_PREFIX).split("/")
    if not is_marker_key(key) or len(parts) != 5 or parts[0] not in _KINDS:
        raise ValueError(f"not a marker key: {key!r}")
    return MarkerKey(parts[0] == "commit", int(parts[1]), int(parts[2]), int(parts[3]))


_KINDS = ("commit", "abort")


def control_batch(marker: MarkerKey, base_offset: int, timestamp_ms: int) -> bytes:
    """The marker's control batch as Kafka stores it, at `base_offset`."""
    kind = COMMIT if marker.commit else ABORT
    record = _RECORD.pack(32, 0, 0, 0, 8, 0, kind, 12, 0, marker.coordinator_epoch, 0)
    header = bytearray(HEADER_SIZE)
    _HEADER.pack_into(
        header, 0, base_offset, MARKER_BATCH_BYTES - 12, -1, 2, 0,
        CONTROL_FLAG | TRANSACTIONAL_FLAG, 0, timestamp_ms, timestamp_ms,
        marker.producer_id, marker.producer_epoch, -1, 1,
    )  # fmt: skip
    crc = crc32c.crc32c(bytes(header[CRC_START:]) + record)
    struct.pack_into(">I", header, 17, crc)
    return bytes(header) + record
