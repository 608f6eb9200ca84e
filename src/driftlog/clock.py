"""Time and randomness as values passed in: the one place that reads the real clock.

Core code (sequencing, leases, group state, garbage collection) takes a `Clock`
or a `now_ms` argument and never calls `time` itself, so a seeded simulation can
drive it with `FakeClock` and a chosen interleaving (see tests/sim/).
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def wall_ms(self) -> int:
        """Milliseconds since the Unix epoch: timestamps, object keys, lease expiries."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes back: durations and local deadlines."""
        ...


class SystemClock:
    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_s(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to (tests and simulations)."""

    def __init__(self, wall_ms: int = 1_700_000_000_000) -> None:
        self._wall_ms = wall_ms
        self._monotonic_s = 1000.0

    def wall_ms(self) -> int:
        return self._wall_ms

    def monotonic_s(self) -> float:
        return self._monotonic_s

    def advance(self, ms: int) -> None:
        self._wall_ms += ms
        self._monotonic_s += ms / 1000


SYSTEM_CLOCK = SystemClock()
