"""Shared pieces of the fuzz tests: a corpus of valid requests and batches, mutations, and
a subprocess that decodes frames so that a frame which aborts the interpreter is caught.

Import as `fuzz.fuzzlib` (tests/ is on the path; tests/fuzz is a namespace package).
The subprocess is decode_worker.py.

Known broker bugs are listed below as flags. While a flag is True the fuzz tests
tolerate (and count) the symptom; each flag has a strict-xfail reproducer in the
test files, which starts failing once the bug is fixed: then set the flag to False.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import os
import select
import signal
import struct
import subprocess
import sys
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cramjam
import crc32c
from batch_builder import build_batch
from hypothesis import strategies as st
from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from driftlog.server.registry import SUPPORTED_VERSIONS

SEED = int(os.environ.get("DRIFTLOG_FUZZ_SEED", "20240611"))
"""Hypothesis seed of every fuzz test; set DRIFTLOG_FUZZ_SEED to explore other inputs."""

# Known bugs (see the module docstring) ---------------------------------------------

KNOWN_KIO_PREALLOCATION_ABORT = False
"""kio 0.6.5's native reader reserves `length * 8` bytes for an array before reading it,
so an array length of ~2**31 (or 2**32 compact) aborts the whole process ("memory
allocation of N bytes failed") on a machine with less memory than that."""

KNOWN_RECORD_TIMESTAMPS_UNBOUNDED = False
"""records/timestamps.record_timestamps iterates `recordsCount` times whatever the body
holds; a negative record length makes it loop in place, so a 65-byte batch claiming
2**31-1 records blocks the event loop for ~30 minutes and grows a list of 2**31 tuples."""

KNOWN_NULL_IN_NON_NULLABLE_FIELDS = False
"""kio 0.6.5 reads a length of -1 (null) for an array the schema does not make nullable
as None (it refuses a null non-nullable string), and decode_request passes the None
on: handlers then fail with TypeError
("'NoneType' object is not iterable"), which the listener logs as an internal error
with a traceback before closing the connection. Kafka rejects such a request as
malformed (a clean disconnect)."""

KNOWN_FRAME_BUFFER_PREALLOCATION = False
"""protocol/framing.FrameReceiver allocates (and zero-fills) a buffer for a whole large
frame as soon as its 4-byte size prefix arrives: each connection that sends 4 bytes
claiming a frame of --max-frame-bytes (100 MiB by default) costs the agent that much
resident memory, so a handful of idle connections can exhaust it."""

KNOWN_STALE_BUFFERED_BYTES = False
"""protocol/framing.FrameReceiver does not reset `_large_filled` when a frame larger than
the scratch buffer completes, so `buffered_bytes` keeps counting that frame afterwards
(only the property is wrong; nothing in the agent reads it today)."""

# Names used by the fuzz corpus ------------------------------------------------------

KNOWN_TOPIC = "fuzz-known"
"""Holds the records checked after fuzzing; the corpus never names it."""
TARGET_TOPIC = "fuzz-target"
DOOMED_TOPIC = "fuzz-doomed"
"""DeleteTopics in the corpus names this one, so fuzzing cannot delete the others."""
CREATED_TOPIC = "fuzz-created"
GROUP_ID = "fuzz-group"
BASE_TS = 1_700_000_000_000

_SIZE = struct.Struct(">i")


def frame(payload: bytes) -> bytes:
    return _SIZE.pack(len(payload)) + payload


# Record batches ----------------------------------------------------------------------

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
_XERIAL_HEADER = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)


def _compress(codec: int, data: bytes, xerial: bool) -> bytes:
    if codec == 1:
        return bytes(cramjam.gzip.compress(data))
    if codec == 2:
        if not xerial:
            return bytes(cramjam.snappy.compress_raw(data))
        out = bytearray(_XERIAL_HEADER)
        for i in range(0, max(len(data), 1), 32):
            block = bytes(cramjam.snappy.compress_raw(data[i : i + 32]))
            out += _SIZE.pack(len(block)) + block
        return bytes(out)
    if codec == 3:
        return bytes(cramjam.lz4.compress(data))
    if codec == 4:
        return bytes(cramjam.zstd.compress(data))
    return data


