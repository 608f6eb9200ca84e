"""`ZoneCache`: a read of an object's byte ranges through the zone's shared cache.

For each block the ranges touch (`blocks.py`):
1. a copy this agent holds (a block it owns, one its uploader warmed, one it fetched
   while the owner was unreachable) answers at once;
2. a block this agent owns (`ownership.py`, over the zone's live agents less the
   suspects) is fetched with one GET, concurrent readers sharing it (single flight),
   and kept in the bounded block cache;
3. a block another agent owns is asked of it over the peer protocol (`messages.py`):
   only the ranges needed cross, the owner fetches the block once for every asker.
   If the owner does not answer within `peer_timeout_s` (dead, cut off, overloaded),
   says it is busy or that its GET failed, this agent fetches the block itself (one
   GET, kept here) and, when it did not answer, leaves it alone for `suspect_s`: its
   blocks go to their next owner, so later fetches neither wait for it nor all fall
   back to GETs. A fetch never fails because a peer is gone; an object the owner's
   GET found missing is reported as the store would (`ObjectNotFound`).

The owner's side: `on_frame` takes the peer frames the agent's RPC server receives
(READ answered from the cache or after one shared GET, at most `max_serving` at
once, else BUSY; WARM kept if absent). The uploader's side: `warm_object` sends each
block of an object it uploaded (right after the PUT, before the commit: `warming.py`)
to the block's owner (or keeps it, if its own), so readers in the producers' zone
read it without a GET. Other zones fetch each block
once: pushing it across zones would cost more in transfer than the GET it saves.

Time comes from the Clock; the store's errors pass through as the store raised them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from driftlog.clock import Clock
from driftlog.coordinator.api import AgentInfo
from driftlog.coordinator.runtime.rpc_messages import ProtocolError
from driftlog.read.zone import messages
from driftlog.read.zone.block_cache import BlockCache
from driftlog.read.zone.blocks import (
    BlockId,
    Range,
    RangeBeyondObject,
    block_span,
    check_block_bytes,
    object_blocks,
    plan_blocks,
    slice_range,
)
from driftlog.read.zone.flight import SingleFlight
from driftlog.read.zone.messages import ReadRequest, Status
from driftlog.read.zone.ownership import (
    DEFAULT_SUSPECT_S,
    PeerHealth,
    ZoneAgent,
    ZoneRing,
    rank,
)
from driftlog.read.zone.peers import PeerTransport, PeerUnavailable
from driftlog.storage.api import ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)

DEFAULT_BLOCK_BYTES = 16 * 1024 * 1024
DEFAULT_PEER_TIMEOUT_S = 1.0
# After the zone's membership changed, an owner that misses a block first asks the agent
# that owned it before (the next in the block's ranking) whether it holds it, for so long.
HANDOFF_WINDOW_S = 60.0
# How long that question, or one to the block's first owner, may take (a cache lookup).
HELD_ONLY_TIMEOUT_S = 0.25
# Peer reads the owner side runs at once; more are answered BUSY (the asker GETs).
MAX_SERVING = 256
# Reads one connection may have unanswered at once (askers keep 64 in flight); past it
# the peer is not reading its answers or floods: that connection is closed.
MAX_UNANSWERED_PER_CONNECTION = 256
FALLBACK_REASONS = ("unreachable", "busy", "error")

ReadBytes = bytes | memoryview


@dataclass(slots=True)
class ZoneCacheStats:
    blocks_fetched: int = 0  # GETs this agent issued for blocks
    bytes_fetched: int = 0
    local_hits: int = 0  # block reads answered by this agent's block cache
    peer_hits: int = 0  # block reads answered by their owner
    fallbacks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FALLBACK_REASONS, 0))
    served: int = 0  # peer reads this agent answered as owner
    served_busy: int = 0
    warms_sent: int = 0
    warms_kept: int = 0  # blocks kept: warmed by a peer, or uploaded here and owned here
    prefetches: int = 0  # blocks asked to be loaded ahead of a reader
    handoffs: int = 0  # blocks a miss here got from the agent that held them, not a GET


MembersFn = Callable[[], Sequence[ZoneAgent]]


class ZoneMembers:
    """The zone's live agents with an RPC address, from membership's list (re-derived only
    when membership replaces its list)."""

    def __init__(self, live: Callable[[], Sequence[AgentInfo]], me: str, zone: str) -> None:
        self._live = live
        self._me = me
        self._zone = zone
        self._seen: Sequence[AgentInfo] | None = None
        self._agents: tuple[ZoneAgent, ...] = ()

    def __call__(self) -> Sequence[ZoneAgent]:
        live = self._live()
        if live is not self._seen:
            self._seen = live
            self._agents = tuple(
                ZoneAgent(a.agent_id, a.rpc_address if a.agent_id != self._me else "")
                for a in live
                if a.zone == self._zone and (a.rpc_address or a.agent_id == self._me)
            )
        return self._agents


class ZoneCache:
    def __init__(
        self,
        store: ObjectStore,
        clock: Clock,
        *,
        me: str,
        members: MembersFn,
        transport: PeerTransport | None,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        cache_bytes: int = 256 * 1024 * 1024,
        peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
        suspect_s: float = DEFAULT_SUSPECT_S,
        warm: bool = True,
        max_serving: int = MAX_SERVING,
    ) -> None:
        self._store = store
        self._clock = clock
        self.me = me
        self._members = members
        self.transport = transport
        self.block_bytes = check_block_bytes(block_bytes)
        self.blocks = BlockCache(cache_bytes)
        self.health = PeerHealth(suspect_s)
        self.peer_timeout_s = peer_timeout_s
        self.warm_enabled = warm
        self.max_serving = max_serving
        self.stats = ZoneCacheStats()
        self._flight: SingleFlight[BlockId, memoryview] = SingleFlight()
        self._ring_of: Sequence[ZoneAgent] | None = None
        self._ring = ZoneRing(me, ())
        self._ring_changed_s = clock.monotonic_s()
        self._serving = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._unanswered: dict[int, int] = {}  # by connection (id of its writer)

    # Ownership ----------------------------------------------------------------------
    def ring(self) -> ZoneRing:
        members = self._members()
        if members is not self._ring_of:
            ring = ZoneRing(self.me, members)
            if ring.agents != self._ring.agents:
                self._ring_changed_s = self._clock.monotonic_s()
            self._ring_of, self._ring = members, ring
        return self._ring

    def owner(self, block: BlockId) -> ZoneAgent:
        return self.ring().owner(block, self.health.suspects(self._clock.monotonic_s()))

    # Reads ----------------------------------------------------------------------------
    async def read(self, key: str, ranges: Sequence[Range]) -> list[ReadBytes]:
        """The bytes of each range of one object (as `ObjectStore.get_ranges` returns them);
        raises ObjectNotFound or ObjectStoreError as the store would."""
        plan = plan_blocks(ranges, self.block_bytes)
        indexes = list(plan)
        if len(indexes) == 1:
            results = [await self._read_block(key, indexes[0], plan[indexes[0]])]
        else:
            results = await asyncio.gather(*(self._read_block(key, i, plan[i]) for i in indexes))
        pieces: dict[int, memoryview] = {}  # by absolute start
        for index, parts in zip(indexes, results, strict=True):
            for (start, _), data in zip(plan[index], parts, strict=True):
                pieces[start] = data
        return [_assemble(pieces, start, end) for start, end in ranges]

    async def _read_block(self, key: str, index: int, parts: list[Range]) -> list[memoryview]:
        block_id = (key, index)
        held = self.blocks.get(block_id)
        if held is not None:
            self.stats.local_hits += 1
            return self._slices(held, index, parts)
        owner = self.owner(block_id)
        try:
            return await self._ask(owner, key, index, parts)
        except PeerUnavailable as e:
            if e.timed_out:
                return self._slices(await self.load(key, index), index, parts)
        # Refused or reset (a dead process): its blocks' next owner, the same for every
        # agent that noticed, is asked once; then the store.
        try:
            return await self._ask(self.owner(block_id), key, index, parts)
        except PeerUnavailable:
            return self._slices(await self.load(key, index), index, parts)

    async def _ask(
        self, owner: ZoneAgent, key: str, index: int, parts: list[Range]
    ) -> list[memoryview]:
        """The parts, from `owner` (this agent: its cache or a GET); `PeerUnavailable` (the
        peer is then suspect) when it did not answer."""
        if owner.agent_id == self.me or self.transport is None or not owner.rpc_address:
            return self._slices(await self.load(key, index), index, parts)
        base = index * self.block_bytes
        relative = [(s - base, e - base) for s, e in parts]
        try:
            reply = await self.transport.read(
                owner, key, index, self.block_bytes, relative,
                prefetch=False, timeout_s=self.peer_timeout_s,
            )  # fmt: skip
        except PeerUnavailable as e:
            log.info("zone cache: %s did not answer (%s)", owner.agent_id, e)
            self.health.failed(owner.agent_id, self._clock.monotonic_s())
            self.stats.fallbacks["unreachable"] += 1
            raise
        if reply.status is Status.NOT_FOUND:
            raise ObjectNotFound(key)
        if reply.status is Status.OK and [len(p) for p in reply.parts] == [e - s for s, e in parts]:
            self.stats.peer_hits += 1
            return list(reply.parts)
        self.stats.fallbacks["busy" if reply.status is Status.BUSY else "error"] += 1
        return self._slices(await self.load(key, index), index, parts)

    def _slices(self, block: memoryview, index: int, parts: list[Range]) -> list[memoryview]:
        try:
            return [slice_range(block, index, self.block_bytes, s, e) for s, e in parts]
        except RangeBeyondObject as e:
            raise ObjectStoreError(str(e)) from e

    async def load(self, key: str, index: int) -> memoryview:
        """Block `index` of `key`: held, or fetched with one GET shared by concurrent callers."""
        block_id = (key, index)
        held = self.blocks.get(block_id)
        if held is not None:
            return held
        return await self._flight.do(block_id, lambda: self._fetch(key, index))

    async def _fetch(self, key: str, index: int) -> memoryview:
        held = await self._from_holder(key, index)
        if held is not None:
            self.stats.handoffs += 1
            self.blocks.put((key, index), held)
            return held
        (data,) = await self._store.get_ranges(key, [block_span(index, self.block_bytes)])
        view = memoryview(data).toreadonly()
        self.stats.blocks_fetched += 1
        self.stats.bytes_fetched += len(view)
        self.blocks.put((key, index), view)
        return view

    async def _from_holder(self, key: str, index: int) -> memoryview | None:
        """The block from the agent likely to hold it, when that is not this one: the
        block's first owner when this agent is not it (a peer that suspects it asked
        here), or, shortly after membership changed, the agent next in the ranking (it
        owned the block before this one joined or came back). None: ask the store."""
        if self.transport is None:
            return None
        now_s = self._clock.monotonic_s()
        ring = self.ring()
        suspects = self.health.suspects(now_s)
        ranked = [a for a in rank((key, index), ring.agents) if a.agent_id not in suspects]
        if len(ranked) < 2:
            return None
        if ranked[0].agent_id != self.me:
            holder = ranked[0]
        elif now_s - self._ring_changed_s < HANDOFF_WINDOW_S:
            holder = ranked[1]
        else:
            return None
        if not holder.rpc_address:
            return None
        try:
            reply = await self.transport.read(
                holder, key, index, self.block_bytes, (),
                prefetch=False, timeout_s=min(self.peer_timeout_s, HELD_ONLY_TIMEOUT_S),
                held_only=True,
            )  # fmt: skip
        except PeerUnavailable:
            return None  # not marked: a cache lookup is only worth a short wait
        if reply.status is Status.OK and len(reply.parts) == 1 and reply.parts[0]:
            return reply.parts[0]
        return None

    async def prefetch(self, key: str, ranges: Sequence[Range]) -> None:
        """Have the blocks holding `ranges` loaded by their owners (read-ahead); best effort."""
        for index in plan_blocks(ranges, self.block_bytes):
            block_id = (key, index)
            if self.blocks.peek(block_id):
                continue
            self.stats.prefetches += 1
            owner = self.owner(block_id)
            try:
                if owner.agent_id == self.me or self.transport is None or not owner.rpc_address:
                    await self.load(key, index)
                else:
                    await self.transport.read(
                        owner, key, index, self.block_bytes, (),
                        prefetch=True, timeout_s=self.peer_timeout_s,
                    )  # fmt: skip
            except (PeerUnavailable, ObjectNotFound, ObjectStoreError):
                continue  # the read itself will find out and do what it must

    # The owner's side -----------------------------------------------------------------
    def on_frame(self, body: bytes, writer: asyncio.StreamWriter) -> None:
        """A peer frame from the RPC server (READ or WARM); `ProtocolError` closes the
        connection it came on."""
        tag = body[0] if body else -1
        if tag == messages.WARM:
            self.accept_warm(messages.decode_warm(body))
        elif tag == messages.READ:
            request = messages.decode_read(body)
            connection = id(writer)
            unanswered = self._unanswered.get(connection, 0)
            if unanswered >= MAX_UNANSWERED_PER_CONNECTION:
                raise ProtocolError(f"more than {unanswered} reads unanswered")
            self._unanswered[connection] = unanswered + 1
            task = asyncio.create_task(self._answer(request, writer))
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._answered(t, connection))
        else:
            raise ProtocolError(f"not a zone cache frame (tag {tag})")

    def _answered(self, task: asyncio.Task[None], connection: int) -> None:
        self._tasks.discard(task)
        left = self._unanswered.pop(connection, 1) - 1
        if left > 0:
            self._unanswered[connection] = left

    async def _answer(self, request: ReadRequest, writer: asyncio.StreamWriter) -> None:
        status, parts = await self.serve(request)
        if writer.is_closing():
            return
        writer.writelines(messages.encode_reply(request.request_id, status, parts))
        try:
            await writer.drain()
        except (ConnectionError, RuntimeError):
            writer.close()

    async def serve(self, request: ReadRequest) -> tuple[Status, list[memoryview]]:
        """Answer a peer's read: the ranges asked, from the cache or after one shared GET."""
        if request.block_bytes != self.block_bytes or self._serving >= self.max_serving:
            self.stats.served_busy += 1
            return Status.BUSY, []
        if request.held_only:
            held = self.blocks.get((request.key, request.index))
            return (Status.MISS, []) if held is None else (Status.OK, [held])
        self._serving += 1
        try:
            block = await self.load(request.key, request.index)
        except ObjectNotFound:
            return Status.NOT_FOUND, []
        except Exception as e:  # the owner's GET failed: the asker tries the store itself
            log.info("zone cache: a peer's read of %s failed here: %r", request.key, e)
            return Status.ERROR, []
        finally:
            self._serving -= 1
        self.stats.served += 1
        if request.prefetch:
            return Status.OK, []
        if any(end > len(block) for _, end in request.ranges):
            return Status.ERROR, []
        return Status.OK, [block[s:e] for s, e in request.ranges]

    def accept_warm(self, warm: messages.Warm) -> None:
        block_id = (warm.key, warm.index)
        if warm.block_bytes == self.block_bytes and not self.blocks.peek(block_id):
            self.blocks.put(block_id, warm.data)
            self.stats.warms_kept += 1

    # The uploader's side --------------------------------------------------------------
    def warm_object(self, key: str, chunks: Sequence[bytes], size: int) -> None:
        """An object this agent uploaded: send each block to its owner (or keep it)."""
        if not self.warm_enabled or size <= 0:
            return
        ring = self.ring()
        if len(ring.agents) < 2:
            return  # alone in the zone: the batch cache already holds what was uploaded
        suspects = self.health.suspects(self._clock.monotonic_s())
        for index, data in enumerate(object_blocks(chunks, size, self.block_bytes)):
            block_id = (key, index)
            owner = ring.owner(block_id, suspects)
            if owner.agent_id == self.me or not owner.rpc_address:
                self.blocks.put(block_id, data)
                self.stats.warms_kept += 1
            elif self.transport is not None and self.transport.warm(
                owner, key, index, self.block_bytes, data
            ):
                self.stats.warms_sent += 1

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            await self.transport.close()


def _assemble(pieces: dict[int, memoryview], start: int, end: int) -> ReadBytes:
    """Range [start, end) from its pieces (one per block it touches, keyed by start)."""
    if start == end:
        return b""
    first = pieces.get(start)
    if first is None:  # inside a merged piece
        base = max(s for s in pieces if s <= start)
        first = pieces[base][start - base :]
    if len(first) >= end - start:
        return first[: end - start]
    out = bytearray(first)
    while len(out) < end - start:
        out += pieces[start + len(out)]
    return bytes(out[: end - start])
