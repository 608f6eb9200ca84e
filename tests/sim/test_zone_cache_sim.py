"""The shared cache per zone under a seeded simulation: joins, clean leaves, kill -9,
slow and busy peers, concurrent readers of one block.

See sim/zone_cache.py for the model and the properties. Each seed is one test; a
failure names its seed and replays exactly with `run_seed(seed)`. Longer runs:

    DRIFTLOG_SIM_SEEDS=500 .venv/bin/pytest -q tests/sim/test_zone_cache_sim.py -x

The 3 zones x 32 agents figures: `.venv/bin/python bench/zone_cache_sim.py`.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from sim.zone_cache import SimConfig, run_seed

SEEDS = int(os.environ.get("DRIFTLOG_SIM_SEEDS", "20"))
FIRST_SEED = int(os.environ.get("DRIFTLOG_SIM_FIRST_SEED", "0"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_zone_cache(seed: int) -> None:
    sim = run_seed(seed)
    # The run did something: membership changed, peers failed, and readers shared.
    assert sim.membership_changes >= 3, sim.events
    assert sum(sim.timeouts.values()) > 0
    assert sim.calm_start_s is not None
    figures = sim.figures()
    assert figures["hit_ratio"] > 0.8, figures


def test_without_churn_each_zone_fetches_each_block_once() -> None:
    config = dataclasses.replace(
        SimConfig(), churn_every_steps=10**9, slow_peer_rate=0.0, busy_peer_rate=0.0
    )
    sim = run_seed(3, config)
    # The producers' zone reads what its uploaders warmed: no GET at all.
    assert sim.store.gets_by_zone["a"] == 0
    for zone in ("b", "c"):
        fetched = {(key, start) for z, key, start in sim.store.gets_by_block if z == zone}
        assert len(fetched) == sum(sim.store.gets_by_block[(zone, *b)] for b in fetched)
        assert len(fetched) == len(sim.blocks_read_by_zone[zone])


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(11), run_seed(11)
    assert first.events == second.events
    assert first.store.gets_by_block == second.store.gets_by_block
    assert first.timeout_log == second.timeout_log