def refresh_crc(batch: bytes | bytearray) -> bytes:
    """The batch with its CRC-32C recomputed over bytes 21.. of the whole input."""
    out = bytearray(batch)
    if len(out) >= 21:
        struct.pack_into(">I", out, 17, crc32c.crc32c(bytes(out[21:])))
    return bytes(out)


def make_batch(
    values: Sequence[bytes],
    *,
    codec: int = 0,
    xerial: bool = False,
    base_timestamp_ms: int = BASE_TS,
    timestamp_step_ms: int = 1,
) -> bytes:
    """A valid magic-2 batch; records built by tests/batch_builder.py, then compressed."""
    plain = build_batch(
        list(values), base_timestamp_ms=base_timestamp_ms, timestamp_step_ms=timestamp_step_ms
    )
    if codec == 0:
        return plain
    body = _compress(codec, plain[61:], xerial)
    header = bytearray(plain[:61])
    struct.pack_into(">i", header, 8, 49 + len(body))
    struct.pack_into(">h", header, 21, codec)
    return refresh_crc(bytes(header) + body)


@st.composite
def valid_batches(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    """A valid batch and the (offset delta, timestamp) of each of its records."""
    values = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=8))
    codec = draw(st.sampled_from(sorted(CODECS)))
    xerial = draw(st.booleans())
    base = draw(st.integers(0, 2**41))
    step = draw(st.integers(-1000, 1000))
    batch = make_batch(
        values, codec=codec, xerial=xerial, base_timestamp_ms=base, timestamp_step_ms=step
    )
    return batch, [(i, base + i * step) for i in range(len(values))]


# Generic valid requests ---------------------------------------------------------------

_INTERESTING_TIMEDELTAS = {
    "max_wait": 0,
    "timeout": 1000,
    "session_timeout": 10_000,
    "rebalance_timeout": 1000,
    "retention_time": -1,
}


def _topic_name(api_key: int) -> str:
    if api_key == 20:
        return DOOMED_TOPIC
    if api_key == 19:
        return CREATED_TOPIC
    return TARGET_TOPIC


def _string_value(api_key: int, name: str) -> str:
    if name in ("name", "topic", "topic_name", "topics", "topic_names", "resource_name"):
        return _topic_name(api_key)
    if name in ("group_id", "groups", "groups_names"):
        return GROUP_ID
    if name in ("protocol_type",):
        return "consumer"
    if name in ("protocol_name",):
        return "range"
    if name in ("client_software_name",):
        return "driftlog-fuzz"
    if name in ("client_software_version",):
        return "1.0"
    if name in ("member_id", "rack_id", "client_rack"):
        return ""
    if name in ("key", "config_names"):
        return "retention.ms"
    if name in ("value",):
        return "3600000"
    return "x"


def _int_value(api_key: int, name: str) -> int:
    table = {
        "acks": -1,
        "replica_id": -1,
        "min_bytes": 1,
        "max_bytes": 1 << 20,
        "partition_max_bytes": 1 << 20,
        "fetch_offset": 0,
        "log_start_offset": -1,
        "current_leader_epoch": -1,
        "last_fetched_epoch": -1,
        "committed_leader_epoch": -1,
        "leader_epoch": -1,
        "generation_id": -1,
        "generation_id_or_member_epoch": -1,
        "committed_offset": 0,
        "timestamp": BASE_TS,
        "max_num_offsets": 1,
        "num_partitions": 1,
        "replication_factor": 1,
        "count": 4,
        "resource_type": 2,
        "config_operation": 0,
        "session_epoch": -1,
        "session_id": 0,
        "isolation_level": 0,
        "key_type": 0,
        "replica_epoch": -1,
    }
    return table.get(name, 0)


