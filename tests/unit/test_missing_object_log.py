"""The missing-object log: once per object per interval, every read counted, memory bounded."""

from __future__ import annotations

import pytest

from driftlog.read.missing import MissingObjects


def test_logs_each_object_once_per_interval_and_counts_every_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = MissingObjects(log_interval_s=60)
    logged = [
        missing.report("objects/a", "t", 0, 5, 9, now_s=0),
        missing.report("objects/a", "t", 0, 5, 9, now_s=30),  # retried: quiet
        missing.report("objects/b", "t", 1, 0, 0, now_s=31),  # another object: logged
        missing.report("objects/a", "t", 0, 5, 9, now_s=60),  # a minute on: logged again
    ]
    assert logged == [True, False, True, True]
    assert missing.count == 4
    lines = [r.getMessage() for r in caplog.records if "is missing" in r.getMessage()]
    assert len(lines) == 3
    assert "objects/a" in lines[0] and "topic t partition 0" in lines[0] and "5-9" in lines[0]


def test_tracks_a_bounded_number_of_objects() -> None:
    missing = MissingObjects(log_interval_s=60, tracked_max=3)
    for i in range(10):
        assert missing.report(f"objects/{i}", "t", 0, 0, 0, now_s=1)
    assert len(missing._logged_s) <= 3
    assert not missing.report("objects/9", "t", 0, 0, 0, now_s=2)  # the newest are kept
