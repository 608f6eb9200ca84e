"""Retention by time and by size: which log start each partition should move to. Pure.

Kafka deletes a log segment once its largest timestamp is older than
`retention.ms`, and the oldest segments while the log is larger than
`retention.bytes` (per partition). Here batches play the part of
segments: the log start moves to the first batch whose running-maximum
timestamp (the time index) is within `retention.ms`, and past the oldest whole
batches until at most `retention.bytes` remain. A topic's configs win over the
broker defaults; -1 turns a limit off. Moving the log start is what retention
does; the batches' bytes are reclaimed later, by garbage collection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000  # Kafka's log.retention.ms
DEFAULT_RETENTION_BYTES = -1  # Kafka's log.retention.bytes
DEFAULT_CHECK_MS = 60_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Broker-wide defaults and how often the writer applies them."""

    retention_ms: int = DEFAULT_RETENTION_MS
    retention_bytes: int = DEFAULT_RETENTION_BYTES
    check_ms: int = DEFAULT_CHECK_MS


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    retention_ms: int
    retention_bytes: int

    @property
    def unlimited(self) -> bool:
        return self.retention_ms < 0 and self.retention_bytes < 0


def limits_for(configs: Mapping[str, str], policy: RetentionPolicy) -> RetentionLimits:
    """A topic's limits: its own configs, else the broker defaults; none unless its
    cleanup.policy includes delete (a compact-only topic keeps every key's latest record
    however old, as in Kafka)."""
    if "delete" not in configs.get("cleanup.policy", "delete").split(","):
        return RetentionLimits(-1, -1)
    return RetentionLimits(
        _int(configs.get("retention.ms"), policy.retention_ms),
        _int(configs.get("retention.bytes"), policy.retention_bytes),
    )


def time_cutoff_ms(limits: RetentionLimits, now_ms: int) -> int | None:
    """Batches whose time index is before this are expired (None: no time limit)."""
    return None if limits.retention_ms < 0 else now_ms - limits.retention_ms


def _int(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return default