def _records_value() -> bytes:
    return make_batch([b"fuzz-a", b"fuzz-b"])


def build_entity(cls: type, api_key: int, overrides: dict[str, Any] | None = None) -> Any:
    """An instance of a kio entity with a plausible value in every field.

    Nested entities and arrays get one element; `overrides` applies to this level only.
    """
    overrides = overrides or {}
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            kwargs[f.name] = overrides[f.name]
            continue
        kwargs[f.name] = _field_value(f, api_key)
    return cls(**kwargs)


def _field_value(f: dataclasses.Field[Any], api_key: int) -> Any:
    field_type: Any = f.type
    optional = False
    if typing.get_origin(field_type) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(field_type) if a is not type(None)]
        field_type, optional = args[0], True
    kind = f.metadata.get("kafka_type")
    if typing.get_origin(field_type) is tuple:
        inner: Any = typing.get_args(field_type)[0]
        if dataclasses.is_dataclass(inner):
            return (build_entity(typing.cast(type, inner), api_key),)
        return (_scalar(kind, inner, f.name, api_key),)
    if dataclasses.is_dataclass(field_type):
        return build_entity(typing.cast(type, field_type), api_key)
    if optional and kind == "uuid":
        return uuid.UUID(int=0)
    return _scalar(kind, field_type, f.name, api_key)


def _scalar(kind: str | None, field_type: Any, name: str, api_key: int) -> Any:
    if kind == "string":
        return field_type(_string_value(api_key, name))
    if kind == "bytes":
        return b""
    if kind == "records":
        return _records_value()
    if kind == "bool":
        return name == "allow_auto_topic_creation"
    if kind == "uuid":
        return uuid.UUID(int=0)
    if kind == "timedelta_i32" or kind == "timedelta_i64":
        ms = _INTERESTING_TIMEDELTAS.get(name, 1000)
        return field_type.parse(datetime.timedelta(milliseconds=ms))
    if kind == "float64":
        return field_type(float(_int_value(api_key, name)))
    if kind is not None and "int" in kind:
        return field_type(_int_value(api_key, name))
    raise TypeError(f"no value for field {name} of kind {kind}")


def encode_request(request: Any, correlation_id: int = 7, client_id: str = "fuzz") -> bytes:
    """Header and body of a request, without the size prefix."""
    header_cls = request.__header_schema__
    fields = {
        "request_api_key": request.__api_key__,
        "request_api_version": request.__version__,
        "correlation_id": correlation_id,
        "client_id": client_id,
    }
    present = {f.name for f in dataclasses.fields(header_cls)}
    buf = io.BytesIO()
    entity_writer(header_cls)(buf, header_cls(**{k: v for k, v in fields.items() if k in present}))
    entity_writer(type(request))(buf, request)
    return buf.getvalue()


@dataclass(frozen=True)
class Seed:
    """A valid request payload (header and body, no size prefix)."""

    label: str
    api_key: int
    api_version: int
    payload: bytes


def _variants(api_key: int, version: int) -> list[tuple[str, dict[str, Any]]]:
    """Extra top-level overrides worth a seed of their own."""
    schema = load_request_schema(api_key, version)
    out: list[tuple[str, dict[str, Any]]] = [("default", {})]
    if api_key == 0:
        module = sys.modules[schema.__module__]
        for codec in (1, 3, 4):
            records = make_batch([b"c%d" % i for i in range(5)], codec=codec)
            part = build_entity(module.PartitionProduceData, 0, {"records": records})
            topic = build_entity(module.TopicProduceData, 0, {"partition_data": (part,)})
            out.append((f"codec{codec}", {"topic_data": (topic,)}))
        two = _records_value() + make_batch([b"second"])
        part = build_entity(module.PartitionProduceData, 0, {"records": two})
        topic = build_entity(module.TopicProduceData, 0, {"partition_data": (part,)})
        out.append(("two-batches", {"topic_data": (topic,)}))
        out.append(("acks0", {"acks": 0}))
    if api_key == 2:
        module = sys.modules[schema.__module__]
        for ts in (-1, -2, -3, BASE_TS + 2):
            part = build_entity(module.ListOffsetsPartition, 2, {"timestamp": ts})
            topic = build_entity(module.ListOffsetsTopic, 2, {"partitions": (part,)})
            out.append((f"ts{ts}", {"topics": (topic,)}))
    topics = next((f for f in dataclasses.fields(schema) if f.name == "topics"), None)
    if api_key in (3, 9) and topics is not None and type(None) in typing.get_args(topics.type):
        out.append(("all-topics", {"topics": None}))  # nullable here: all topics
    return out


