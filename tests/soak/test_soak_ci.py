"""CI-sized soak: 45 s of four producers through a connection-cutting proxy, object-store
faults on, two kill -9 of the agent; nothing acknowledged may be lost or duplicated.

The full soak is `make soak DURATION=600` (tests/soak/checker.py). Run this one with
`-s` to see the table as it is printed; it is also in the failure message.
`DRIFTLOG_SOAK_SEED` picks another seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from soak.checker import SoakConfig, run_soak


@pytest.mark.timeout(420)  # the checker bounds each phase; 60-90 s when all is well
def test_soak_ci_nothing_acknowledged_is_lost_or_duplicated(tmp_path: Path) -> None:
    config = SoakConfig(
        duration_s=45,
        seed=int(os.environ.get("DRIFTLOG_SOAK_SEED", "1")),
        kill_interval_s=15,
        cut_rate=1.0,
        rate=400,
        flush_timeout_s=20,
        read_timeout_s=45,
        work_dir=tmp_path,
    )
    result = run_soak(config, emit=lambda line: print(line, flush=True))
    print(result.report, flush=True)
    assert result.ok, result.report
    assert result.kills == 2, result.report
    for producer in result.producers:
        # The run did something: most records were acknowledged despite the faults.
        assert producer.acked > 0.5 * producer.sent > 1000, result.report
