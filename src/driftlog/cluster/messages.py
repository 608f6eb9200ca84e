"""The writer RPC's messages: plain JSON values, encoded and decoded here. Pure.

Frames are a 4-byte big-endian length followed by one JSON object. An agent
sends the writer:

    {"op": "commit", "id": N, "key": K, "size": S, "retry": R, "batches": [BATCH, ...]}
    {"op": "admin", "id": N, "action": A, "name": T, "partitions": P, "configs": {...}}
    {"op": "subscribe"}

BATCH is [topic id hex, partition, byte offset, byte length, record count,
base timestamp, max timestamp, producer id, producer epoch, base sequence].
R is true when the agent re-sends a commit whose answer it did not get; only then
does the writer look the key up among committed objects. The writer answers each
request with the same id:

    {"id": N, "outcomes": [[error code, base offset, log append time, log start], ...]}
    {"id": N, "error_code": E, "topic": TOPIC or null}          (admin)
    {"id": N, "error": "not_writer" | "fenced" | "unavailable", "message": M}

confirms a subscription with {"op": "subscribed"} and then streams to the
subscriber what became durable, in commit order:

    {"op": "applied", "objects": [[object key, [BATCH, ...], [OUTCOME, ...]], ...]}
    {"op": "topic", "topic": TOPIC}   {"op": "topic_dropped", "topic": TOPIC}
    {"op": "reloaded"}                (the writer reloaded: resynchronize from the database)
    {"op": "log_starts", "partitions": [[topic id hex, partition, log start], ...]}
    {"op": "relocated", "partitions": [[topic id hex, partition], ...]}
                                      (compaction moved their batches: drop cached coordinates)

TOPIC is [name, topic id hex, partition count, {config: value}]. OUTCOME is
[error code, base offset, log append time, log start offset]; the applied event
repeats each object's batches as its agent sent them plus the outcomes, from
which followers rebuild the coordinates (offsets, last offset = base + count - 1).
"""

from __future__ import annotations

import functools
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
from driftlog.coordinator.backend import outcomes_json
from driftlog.coordinator.sequencer import SequencedObject

LENGTH = struct.Struct(">I")
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


def commit_message(request_id: int, request: CommitRequest) -> Message:
    return {
        "op": "commit",
        "id": request_id,
        "key": request.object_key,
        "size": request.object_size,
        "retry": request.retry,
        "batches": [
            [
                b.topic_id.hex,
                b.partition,
                b.byte_offset,
                b.byte_length,
                b.record_count,
                b.base_timestamp_ms,
                b.max_timestamp_ms,
                b.producer_id,
                b.producer_epoch,
                b.base_sequence,
            ]
            for b in request.batches
        ],
    }


@functools.lru_cache(maxsize=4096)
def _topic_id(hex_id: str) -> uuid.UUID:
    return uuid.UUID(hex=hex_id)


def commit_request(message: Message) -> CommitRequest:
    try:
        # Agents are trusted peers: shapes are checked, values are what they sent.
        batches = []
        for b in message["batches"]:
            if len(b) != 10:
                raise ValueError(f"batch {b!r}")
            batches.append(BatchToCommit(_topic_id(b[0]), *b[1:]))
        return CommitRequest(
            str(message["key"]), int(message["size"]), batches, bool(message.get("retry"))
        )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ProtocolError(f"bad commit: {e!r}") from e


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


# Events ----------------------------------------------------------------------------


def raw_batches(body: bytes) -> bytes | None:
    """The `batches` array of a commit frame's body, as sent (it is the last member)."""
    start = body.rfind(b'"batches":')
    if start < 0 or not body.endswith(b"]}"):
        return None
    raw = body[start + len(b'"batches":') : -1]
    return raw if raw.startswith(b"[") else None


def applied_frame(objects: Sequence[SequencedObject], raw: Mapping[str, bytes]) -> bytes:
    """The stream event for committed objects, as one frame.

    Per object: its key, its batches as the agent sent them (`raw`, else encoded
    here) and its outcomes as stored; followers rebuild the coordinates. Nothing
    is encoded per batch for objects that came over the RPC.
    """
    parts = []
    for o in objects:
        batches = raw.get(o.object_key)
        if batches is None:
            batches = _ENCODER.encode([[b[0].hex, *b[1:]] for b in o.batches]).encode()
        parts.append(
            b"[%s,%s,%s]" % (_ENCODER.encode(o.object_key).encode(), batches,
                             outcomes_json(o).encode())
        )  # fmt: skip
    body = b'{"op":"applied","objects":[' + b",".join(parts) + b"]}"
    return LENGTH.pack(len(body)) + body


def applied_batches(event: Message) -> list[tuple[uuid.UUID, int, BatchLocation]]:
    """The coordinates of the batches an `applied` event stored, in commit order.

    Batches answered with an error have no coordinates; those answered as
    duplicates carry an offset the follower already has, so it skips them.
    """
    out = []
    for key, batches, outcomes in event["objects"]:
        for batch, (error, base_offset, append_time_ms, _) in zip(batches, outcomes, strict=True):
            if error:
                continue
            tid, partition, byte_offset, byte_length, count, _, max_timestamp_ms = batch[:7]
            location = BatchLocation(
                key,
                byte_offset,
                byte_length,
                base_offset,
                base_offset + count - 1,
                max_timestamp_ms,
                append_time_ms,
            )
            out.append((_topic_id(tid), partition, location))
    return out


def outcomes_reply_frame(request_id: int, outcomes: Sequence[CommitOutcome]) -> bytes:
    """The reply to a commit, as one frame; outcomes already encoded (the JSON the writer
    stored) are not encoded again."""
    if isinstance(outcomes, EncodedOutcomes):
        body = b'{"id":%d,"outcomes":%s}' % (request_id, outcomes.json.encode())
        return LENGTH.pack(len(body)) + body
    return encode(outcomes_reply(request_id, outcomes))