def request_corpus() -> list[Seed]:
    """One or more valid requests for every API key and version the agent serves."""
    seeds: list[Seed] = []
    for api_key, (low, high) in sorted(SUPPORTED_VERSIONS.items()):
        for version in range(low, high + 1):
            schema = load_request_schema(api_key, version)
            for label, overrides in _variants(api_key, version):
                request = build_entity(schema, api_key, overrides)
                payload = encode_request(request)
                seeds.append(Seed(f"{api_key}v{version}-{label}", api_key, version, payload))
    return seeds


CORPUS = request_corpus()


def decode_response(api_key: int, api_version: int, payload: bytes) -> tuple[int, Any]:
    """(correlation id, body) of a response payload; raises if it is not well formed."""
    schema = load_response_schema(api_key, api_version)
    header, header_size = entity_reader(schema.__header_schema__)(payload, 0)
    body, body_size = entity_reader(schema)(payload, header_size)  # sizes, not offsets
    if header_size + body_size != len(payload):
        raise ValueError(f"{len(payload) - header_size - body_size} trailing bytes in the response")
    return int(header.correlation_id), body


def null_in_non_nullable_field(entity: Any, path: str = "") -> str | None:
    """The path of the first field holding None although its schema is not nullable."""
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        here = f"{path}.{f.name}" if path else f.name
        field_type: Any = f.type
        nullable = typing.get_origin(field_type) in (types.UnionType, typing.Union) and (
            type(None) in typing.get_args(field_type)
        )
        if value is None:
            if not nullable:
                return here
            continue
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                if item is None:
                    return f"{here}[{i}]"  # no kio array holds nullable items
                if dataclasses.is_dataclass(item):
                    found = null_in_non_nullable_field(item, f"{here}[{i}]")
                    if found is not None:
                        return found
        elif dataclasses.is_dataclass(value):
            found = null_in_non_nullable_field(value, here)
            if found is not None:
                return found
    return None


# Mutations ---------------------------------------------------------------------------

_INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"\x00\x00\x10\x00",
    b"\x00\x00\xff\xff",
    b"\xff\xff\xff\xff\x0f",  # uvarint 2**32 - 1
    b"\x80\x80\x80\x80\x08",  # uvarint 2**31
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # 10-byte varint
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",  # never-ending varint
]

Mutation = Callable[[bytes], bytes]


@st.composite
def _mutation(draw: st.DrawFn, protect: int) -> Mutation:
    """One edit; positions below `protect` are left alone (e.g. the api key and version)."""
    kind = draw(
        st.sampled_from(["flip", "set", "interesting", "truncate", "insert", "delete", "dup"])
    )
    where = draw(st.floats(0.0, 1.0, allow_nan=False))
    bit = draw(st.integers(0, 7))
    junk = draw(st.binary(min_size=1, max_size=16))
    interesting = draw(st.sampled_from(_INTERESTING))
    span = draw(st.integers(1, 32))

    def pos(data: bytes, extra: int = 0) -> int:
        room = len(data) - protect + extra
        return protect + min(int(where * room), max(room - 1, 0)) if room > 0 else len(data)

    def apply(data: bytes) -> bytes:
        if kind == "truncate":
            return data[: pos(data, 1)]
        if kind == "insert":
            p = pos(data, 1)
            return data[:p] + junk + data[p:]
        if len(data) <= protect:
            return data
        p = pos(data)
        if kind == "flip":
            return data[:p] + bytes([data[p] ^ (1 << bit)]) + data[p + 1 :]
        if kind == "set":
            return data[:p] + junk[:1] + data[p + 1 :]
        if kind == "interesting":
            return data[:p] + interesting + data[p + len(interesting) :]
        if kind == "delete":
            return data[:p] + data[p + span :]
        return data[:p] + data[p : p + span] * 2 + data[p + span :]  # dup

    return apply


