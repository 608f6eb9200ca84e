"""SQLite persistence for the embedded coordinator (WAL mode). No object store, no kio.

Holds the durable copy of the coordinator state; the sequencing itself happens
in memory (`state.py`). Every method is synchronous and is called from one
dedicated thread, so one connection serves them all.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

from driftlog.coordinator.api import BatchLocation, CommittedOffset, TopicInfo
from driftlog.coordinator.state import CoordinatorState, PartitionLog, SequencedObject

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partition_count INTEGER NOT NULL,
    configs TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    log_start_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    object_id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    topic_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    object_id INTEGER NOT NULL REFERENCES objects (object_id),
    byte_offset INTEGER NOT NULL,
    byte_length INTEGER NOT NULL,
    max_timestamp_ms INTEGER NOT NULL,
    log_append_time_ms INTEGER NOT NULL,
    producer_id INTEGER NOT NULL,
    producer_epoch INTEGER NOT NULL,
    base_sequence INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producer_ids (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    next_producer_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed_offset INTEGER NOT NULL,
    leader_epoch INTEGER NOT NULL,
    metadata TEXT,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"""


class SqlitePersistence:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before producers are acknowledged.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def load(self) -> CoordinatorState:
        state = CoordinatorState()
        for topic_id, name, count, configs in self._db.execute(
            "SELECT topic_id, name, partition_count, configs FROM topics"
        ):
            state.put_topic(TopicInfo(name, uuid.UUID(topic_id), count, json.loads(configs)))
        for topic_id, partition, log_start in self._db.execute(
            "SELECT topic_id, partition, log_start_offset FROM partitions"
        ):
            log = state.logs.get((uuid.UUID(topic_id), partition))
            if log is not None:
                log.log_start_offset = log_start
                log.high_watermark = log.next_offset = max(log.high_watermark, log_start)
        keys = dict(self._db.execute("SELECT object_id, key FROM objects"))
        rows = self._db.execute(
            "SELECT topic_id, partition, base_offset, last_offset, object_id, byte_offset,"
            " byte_length, max_timestamp_ms, log_append_time_ms, producer_id, producer_epoch,"
            " base_sequence FROM batches ORDER BY topic_id, partition, base_offset"
        )
        current: tuple[str, int] | None = None
        log_: PartitionLog | None = None
        topic_uuid = uuid.UUID(int=0)
        for row in rows:
            tid, partition, base, last, object_id, start, length, max_ts, append_ts = row[:9]
            producer_id, producer_epoch, base_sequence = row[9:]
            if current != (tid, partition):
                current = (tid, partition)
                topic_uuid = uuid.UUID(tid)
                log_ = state.logs.get((topic_uuid, partition))
            if log_ is None:
                continue
            log_.append(
                BatchLocation(keys[object_id], start, length, base, last, max_ts, append_ts)
            )
            if producer_id >= 0:
                state.restore_producer(
                    producer_id,
                    producer_epoch,
                    topic_uuid,
                    partition,
                    base_sequence,
                    last - base + 1,
                    base,
                )
        for group_id, topic, partition, offset, epoch, metadata in self._db.execute(
            "SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata"
            " FROM group_offsets"
        ):
            state.put_offsets(
                group_id, [CommittedOffset(topic, partition, offset, epoch, metadata)]
            )
        return state

    def persist_objects(self, objects: Sequence[SequencedObject]) -> None:
        """Write many object commits in one transaction (the group commit)."""
        with self._transaction() as db:
            for obj in objects:
                cursor = db.execute(
                    "INSERT INTO objects (key, size, committed_ms) VALUES (?, ?, ?)",
                    (obj.object_key, obj.object_size, obj.committed_ms),
                )
                object_id = cursor.lastrowid
                db.executemany(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            str(r.topic_id),
                            r.partition,
                            r.location.base_offset,
                            r.location.last_offset,
                            object_id,
                            r.location.byte_offset,
                            r.location.byte_length,
                            r.location.max_timestamp_ms,
                            r.location.log_append_time_ms,
                            r.producer_id,
                            r.producer_epoch,
                            r.base_sequence,
                        )
                        for r in obj.rows
                    ],
                )

    def allocate_producer_id(self) -> int:
        with self._transaction() as db:
            row = db.execute("SELECT next_producer_id FROM producer_ids").fetchone()
            producer_id = row[0] if row else 0
            db.execute("INSERT OR REPLACE INTO producer_ids VALUES (0, ?)", (producer_id + 1,))
            return int(producer_id)

    def put_topic(self, topic: TopicInfo, old_partition_count: int = 0) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO topics VALUES (?, ?, ?, ?) ON CONFLICT (topic_id) DO UPDATE SET"
                " partition_count = excluded.partition_count, configs = excluded.configs",
                (str(topic.topic_id), topic.name, topic.partition_count, json.dumps(topic.configs)),
            )
            db.executemany(
                "INSERT INTO partitions VALUES (?, ?, 0)",
                [
                    (str(topic.topic_id), p)
                    for p in range(old_partition_count, topic.partition_count)
                ],
            )

    def drop_topic(self, topic: TopicInfo) -> None:
        topic_id = str(topic.topic_id)
        with self._transaction() as db:
            db.execute("DELETE FROM topics WHERE topic_id = ?", (topic_id,))
            db.execute("DELETE FROM partitions WHERE topic_id = ?", (topic_id,))
            db.execute("DELETE FROM batches WHERE topic_id = ?", (topic_id,))

    def put_offsets(self, group_id: str, offsets: Sequence[CommittedOffset]) -> None:
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO group_offsets VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (group_id, o.topic, o.partition, o.offset, o.leader_epoch, o.metadata)
                    for o in offsets
                ],
            )

    def delete_group(self, group_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM group_offsets WHERE group_id = ?", (group_id,))

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        if self._db.in_transaction:  # left open by an earlier failure
            self._db.execute("ROLLBACK")
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # SQLite may keep the transaction open after a failed COMMIT.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
