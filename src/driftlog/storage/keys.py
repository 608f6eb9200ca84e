"""Object keys: how they are made, and the upload time they carry.

A key starts with its upload time (`objects/<13-digit ms>-<uuid>`), so a
listing sorts by age and anyone can tell how old an object is without asking
the coordinator. Two promises rest on that time:

- The writer refuses to commit an object older than `max_commit_age_ms`.
- The garbage collector deletes an uncommitted object (an orphan) only once it
  is older than `orphan_grace_ms`, which is more than twice the commit age.

So an object the collector takes for an orphan can never be committed later,
as long as clocks disagree by less than `orphan_grace_ms - max_commit_age_ms`.
Pure: no I/O.
"""

from __future__ import annotations

import uuid

PREFIX = "objects/"
_TIME_DIGITS = 13


def new_object_key(now_ms: int) -> str:
    return f"{PREFIX}{now_ms:013d}-{uuid.uuid4().hex}"


def key_time_ms(key: str) -> int | None:
    """The upload time a key carries; None for a key not made by `new_object_key`."""
    if not key.startswith(PREFIX):
        return None
    digits = key[len(PREFIX) : len(PREFIX) + _TIME_DIGITS]
    if len(digits) != _TIME_DIGITS or not digits.isdigit():
        return None
    if key[len(PREFIX) + _TIME_DIGITS : len(PREFIX) + _TIME_DIGITS + 1] != "-":
        return None
    return int(digits)


def max_commit_age_ms(orphan_grace_ms: int) -> int:
    """How old an object may be when committed: half the orphan grace period."""
    return orphan_grace_ms // 2