def mutate(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    for m in mutations:
        data = m(data)
    return data


def mutations(protect: int = 0, max_size: int = 4) -> st.SearchStrategy[list[Mutation]]:
    return st.lists(_mutation(protect), min_size=1, max_size=max_size)


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[Seed, bytes]:
    """A corpus request with a few edits, sometimes decoded under another API version."""
    seed = draw(st.sampled_from(CORPUS))
    payload = seed.payload
    if draw(st.integers(0, 9)) == 0:
        # Same body, other version of the same API: exercises cross-version decoding.
        low, high = SUPPORTED_VERSIONS[seed.api_key]
        payload = payload[:2] + struct.pack(">h", draw(st.integers(low, high))) + payload[4:]
    # Keep the api key mostly intact so the edits reach the body readers.
    protect = draw(st.sampled_from([0, 2, 8, 8, 8]))
    payload = mutate(payload, draw(mutations(protect)))
    return seed, payload


# Field-level mutations: valid encodings with hostile values ----------------------------

_INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_STRINGS = [
    TARGET_TOPIC,
    DOOMED_TOPIC,
    GROUP_ID,
    "",
    ".",
    "..",
    "x" * 300,
    "\u00e9\u4e2d\U0001f600",
    "range",
    "consumer",
    "retention.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "LogAppendTime",
    "cleanup.policy",
    "compact",
]
_COUNT_FIELDS = {"num_partitions", "count", "replication_factor"}
"""Partition counts: only small or refused values, so one request cannot make the agent
create thousands of partitions and slow down every later Metadata answer."""


def _int_strategy(kind: str, name: str) -> st.SearchStrategy[int]:
    bits = _INT_BITS[kind]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if name in _COUNT_FIELDS:
        return st.sampled_from([-2, -1, 0, 1, 2, 3, 10_001, high])
    edges = [0, 1, -1, 2, 3, low, high, low + 1, high - 1, 100, 1 << (bits - 2)]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _records_strategy() -> st.SearchStrategy[bytes | None]:
    def edited(made: tuple[bytes, list[tuple[int, int]]], edits: list[Mutation]) -> bytes:
        return mutate(made[0], edits)

    return st.one_of(
        st.just(None),
        st.just(b""),
        valid_batches().map(lambda made: made[0]),
        st.lists(valid_batches(), min_size=2, max_size=3).map(
            lambda batches: b"".join(b for b, _ in batches)
        ),
        st.builds(edited, valid_batches(), mutations()),
        st.builds(edited, valid_batches(), mutations()).map(refresh_crc),
        st.binary(max_size=80),
    )


def _value_strategy(f: dataclasses.Field[Any], api_key: int) -> st.SearchStrategy[Any] | None:
    """Hostile but encodable values for a field; None when it has no scalar kind."""
    field_type: Any = f.type
    nullable = False
    if typing.get_origin(field_type) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(field_type) if a is not type(None)]
        field_type, nullable = args[0], True
    kind = f.metadata.get("kafka_type")
    base: st.SearchStrategy[Any]
    if typing.get_origin(field_type) is tuple or dataclasses.is_dataclass(field_type):
        return st.none() if nullable else None
    if kind in _INT_BITS:
        base = _int_strategy(kind, f.name).map(field_type)
    elif kind == "string":
        base = st.one_of(st.sampled_from(_STRINGS), st.text(max_size=20)).map(field_type)
    elif kind == "bytes":
        base = st.binary(max_size=40)
    elif kind == "records":
        return _records_strategy()
    elif kind == "bool":
        base = st.booleans()
    elif kind == "uuid":
        base = st.one_of(st.just(uuid.UUID(int=0)), st.uuids())
    elif kind in ("timedelta_i32", "timedelta_i64"):
        high = 2**31 - 1 if kind == "timedelta_i32" else 2**40
        ms = st.sampled_from([-1, 0, 1, 100, 1000, high, -(2**31)])
        base = ms.map(lambda n: field_type.parse(datetime.timedelta(milliseconds=n)))
    else:
        return None
    return st.one_of(base, st.none()) if nullable else base


