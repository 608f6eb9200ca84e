"""The writer RPC's messages, encoded and decoded here. Pure.

Frames are a 4-byte big-endian length followed by a body. Commits, the bulk of
the traffic, are binary; everything else is one JSON object. A body's first
byte tells them apart: `{` is JSON, 0x01 a commit, 0x02 an `applied` event.
(Before the first frame both ends prove they hold the cluster secret, in fixed-size
unframed messages: `peer_auth.py`.) An agent sends the writer:

    COMMIT (binary, below)
    {"op": "admin", "id": N, "action": A, "name": T, "partitions": P, "configs": {...}}
    {"op": "delete_records", "id": N, "partitions": [[topic id hex, partition, offset], ...]}
    {"op": "relocate", "id": N, "key": K, "size": S, "level": L, "topics": [topic id hex, ...],
     "moves": [[topic index, partition, last offset, from object id, byte offset], ...]}
                                      (compaction's swap, from a jobs agent: `relocate_request`)
    {"op": "rewrite_batches", "id": N, "key": K or null, "size": S, "topics": [...],
     "rewrites": [[topic index, partition, last offset, from object id, byte offset,
                   byte length], ...],
     "removals": [[topic index, partition, last offset, from object id], ...],
     "state": [topic id hex, partition, cleaned offset, passes] or null}
                                      (key compaction's swap: `rewrite_request`)
    {"op": "subscribe"}

COMMIT is, big-endian: 0x01, request id (int64), flags (uint8; bit 0: a
re-send), object size (int64), key length (uint16), the key (UTF-8, no NUL), BATCHES.

BATCHES is: topic count T (uint32), T topic ids (16 bytes each), batch count N
(uint32), then N batches of 56 bytes each: topic index (uint32, < T),
partition (int32, >= 0), byte offset (int64, >= 0), byte length (int32, >= 0),
record count (int32, >= 1), base timestamp, max timestamp, producer id (int64
each), producer epoch (int16), base sequence (int32), attributes (int16, the
batch header's). Its size must be exactly
that; anything else is a protocol error and closes the connection.

A re-send is a commit whose answer the agent did not get; only then does the
writer look the key up among committed objects. The writer answers each
request with the same id:

    {"id": N, "outcomes": [[error code, base offset, log append time, log start], ...]}
    {"id": N, "error_code": E, "topic": TOPIC or null}          (admin)
    {"id": N, "results": [[error code, log start], ...]}        (delete_records)
    {"id": N, "object": [object id, key, size, committed ms, level] or null, "moved": M}
                                                                (relocate; null: too old)
    {"id": N, "changed": M or null}                             (rewrite_batches)
    {"id": N, "error": "not_writer" | "fenced" | "unavailable", "message": M}

confirms a subscription with {"op": "subscribed"} and then streams to the
subscriber what became durable, in commit order:

    APPLIED (binary, below)
    {"op": "topic", "topic": TOPIC}   {"op": "topic_dropped", "topic": TOPIC}
    {"op": "reloaded"}                (the writer reloaded: resynchronize from the database)
    {"op": "log_starts", "partitions": [[topic id hex, partition, log start], ...]}
    {"op": "relocated", "partitions": [[topic id hex, partition], ...]}
                                      (compaction moved their batches: drop cached coordinates)
    {"op": "txn_opens", "opens": [[topic id hex, partition, producer id, first offset], ...]}
                                      (before the APPLIED event whose batches opened them)
    {"op": "txn_closes", "closes": [[topic id hex, partition, producer id, first offset,
                                     marker offset, commit], ...]}
                                      (after the APPLIED event of the markers)
    {"op": "txn", "id": N, "action": A, ...}   (a change of transaction state, see
                                      `txn_request`; answered {"id": N, "error_code": E,
                                      "producer_id": P, "epoch": E})

APPLIED is: 0x02, object count (uint32), then per object: key length (uint16),
the key, BATCHES length (uint32), the object's BATCHES as its agent sent them
(the same bytes: the writer forwards them without decoding them again),
outcomes length (uint32), the outcomes as JSON (as stored with the object:
[[error code, base offset, log append time, log start offset], ...], one per
batch). Followers rebuild the coordinates (last offset = base + count - 1).

TOPIC is [name, topic id hex, partition count, {config: value}].
"""

