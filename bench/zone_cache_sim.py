"""The shared cache per zone past one machine: a seeded simulation of 3 zones x 32 agents.

What it measures
----------------
`tests/sim/zone_cache.py` with real `ZoneCache` objects (one per agent, 32 per zone in
3 zones) on a fake clock: producers in zone a upload objects (the uploaders warm their
blocks' owners), each zone's tail consumers read every partition run of each new object
through the partition's leader in their zone, and a catch-up consumer group per zone
reads the log from its start, faster than it is produced. Agents join, leave cleanly and
die (kill -9) throughout the churn phase; peers are sometimes slow (no answer within the
fallback timeout) or busy. Then the churn stops and the run settles (the calm phase).

Printed, for the shared cache and for per-agent caches only (today without it: each agent
GETs what it reads that it did not upload): object GETs per GiB read per zone (the target:
at most 1.2 times the objects per GiB, read by every zone), GETs per distinct block read,
the block hit ratio (block reads answered by this agent's copy or its owner), fallbacks
and timeouts, and the peak block cache bytes per agent.

How to run
----------
    .venv/bin/python bench/zone_cache_sim.py                  # 3 x 32, seed 1
    .venv/bin/python bench/zone_cache_sim.py --agents 8 --seed 4 --steps 800
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sim.zone_cache import KIB, MIB, SimConfig, run_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=32, help="agents per zone at the start")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=600, help="100 ms steps")
    parser.add_argument(
        "--churn-every-steps", type=int, default=20, help="one join, leave or kill -9 per N steps"
    )
    parser.add_argument("--slow-peer-rate", type=float, default=0.0005)
    parser.add_argument("--busy-peer-rate", type=float, default=0.001)
    parser.add_argument("--cache-mib", type=int, default=16, help="block cache per agent")
    args = parser.parse_args()
    config = SimConfig(
        zones=("a", "b", "c"),
        agents_per_zone=args.agents,
        steps=args.steps,
        block_bytes=256 * KIB,
        object_bytes=(64 * KIB, 256 * KIB),
        objects_per_step=4,
        partitions_per_object=32,
        cache_bytes=args.cache_mib * MIB,
        slow_peer_rate=args.slow_peer_rate,
        busy_peer_rate=args.busy_peer_rate,
        catchup_from_step=args.steps // 3,
        catchup_objects_per_step=8,
        churn_every_steps=args.churn_every_steps,
        calm_from_step=args.steps * 2 // 3,
        min_agents_per_zone=max(2, args.agents // 2),
    )
    print(
        f"{len(config.zones)} zones x {args.agents} agents, seed {args.seed}, {args.steps} steps"
        f" of {config.step_ms} ms, blocks of {config.block_bytes // KIB} KiB, objects of"
        f" {config.object_bytes[0] // KIB}-{config.object_bytes[1] // KIB} KiB,"
        f" {config.cache_bytes // MIB} MiB of block cache per agent"
    )
    for label, shared in (("shared cache per zone", True), ("per-agent caches only", False)):
        started = time.monotonic()
        sim = run_seed(args.seed, dataclasses.replace(config, shared=shared))
        figures = sim.figures()
        peak = max(a.cache.blocks.size_bytes for a in sim.agents.values())
        print(f"\n{label} ({time.monotonic() - started:.1f} s to simulate):")
        print(
            f"  {sim.reads} partition reads, {len(sim.objects)} objects"
            f" ({figures['objects_per_gib']:.0f} objects/GiB,"
            f" {figures['blocks_per_gib']:.0f} blocks/GiB); churn: {sim.joins} joins,"
            f" {sim.leaves} leaves, {sim.deaths} kill -9"
        )
        for zone in config.zones:
            target = 1.2 * figures["objects_per_gib"]
            gets = figures[f"gets_per_gib_read_{zone}"]
            print(
                f"  zone {zone}: {gets:7.0f} GETs per GiB read"
                f" ({gets / figures['objects_per_gib']:.2f} x objects/GiB; target <="
                f" {target:.0f}), {figures[f'gets_per_block_read_{zone}']:.2f} GETs per"
                f" block read"
            )
        print(
            f"  hit ratio {figures['hit_ratio']:.3f}, fallbacks {figures['fallbacks']:.0f},"
            f" timeouts waited {figures['timeouts']:.0f}, peak block cache per agent"
            f" {peak / MIB:.1f} MiB"
        )


if __name__ == "__main__":
    main()