def _strip_optional(field_type: Any) -> Any:
    if typing.get_origin(field_type) in (types.UnionType, typing.Union):
        return next(a for a in typing.get_args(field_type) if a is not type(None))
    return field_type


def _mutate_entity(draw: st.DrawFn, entity: Any, api_key: int, depth: int = 0) -> Any:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(entity):
        value = getattr(entity, f.name)
        choice = draw(st.integers(0, 9))
        if choice >= 3:
            continue  # most fields keep their plausible value
        inner = _strip_optional(f.type)
        if typing.get_origin(inner) is tuple and value is not None:
            item_type = typing.get_args(inner)[0]
            if choice == 0:
                changes[f.name] = ()
            elif choice == 1 and value:
                changes[f.name] = value + value  # duplicates
            elif dataclasses.is_dataclass(item_type) and depth < 4:
                changes[f.name] = tuple(
                    _mutate_entity(draw, item, api_key, depth + 1) for item in value
                )
            continue
        if dataclasses.is_dataclass(inner) and value is not None and depth < 4:
            changes[f.name] = _mutate_entity(draw, value, api_key, depth + 1)
            continue
        strategy = _value_strategy(f, api_key)
        if strategy is not None:
            changes[f.name] = draw(strategy)
    return dataclasses.replace(entity, **changes) if changes else entity


@st.composite
def field_mutated_requests(draw: st.DrawFn) -> tuple[Seed, bytes]:
    """A corpus request re-encoded with hostile field values: it always decodes, so the
    handlers (not the decoder) meet the values."""
    from driftlog.protocol.codec import decode_request

    seed = draw(st.sampled_from(CORPUS))
    body = decode_request(seed.payload, SUPPORTED_VERSIONS).body
    mutated = _mutate_entity(draw, body, seed.api_key)
    return seed, encode_request(mutated, correlation_id=draw(st.integers(-(2**31), 2**31 - 1)))


# The decode worker ------------------------------------------------------------------

WORKER = "decode_worker.py"


@dataclass(frozen=True)
class WorkerVerdict:
    aborted: bool
    hung: bool
    detail: str

    @property
    def is_known_kio_abort(self) -> bool:
        return self.aborted and "memory allocation of" in self.detail


class DecodeWorker:
    """A subprocess that runs decode_request on frames we send it, one at a time."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "RUST_BACKTRACE": "0"}
        self._process = subprocess.Popen(
            [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: close() ends it and its child
        )
        return self._process

    def check(self, payload: bytes) -> WorkerVerdict:
        process = self._process if self._process is not None else self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(frame(payload))
            process.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([process.stdout], [], [], self.timeout_s)
        if not ready:
            self.close()
            return WorkerVerdict(False, True, f"no answer in {self.timeout_s}s")
        line = process.stdout.readline()
        if not line:
            return self._died()
        detail = line.decode().strip()
        return WorkerVerdict(detail.startswith("aborted"), False, detail)

    def _died(self) -> WorkerVerdict:
        process = self._process
        assert process is not None and process.stderr is not None
        process.wait(10)
        stderr = process.stderr.read().decode(errors="replace")
        self._process = None
        head = "\n".join(stderr.strip().splitlines()[:3])
        return WorkerVerdict(True, False, f"exit {process.returncode}: {head}")

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the child and then the worker exit at end of input
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a hung child, if any
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
