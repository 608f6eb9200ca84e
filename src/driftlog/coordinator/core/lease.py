"""The writer lease: who may sequence a shard, and the fencing epoch. Pure: `now` is an argument.

A lease row per shard holds the writer's id and address, an epoch and an expiry
(wall-clock milliseconds). The rules:

- A candidate may take the lease when there is none, when it expired, or when
  the row names the candidate itself (a restarted process with the same agent
  id: the old process, if still alive, is fenced by the new epoch).
- Taking the lease is a compare-and-swap on the epoch it read, and increments
  it, so two candidates cannot both win.
- Every write transaction of the writer first updates the lease row where the
  epoch is its own; if no row matches, a newer writer exists and the
  transaction is rolled back (`Fenced`). The database's row lock orders that
  check against a takeover, so a deposed writer can never write.
- The writer renews the expiry every third of the lease. It steps down by
  itself when it could not renew for a whole lease measured on its own
  monotonic clock (by then a successor may be elected).

Safety rests on the epoch check alone; clocks only decide how soon a dead
writer is replaced (skew between agents delays or hastens a takeover, and the
fencing epoch keeps an early one safe).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    shard: int
    holder: str
    address: str
    epoch: int
    expires_ms: int


def may_acquire(record: LeaseRecord | None, holder: str, now_ms: int) -> bool:
    return record is None or record.holder == holder or record.expires_ms <= now_ms


@dataclass(slots=True)
class HeldLease:
    """The writer's own view of a lease it holds."""

    record: LeaseRecord
    lease_ms: int
    # Monotonic time of the last successful renewal (or acquisition).
    renewed_at_s: float

    @property
    def epoch(self) -> int:
        return self.record.epoch

    def renew_due(self, now_s: float) -> bool:
        return now_s - self.renewed_at_s >= self.lease_ms / 3000

    def time_left_s(self, now_s: float) -> float:
        """Seconds until the lease lapses by this process's own monotonic clock."""
        return self.renewed_at_s + self.lease_ms / 1000 - now_s

    def lapsed(self, now_s: float) -> bool:
        """True once a whole lease passed without a renewal: a successor may exist."""
        return now_s - self.renewed_at_s >= self.lease_ms / 1000