from __future__ import annotations

import functools
import itertools
import json
import struct
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import (
    BatchLocation,
    BatchToCommit,
    CommitOutcome,
    CommitRequest,
    CoordinatorError,
    CoordinatorUnavailable,
    EncodedOutcomes,
    Fenced,
    NotWriter,
    TopicInfo,
)
from driftlog.coordinator.core.sequencer import SequencedObject
from driftlog.coordinator.core.transactions import PendingOffset, TxnClose, TxnOpen
from driftlog.coordinator.engines.backend import (
    BatchMove,
    BatchRemoval,
    BatchRewrite,
    KeyCleanState,
    NewObject,
    outcomes_json,
)

LENGTH = struct.Struct(">I")
COMMIT = 0x01
APPLIED = 0x02
_COMMIT_HEAD = struct.Struct(">BqBqH")  # tag, request id, flags, object size, key length
_RETRY = 0x01
_UINT16 = struct.Struct(">H")
_UINT32 = struct.Struct(">I")
# topic index, partition, byte offset, byte length, record count, base timestamp,
# max timestamp, producer id, producer epoch, base sequence, attributes
_BATCH = struct.Struct(">Iiqiiqqqhih")
# A commit of a flush-sized object carries a few thousand batches; admin is tiny.
MAX_FRAME_BYTES = 64 * 1024 * 1024

Message = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


# Messages are trees of lists, tuples and numbers built here: no cycles to look for.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def encode(message: Message) -> bytes:
    body = _ENCODER.encode(message).encode()
    return LENGTH.pack(len(body)) + body


def decode(body: bytes) -> Message:
    try:
        message = json.loads(body)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from e
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


# Commits ---------------------------------------------------------------------------


def encode_commit(request_id: int, request: CommitRequest) -> bytes:
    """A commit as one frame (length included)."""
    return commit_frame(
        request_id,
        request.object_key,
        request.object_size,
        encode_batches(request.batches),
        retry=request.retry,
    )


def commit_frame(
    request_id: int, object_key: str, object_size: int, batches: bytes, *, retry: bool = False
) -> bytes:
    """A commit as one frame, its batches already encoded (`encode_batches`)."""
    key = object_key.encode()
    head = _COMMIT_HEAD.pack(COMMIT, request_id, _RETRY if retry else 0, object_size, len(key))
    body = b"".join((head, key, batches))
    return LENGTH.pack(len(body)) + body


def encode_batches(batches: Sequence[BatchToCommit]) -> bytes:
    """BATCHES: the topic table, then one fixed-size record per batch."""
    topics: dict[uuid.UUID, int] = {}
    rows = []
    pack = _BATCH.pack
    last: uuid.UUID | None = None
    index = 0
    for b in batches:
        if b[0] is not last:  # batches come in runs of a topic
            last = b[0]
            index = topics.setdefault(last, len(topics))
        rows.append(pack(index, *b[1:]))
    return b"".join(
        (
            _UINT32.pack(len(topics)),
            *(t.bytes for t in topics),
            _UINT32.pack(len(rows)),
            *rows,
        )
    )


def decode_commit(body: bytes) -> tuple[int, CommitRequest, bytes]:
    """A commit frame's body: the request id, the request and its BATCHES as sent."""
    try:
        tag, request_id, flags, size, key_length = _COMMIT_HEAD.unpack_from(body)
        start = _COMMIT_HEAD.size + key_length
        if tag != COMMIT or len(body) < start:
            raise ValueError("truncated")
        key = body[_COMMIT_HEAD.size : start].decode()
        if "\x00" in key:  # no database stores it: it would fail the whole round
            raise ValueError("NUL in the object key")
    except (struct.error, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"bad commit: {e!r}") from e
    raw = body[start:]
    return request_id, CommitRequest(key, size, decode_batches(raw), bool(flags & _RETRY)), raw


