"""Objects the coordinator still points at but the store no longer has.

Owns the count and the log of such reads; does not decide what is missing (the Fetch
and ListOffsets handlers do, after re-reading the coordinates) nor answer clients.
A missing object is an operator's problem (a garbage collector or a person deleted
data still referenced), so each is logged with what it held, but at most once per
object per interval: consumers retry the same offset every few hundred milliseconds.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0
# Objects remembered for rate limiting; beyond this the oldest are forgotten (and
# could be logged again early), so memory stays bounded whatever goes missing.
TRACKED_OBJECTS_MAX = 10_000


class MissingObjects:
    def __init__(
        self, log_interval_s: float = LOG_INTERVAL_S, tracked_max: int = TRACKED_OBJECTS_MAX
    ) -> None:
        self.log_interval_s = log_interval_s
        self.tracked_max = tracked_max
        # Reads that found an object permanently missing: one per partition answered
        # with an error because of it (the agent's `missing_objects` counter).
        self.count = 0
        self._logged_s: OrderedDict[str, float] = OrderedDict()  # oldest log first

    def report(
        self,
        object_key: str,
        topic: str,
        partition: int,
        base_offset: int,
        last_offset: int,
        now_s: float,
    ) -> bool:
        """Count one read of a missing object; True when it was logged (not rate limited)."""
        self.count += 1
        while self._logged_s:
            key, logged_s = next(iter(self._logged_s.items()))
            if now_s - logged_s < self.log_interval_s and len(self._logged_s) < self.tracked_max:
                break
            del self._logged_s[key]
        if object_key in self._logged_s:
            return False
        self._logged_s[object_key] = now_s
        log.error(
            "object %s is missing from the store but still holds committed data:"
            " topic %s partition %d, the batch at offsets %d-%d (and any later ones in"
            " that object) cannot be read; readers get CORRUPT_MESSAGE (logged at most"
            " once per %.0f s per object)",
            object_key,
            topic,
            partition,
            base_offset,
            last_offset,
            self.log_interval_s,
        )
        return True
