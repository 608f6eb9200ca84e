"""The writer's per-commit CPU, step by step, in one process (no database, no sockets).

What it measures
----------------
The pure steps the writer runs for every object commit that comes over the writer
RPC, on rounds shaped like `bench/coordinator.py`'s (objects of `--batches` batches
on partitions drawn from a topic of `--partitions`, `--objects` objects per round):

- decode: a commit frame's body to a `CommitRequest` (plus what the stream keeps);
- sequence: offsets and outcomes (`Sequencer.sequence`), then `applied()`;
- arrays: a round's statement parameters (`postgres.py`: the columns as arrays),
  and the outcomes JSON;
- reply + stream: the commit replies and the round's `applied` frame;
- view: the local view's update (high watermarks, tail cache).

Each step is timed over many rounds (best of `--repeat`), in microseconds per
commit. The machine is shared, so compare runs made close together.

How to run
----------
    .venv/bin/python bench/writer_steps.py
    .venv/bin/python bench/writer_steps.py --objects 32 --batches 20
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from driftlog.coordinator.api import BatchToCommit, CommitRequest, EncodedOutcomes, TopicInfo
from driftlog.coordinator.core.sequencer import (
    PartitionSequence,
    SequencedObject,
    Sequencer,
    SequencerSnapshot,
)
from driftlog.coordinator.engines import postgres
from driftlog.coordinator.engines.backend import outcomes_json
from driftlog.coordinator.runtime import rpc_messages as messages
from driftlog.coordinator.runtime.view import CoordinatorView


def requests(
    rng: random.Random, topic_id: uuid.UUID, count: int, partitions: int, batches: int
) -> list[CommitRequest]:
    out = []
    for n in range(count):
        chosen = sorted(rng.sample(range(partitions), batches))
        out.append(
            CommitRequest(
                f"bench/{n}/{uuid.uuid4().hex}",
                20_000,
                [BatchToCommit(topic_id, p, i * 1000, 1000, 10, 1_700_000_000_000,
                               1_700_000_000_010) for i, p in enumerate(chosen)],
            )
        )  # fmt: skip
    return out


def best_us(step: Callable[[], Any], repeat: int, per: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best * 1e6 / per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10, help="objects per round")
    parser.add_argument("--batches", type=int, default=20, help="batches per object")
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(1)
    topic = TopicInfo("bench", uuid.uuid4(), args.partitions, {})
    tid = topic.topic_id
    rounds = [
        requests(rng, tid, args.objects, args.partitions, args.batches) for _ in range(args.rounds)
    ]
    commits = args.rounds * args.objects
    frames = [[messages.encode_commit(n, r) for n, r in enumerate(round_)] for round_ in rounds]
    bodies = [[f[4:] for f in round_] for round_ in frames]

    def snapshot() -> SequencerSnapshot:
        parts = {(tid, p): PartitionSequence() for p in range(args.partitions)}
        return SequencerSnapshot([topic], parts, {}, 1)

    def decode() -> None:
        for round_ in bodies:
            for body in round_:
                messages.decode_commit(body)

    sequenced: list[list[SequencedObject]] = []

    def sequence() -> None:
        sequencer = Sequencer(snapshot())
        sequenced.clear()
        for round_ in rounds:
            objs = [sequencer.sequence(r.object_key, r.object_size, r.batches, 0) for r in round_]
            sequencer.applied(objs)
            sequenced.append(objs)

    def arrays() -> None:
        for objs in sequenced:
            for o in objs:
                o.outcomes_json = ""
                outcomes_json(o)
            postgres._batch_arrays(objs)
            postgres._object_arrays(objs)

    raws = [
        {r.object_key: messages.decode_commit(b)[2] for r, b in zip(rr, bb, strict=True)}
        for rr, bb in zip(rounds, bodies, strict=True)
    ]

    def reply_and_stream() -> None:
        for objs, raw in zip(sequenced, raws, strict=True):
            for n, o in enumerate(objs):
                messages.outcomes_reply_frame(n, EncodedOutcomes(o.outcomes, outcomes_json(o)))
            messages.applied_frame(objs, raw)

    def view() -> None:
        v = CoordinatorView(None)  # type: ignore[arg-type]
        v.on_topic_put(topic)
        for objs in sequenced:
            v.on_applied(objs)

    sequence()
    results = {
        "decode": best_us(decode, args.repeat, commits),
        "sequence": best_us(sequence, args.repeat, commits),
        "arrays": best_us(arrays, args.repeat, commits),
        "reply + stream": best_us(reply_and_stream, args.repeat, commits),
        "view": best_us(view, args.repeat, commits),
    }
    print(
        f"{args.objects} objects of {args.batches} batches per round,"
        f" {args.partitions} partitions; µs per commit (best of {args.repeat})"
    )
    for name, us in results.items():
        print(f"  {name:16} {us:7.1f}")
    print(f"  {'total':16} {sum(results.values()):7.1f}")


if __name__ == "__main__":
    main()