@functools.lru_cache(maxsize=4096)
def _topic_id_of(raw: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=raw)


_new_tuple = tuple.__new__


def decode_batches(raw: bytes) -> list[BatchToCommit]:
    """BATCHES to named tuples, with every count and length checked against the bytes.

    Per batch nothing runs in Python: the records are unpacked and regrouped by
    column in C, which also makes the range checks cheap.
    """
    try:
        (topic_count,) = _UINT32.unpack_from(raw, 0)
        at = 4 + 16 * topic_count
        (count,) = _UINT32.unpack_from(raw, at)
        at += 4
        if len(raw) - at != count * _BATCH.size:
            raise ValueError(f"{len(raw) - at} bytes for {count} batches")
        if topic_count > count:
            raise ValueError(f"{topic_count} topics for {count} batches")
        if not count:
            return []
        topics = [_topic_id_of(raw[4 + 16 * i : 20 + 16 * i]) for i in range(topic_count)]
        columns = list(zip(*_BATCH.iter_unpack(memoryview(raw)[at:]), strict=True))
        if (
            max(columns[0]) >= topic_count
            or min(columns[1]) < 0  # partition
            or min(columns[2]) < 0  # byte offset
            or min(columns[3]) < 0  # byte length
            or min(columns[4]) < 1  # record count
        ):
            raise ValueError("a batch field is out of range")
    except (struct.error, ValueError) as e:
        raise ProtocolError(f"bad batches: {e!r}") from e
    return list(
        map(
            _new_tuple,
            itertools.repeat(BatchToCommit),
            zip(map(topics.__getitem__, columns[0]), *columns[1:], strict=True),
        )
    )


def outcomes_reply(request_id: int, outcomes: Sequence[CommitOutcome]) -> Message:
    # Outcomes are named tuples of ints (the error code is an IntEnum): JSON arrays as is.
    return {"id": request_id, "outcomes": outcomes}


def reply_outcomes(reply: Message) -> list[CommitOutcome]:
    raise_error(reply)
    return [CommitOutcome(ErrorCode(e), b, t, s) for e, b, t, s in reply["outcomes"]]


# Errors ----------------------------------------------------------------------------


def error_reply(request_id: int, error: CoordinatorError) -> Message:
    kind = (
        "fenced"
        if isinstance(error, Fenced)
        else "not_writer"
        if isinstance(error, NotWriter)
        else "unavailable"
    )
    return {"id": request_id, "error": kind, "message": str(error)}


def raise_error(reply: Message) -> None:
    kind = reply.get("error")
    if kind is None:
        return
    message = f"writer: {reply.get('message', '')}"
    if kind == "fenced":
        raise Fenced(message)
    if kind == "not_writer":
        raise NotWriter(message)
    raise CoordinatorUnavailable(message)


# Topics ----------------------------------------------------------------------------


def topic_value(topic: TopicInfo) -> list[Any]:
    return [topic.name, topic.topic_id.hex, topic.partition_count, dict(topic.configs)]


def topic_from(value: Sequence[Any]) -> TopicInfo:
    name, tid, count, configs = value
    return TopicInfo(str(name), uuid.UUID(hex=tid), int(count), dict(configs))


def admin_reply(request_id: int, error: ErrorCode, topic: TopicInfo | None) -> Message:
    return {
        "id": request_id,
        "error_code": int(error),
        "topic": topic_value(topic) if topic else None,
    }


# Transactions --------------------------------------------------------------------


def txn_opens_message(opens: Sequence[TxnOpen]) -> Message:
    return {"op": "txn_opens", "opens": [[t.hex, p, pid, first] for t, p, pid, first in opens]}


