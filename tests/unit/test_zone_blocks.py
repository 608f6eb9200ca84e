"""The zone cache's pure core: blocks, ownership, suspects, the block LRU, single flight,
read-ahead planning and the peer frames."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftlog.coordinator.api import BatchLocation
from driftlog.coordinator.runtime.rpc_messages import ProtocolError
from driftlog.read.zone import messages
from driftlog.read.zone.block_cache import ENTRY_OVERHEAD_BYTES, BlockCache
from driftlog.read.zone.blocks import (
    RangeBeyondObject,
    object_blocks,
    plan_blocks,
    slice_range,
)
from driftlog.read.zone.flight import SingleFlight
from driftlog.read.zone.messages import ReadRequest, Status
from driftlog.read.zone.ownership import PeerHealth, ZoneAgent, ZoneRing
from driftlog.read.zone.readahead import ReadAheadPlanner

B = 1000


def test_plan_splits_at_block_boundaries_and_merges_within_a_block() -> None:
    plan = plan_blocks([(10, 20), (20, 30), (950, 2100), (5, 6)], B)
    assert plan == {0: [(5, 6), (10, 30), (950, 1000)], 1: [(1000, 2000)], 2: [(2000, 2100)]}
    assert plan_blocks([(7, 7)], B) == {}
    with pytest.raises(ValueError):
        plan_blocks([(5, 4)], B)


@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 800)), max_size=20))
def test_plan_covers_exactly_the_ranges(spans: list[tuple[int, int]]) -> None:
    ranges = [(s, s + n) for s, n in spans]
    plan = plan_blocks(ranges, B)
    covered = {b for parts in plan.values() for s, e in parts for b in range(s, e)}
    assert covered == {b for s, e in ranges for b in range(s, e)}
    for index, parts in plan.items():
        assert all(index * B <= s < e <= (index + 1) * B for s, e in parts)
        assert all(a[1] < b[0] for a, b in itertools.pairwise(parts))


def test_slices_of_a_short_last_block() -> None:
    block = memoryview(bytes(range(200)))
    assert bytes(slice_range(block, 3, B, 3010, 3020)) == bytes(range(10, 20))
    with pytest.raises(RangeBeyondObject):
        slice_range(block, 3, B, 3150, 3250)
    with pytest.raises(ValueError):
        slice_range(block, 3, B, 2990, 3010)


def test_object_blocks() -> None:
    blocks = object_blocks([b"a" * 1500, b"b" * 600], 2100, B)
    assert [len(b) for b in blocks] == [1000, 1000, 100]
    assert blocks[1] == b"a" * 500 + b"b" * 500
    with pytest.raises(ValueError):
        object_blocks([b"x"], 2, B)


def _agents(n: int) -> list[ZoneAgent]:
    return [ZoneAgent(f"agent-{i}", f"127.0.0.1:{9000 + i}") for i in range(n)]


def test_every_agent_agrees_on_owners_whatever_the_order() -> None:
    agents = _agents(5)
    shuffled = list(agents)
    random.Random(1).shuffle(shuffled)
    one, other = ZoneRing("agent-0", agents), ZoneRing("agent-3", shuffled)
    for i in range(200):
        assert one.owner(("k", i)) == other.owner(("k", i))
    counts = {a.agent_id: 0 for a in agents}
    for i in range(5000):
        counts[one.owner((f"objects/{i}", 0)).agent_id] += 1
    assert min(counts.values()) > 800  # about 1,000 each


def test_a_join_moves_only_the_blocks_the_new_agent_takes() -> None:
    before, after = ZoneRing("agent-0", _agents(4)), ZoneRing("agent-0", _agents(5))
    moved = 0
    for i in range(5000):
        old, new = before.owner((f"o{i}", 0)), after.owner((f"o{i}", 0))
        if old != new:
            moved += 1
            assert new.agent_id == "agent-4"
    assert 800 < moved < 1200  # about 1/5


def test_suspects_hand_their_blocks_to_the_next_owner_never_this_agent_out() -> None:
    ring = ZoneRing("agent-0", _agents(4))
    for i in range(300):
        block = (f"o{i}", 0)
        first = ring.owner(block)
        second = ring.owner(block, frozenset({first.agent_id}))
        assert second != first or first.agent_id == "agent-0"
        assert ring.owner(block, frozenset(a.agent_id for a in _agents(4))).agent_id == "agent-0"


def test_a_ring_always_holds_this_agent() -> None:
    ring = ZoneRing("me", [])
    assert ring.owner(("k", 0)).agent_id == "me"


def test_peer_health_forgets_after_the_suspect_time() -> None:
    health = PeerHealth(suspect_s=5.0)
    health.failed("b", now_s=100.0)
    assert health.suspects(104.9) == {"b"}
    assert health.suspects(105.1) == frozenset()
    health.failed("c", now_s=200.0)
    health.recovered("c")
    assert health.suspects(200.0) == frozenset()


def test_block_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = BlockCache(3 * (100 + ENTRY_OVERHEAD_BYTES))
    for i in range(3):
        cache.put(("k", i), bytes(100))
    assert cache.get(("k", 0)) is not None
    cache.put(("k", 3), bytes(100))
    assert cache.get(("k", 1)) is None
    assert cache.peek(("k", 0)) and cache.size_bytes <= cache.max_bytes
    cache.put(("big", 0), bytes(10_000))  # larger than the cache: not kept, nothing evicted
    assert not cache.peek(("big", 0)) and cache.entry_count == 3
    assert cache.evictions == 1


def test_single_flight_shares_one_load_and_its_failure() -> None:
    async def scenario() -> None:
        flight: SingleFlight[str, int] = SingleFlight()
        calls = 0
        gate = asyncio.Event()

        async def load() -> int:
            nonlocal calls
            calls += 1
            await gate.wait()
            return 7

        waiters = [asyncio.ensure_future(flight.do("k", load)) for _ in range(5)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one caller gives up: the others still get the result
        gate.set()
        results = await asyncio.gather(*waiters[1:])
        assert results == [7] * 4 and calls == 1 and flight.joined == 4
        assert not flight.running("k")

        async def broken() -> int:
            raise OSError("store down")

        outcomes = await asyncio.gather(
            flight.do("x", broken), flight.do("x", broken), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes)

    asyncio.run(scenario())


def _loc(base: int, length: int = 100) -> BatchLocation:
    return BatchLocation("o", 0, length, base, base + 9, 0, -1)


def test_read_ahead_starts_on_sequential_reads_behind_the_tail() -> None:
    planner = ReadAheadPlanner(window_bytes=1000, min_streak=2)
    assert planner.read("p", 0, 10, high_watermark=1000) is None
    assert planner.read("p", 10, 20, high_watermark=1000) is None
    lookup = planner.read("p", 20, 30, high_watermark=1000)
    assert lookup is not None and lookup.from_offset == 30 and lookup.max_bytes == 1000
    assert planner.read("p", 30, 40, high_watermark=1000) is None  # lookup pending
    planner.found(lookup, [_loc(30 + 10 * i) for i in range(10)])  # offsets 30..129
    assert planner.read("p", 40, 50, high_watermark=1000) is None  # less than half read
    again = planner.read("p", 80, 90, high_watermark=1000)  # a seek: streak restarts
    assert again is None
    planner.read("p", 90, 100, high_watermark=1000)
    later = planner.read("p", 100, 110, high_watermark=1000)
    assert later is not None and later.from_offset == 110


def test_read_ahead_leaves_tail_readers_alone() -> None:
    planner = ReadAheadPlanner(window_bytes=1000, min_streak=1)
    for offset in range(0, 100, 10):
        assert planner.read("p", offset, offset + 10, high_watermark=offset + 10) is None


def test_read_ahead_tracks_a_bounded_number_of_partitions() -> None:
    planner = ReadAheadPlanner(window_bytes=1000, max_partitions=10)
    for p in range(100):
        planner.read(p, 0, 10, 1000)
    assert planner.tracked == 10


def test_peer_frames_round_trip() -> None:
    request = ReadRequest(42, False, 1 << 20, 3, "objects/1-x", ((0, 10), (100, 1 << 20)))
    frame = messages.encode_read(request)
    assert messages.decode_read(frame[4:]) == request
    warm = b"".join(messages.encode_warm(1 << 20, 1, "objects/1-x", b"abc"))
    decoded = messages.decode_warm(warm[4:])
    assert (decoded.index, decoded.key, bytes(decoded.data)) == (1, "objects/1-x", b"abc")
    reply = b"".join(messages.encode_reply(42, Status.OK, [b"ab", memoryview(b"cde")]))
    parsed = messages.decode_reply(reply[4:])
    assert parsed.status is Status.OK and [bytes(p) for p in parsed.parts] == [b"ab", b"cde"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x20" + b"\x00" * 5,  # truncated head
        messages.encode_read(ReadRequest(1, False, 1000, 0, "k", ((0, 10),)))[4:] + b"x",
        messages.encode_read(ReadRequest(1, False, 1000, 0, "k", ((0, 10),)))[4:-8]
        + b"\x00\x00\x00\x10\x00\x00\x00\x05",  # end before start
        messages.encode_read(ReadRequest(1, False, 1000, 0, "k", ((0, 10),)))[4:-8]
        + b"\x00\x00\x00\x00\x00\x00\x07\xd0",  # past the block
    ],
)
def test_malformed_reads_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        messages.decode_read(body)


@given(st.binary(max_size=200))
def test_random_bytes_never_decode_into_anything_but_a_protocol_error(body: bytes) -> None:
    for decode in (messages.decode_read, messages.decode_warm, messages.decode_reply):
        with contextlib.suppress(ProtocolError):
            decode(body)
