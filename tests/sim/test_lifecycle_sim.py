"""The storage lifecycle under a seeded simulation: GC, compaction, retention, faults.

See sim/lifecycle.py for the model and the invariants: nothing referenced is
ever deleted, every acknowledged batch reads back byte for byte at its
offsets, a fetch holding coordinates for less than the delete grace period
reads them, and at the end the store holds exactly the referenced objects.
Each seed is one test; a failure names its seed and replays exactly with
`run_seed`. Longer runs:

    DRIFTLOG_SIM_SEEDS=2000 DRIFTLOG_SIM_FIRST_SEED=1000 DRIFTLOG_SIM_STEPS=600 \\
        .venv/bin/pytest -q tests/sim/test_lifecycle_sim.py -x
"""

from __future__ import annotations

import os

import pytest
from sim.lifecycle import SimConfig, run_seed

SEEDS = int(os.environ.get("DRIFTLOG_SIM_SEEDS", "30"))
FIRST_SEED = int(os.environ.get("DRIFTLOG_SIM_FIRST_SEED", "0"))
STEPS = int(os.environ.get("DRIFTLOG_SIM_STEPS", "300"))

# More faults, more interleaving, shorter pages, smaller GC passes, clocks further apart.
HARSH = SimConfig(
    steps=STEPS,
    fail_before=0.08,
    lose_reply=0.08,
    max_yields=6,
    put_error=0.1,
    put_lost_ack=0.1,
    get_error=0.1,
    list_error=0.15,
    delete_error=0.3,
    list_page_size=3,
    gc_deletes_per_pass=2,
    max_skew_ms=10_000,
)


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_lifecycle(seed: int) -> None:
    sim = run_seed(seed, STEPS)
    stats = sim.summary()
    # The run did something: data was acknowledged, compacted, and garbage collected.
    assert stats["batches acknowledged"] > STEPS // 4, stats
    assert stats.get("batches relocated", 0) > 0, stats
    assert stats.get("dead objects deleted", 0) > 0, stats
    assert stats.get("orphans deleted", 0) > 0, stats
    assert stats.get("fetches read in grace", 0) > 0, stats


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + max(1, SEEDS // 6)))
def test_lifecycle_harsh(seed: int) -> None:
    sim = run_seed(seed, config=HARSH)
    assert sim.summary()["batches acknowledged"] > 0


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(7, 150), run_seed(7, 150)
    assert list(first.trace) == list(second.trace)
    assert first.summary() == second.summary()
    assert first.store.objects == second.store.objects
    assert first.db == second.db