def txn_opens_from(message: Message) -> list[TxnOpen]:
    try:
        return [
            TxnOpen(uuid.UUID(hex=t), int(p), int(pid), int(first))
            for t, p, pid, first in message["opens"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"bad txn_opens: {e!r}") from e


def txn_closes_message(closes: Sequence[TxnClose]) -> Message:
    return {
        "op": "txn_closes",
        "closes": [[c.topic_id.hex, c.partition, c.producer_id, c.first_offset,
                    c.marker_offset, c.commit] for c in closes],
    }  # fmt: skip


def txn_closes_from(message: Message) -> list[TxnClose]:
    try:
        return [
            TxnClose(uuid.UUID(hex=t), int(p), int(pid), int(first), int(marker), bool(commit))
            for t, p, pid, first, marker, commit in message["closes"]
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"bad txn_closes: {e!r}") from e


def pending_offset_value(o: PendingOffset) -> list[Any]:
    return [o.producer_id, o.group_id, o.topic, o.partition, o.offset, o.leader_epoch,
            o.metadata]  # fmt: skip


def pending_offset_from(value: Sequence[Any]) -> PendingOffset:
    pid, group_id, topic, partition, offset, leader_epoch, metadata = value
    return PendingOffset(
        int(pid), str(group_id), str(topic), int(partition), int(offset), int(leader_epoch),
        None if metadata is None else str(metadata),
    )  # fmt: skip


# The background jobs' swaps (a jobs agent that is not the writer sends them) ----------
# Topic ids are sent once per message and batches name them by index: a compaction swap
# moves up to tens of thousands of batches.


def _topic_table(topic_ids: Sequence[uuid.UUID]) -> tuple[list[str], dict[uuid.UUID, int]]:
    ordered = sorted(set(topic_ids))
    return [t.hex for t in ordered], {t: i for i, t in enumerate(ordered)}


def _topics_from(message: Message) -> list[uuid.UUID]:
    return [uuid.UUID(hex=t) for t in message["topics"]]


def relocate_request(key: str, size: int, moves: Sequence[BatchMove], level: int) -> Message:
    topics, index = _topic_table([m.topic_id for m in moves])
    return {
        "op": "relocate", "key": key, "size": size, "level": level, "topics": topics,
        "moves": [[index[m.topic_id], m.partition, m.last_offset, m.from_object_id,
                   m.byte_offset] for m in moves],
    }  # fmt: skip


def relocate_from(message: Message) -> tuple[str, int, list[BatchMove], int]:
    topics = _topics_from(message)
    moves = [
        BatchMove(topics[t], int(p), int(last), int(source), int(offset))
        for t, p, last, source, offset in message["moves"]
    ]
    return str(message["key"]), int(message["size"]), moves, int(message["level"])


def relocate_reply(request_id: int, result: tuple[NewObject, int] | None) -> Message:
    if result is None:
        return {"id": request_id, "object": None, "moved": 0}
    new_object, moved = result
    return {"id": request_id, "object": list(new_object), "moved": moved}


def relocated_from(reply: Message) -> tuple[NewObject, int] | None:
    value = reply["object"]
    if value is None:
        return None
    object_id, key, size, committed_ms, level = value
    return NewObject(int(object_id), str(key), int(size), int(committed_ms), int(level)), int(
        reply["moved"]
    )


def rewrite_request(
    key: str | None,
    size: int,
    rewrites: Sequence[BatchRewrite],
    removals: Sequence[BatchRemoval],
    state: KeyCleanState | None,
) -> Message:
    topics, index = _topic_table([r.topic_id for r in rewrites] + [r.topic_id for r in removals])
    return {
        "op": "rewrite_batches", "key": key, "size": size, "topics": topics,
        "rewrites": [[index[r.topic_id], r.partition, r.last_offset, r.from_object_id,
                      r.byte_offset, r.byte_length] for r in rewrites],
        "removals": [[index[r.topic_id], r.partition, r.last_offset, r.from_object_id]
                     for r in removals],
        "state": None if state is None else [
            state.topic_id.hex, state.partition, state.cleaned_offset,
            [list(p) for p in state.passes],
        ],
    }  # fmt: skip


def rewrite_from(
    message: Message,
) -> tuple[str | None, int, list[BatchRewrite], list[BatchRemoval], KeyCleanState | None]:
    topics = _topics_from(message)
    rewrites = [
        BatchRewrite(topics[t], int(p), int(last), int(source), int(offset), int(length))
        for t, p, last, source, offset, length in message["rewrites"]
    ]
    removals = [
        BatchRemoval(topics[t], int(p), int(last), int(source))
        for t, p, last, source in message["removals"]
    ]
    state = None
    if message["state"] is not None:
        tid, partition, cleaned, passes = message["state"]
        state = KeyCleanState(
            uuid.UUID(hex=tid), int(partition), int(cleaned),
            tuple(tuple(int(v) for v in p) for p in passes),
        )  # fmt: skip
    key = message["key"]
    return (None if key is None else str(key)), int(message["size"]), rewrites, removals, state


def rewrite_reply(request_id: int, changed: int | None) -> Message:
    return {"id": request_id, "changed": changed}


def rewritten_from(reply: Message) -> int | None:
    changed = reply["changed"]
    return None if changed is None else int(changed)


# Events ----------------------------------------------------------------------------


def applied_frame(objects: Sequence[SequencedObject], raw: Mapping[str, bytes]) -> bytes:
    """The stream event for committed objects, as one frame (APPLIED).

    Per object: its key, its BATCHES as the agent sent them (`raw`, else encoded
    here) and its outcomes as stored; followers rebuild the coordinates. Nothing
    is encoded per batch for objects that came over the RPC.
    """
    parts = [b"", _UINT32.pack(len(objects))]
    for o in objects:
        batches = raw.get(o.object_key)
        if batches is None:
            batches = encode_batches(o.batches)
        key = o.object_key.encode()
        outcomes = outcomes_json(o).encode()
        parts += (
            _UINT16.pack(len(key)),
            key,
            _UINT32.pack(len(batches)),
            batches,
            _UINT32.pack(len(outcomes)),
            outcomes,
        )
    parts[0] = LENGTH.pack(1 + sum(map(len, parts))) + b"\x02"
    return b"".join(parts)


def decode_applied(body: bytes) -> list[tuple[uuid.UUID, int, BatchLocation]]:
    """The coordinates of the batches an APPLIED event stored, in commit order.

    Batches answered with an error have no coordinates; those answered as
    duplicates carry an offset the follower already has, so it skips them.
    """
    out = []
    new = tuple.__new__
    try:
        if body[:1] != b"\x02":
            raise ValueError("not an applied event")
        (count,) = _UINT32.unpack_from(body, 1)
        at = 5
        for _ in range(count):
            (length,) = _UINT16.unpack_from(body, at)
            key = body[at + 2 : at + 2 + length].decode()
            at += 2 + length
            (length,) = _UINT32.unpack_from(body, at)
            batches = decode_batches(body[at + 4 : at + 4 + length])
            at += 4 + length
            (length,) = _UINT32.unpack_from(body, at)
            outcomes = json.loads(body[at + 4 : at + 4 + length])
            at += 4 + length
            if at > len(body):
                raise ValueError("truncated")
            for batch, (error, base_offset, append_time_ms, _) in zip(
                batches, outcomes, strict=True
            ):
                if error:
                    continue
                tid, partition, byte_offset, byte_length, records, _, max_timestamp_ms = batch[:7]
                location = new(
                    BatchLocation,
                    (key, byte_offset, byte_length, base_offset, base_offset + records - 1,
                     max_timestamp_ms, append_time_ms),
                )  # fmt: skip
                out.append((tid, partition, location))
        if at != len(body):
            raise ValueError(f"{len(body) - at} bytes after the last object")
    except (struct.error, ValueError, TypeError) as e:
        raise ProtocolError(f"bad applied event: {e!r}") from e
    return out


def outcomes_reply_frame(request_id: int, outcomes: Sequence[CommitOutcome]) -> bytes:
    """The reply to a commit, as one frame; outcomes already encoded (the JSON the writer
    stored) are not encoded again."""
    if isinstance(outcomes, EncodedOutcomes):
        body = b'{"id":%d,"outcomes":%s}' % (request_id, outcomes.json.encode())
        return LENGTH.pack(len(body)) + body
    return encode(outcomes_reply(request_id, outcomes))
