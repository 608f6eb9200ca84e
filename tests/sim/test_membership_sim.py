"""Cluster membership under a seeded simulation: joins, clean leaves, deaths, database cuts.

See sim/membership.py for the model, the properties and their bounds. Each seed is one
test; a failure names its seed, prints the event log and replays exactly with
`run_seed(seed)`. Longer runs:

    DRIFTLOG_SIM_SEEDS=2000 DRIFTLOG_SIM_FIRST_SEED=1000 \\
        .venv/bin/pytest -q tests/sim/test_membership_sim.py -x

Seeds 5, 14, 20, 28, ... fail on a real bug: `Membership.close()` cancels its loop,
but the heartbeat in flight runs in the task `within` created, which nothing cancels,
so it can write the agent's row after `remove_agent` deleted it (an agent that left
cleanly is listed for another timeout), or, after a restart with the same id, over
the new incarnation's row with an older stamp (an agent beating on time is dropped).
`test_membership_if_close_stopped_its_heartbeat` runs the same seeds with that one
race removed: every other property holds.

`test_group_claims` runs the same seeds with agents committing offsets for the groups
they believe they coordinate, through real `GroupCoordinator`s and group claims: no
commit lands after its group's claim moved (so two agents' commits for one group never
both land), and once membership settles every group's commits land from its agreed
coordinator only. Without the database's check (`unfenced_commits`, Driftlog before
group claims) the fencing property fails, at once: agents starting together disagree.
"""

from __future__ import annotations

import os

import pytest
from sim.membership import SimConfig, SimFailure, run_seed

SEEDS = int(os.environ.get("DRIFTLOG_SIM_SEEDS", "100"))
FIRST_SEED = int(os.environ.get("DRIFTLOG_SIM_FIRST_SEED", "0"))


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_membership(seed: int) -> None:
    sim = run_seed(seed)
    # The run did something: agents came and went, faults were injected, and the
    # properties were checked after it settled.
    assert sim.incarnations >= 5, sim.events
    assert sim.faults_injected > 0
    assert sim.checks["converged checks"] > 0, sim.checks


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_membership_if_close_stopped_its_heartbeat(seed: int) -> None:
    run_seed(seed, SimConfig(close_stops_beat=True))


def test_a_seed_replays_exactly() -> None:
    first, second = run_seed(7), run_seed(7)
    assert first.events == second.events
    assert first.db == second.db


@pytest.mark.parametrize("seed", range(FIRST_SEED, FIRST_SEED + SEEDS))
def test_group_claims(seed: int) -> None:
    sim = run_seed(seed, SimConfig(groups=True))
    assert sim.committed > 0 and sim.landed, sim.events


def test_group_claims_are_needed() -> None:
    """The fencing property can fail: without the database's check it does, every seed."""
    fenced = 0
    for seed in range(5):
        sim = run_seed(seed, SimConfig(groups=True))
        fenced += sim.fenced  # refused commits: agents did disagree, and were fenced
        with pytest.raises(SimFailure, match=r"fencing: .* landed at .* after the claim moved"):
            run_seed(seed, SimConfig(groups=True, unfenced_commits=True))
    assert fenced > 0
