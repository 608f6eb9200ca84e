"""`ZoneCache` and `PeerClient` over real sockets: two agents of a zone sharing blocks
through the authenticated peer protocol, an owner that goes away, bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

from driftlog.clock import SystemClock
from driftlog.coordinator.runtime import peer_auth
from driftlog.coordinator.runtime.rpc import read_body
from driftlog.coordinator.runtime.rpc_messages import ProtocolError
from driftlog.read.zone.cache import ZoneCache
from driftlog.read.zone.ownership import ZoneAgent
from driftlog.read.zone.peers import PeerClient
from driftlog.storage.api import ObjectStore
from driftlog.storage.metered import MeteredObjectStore
from driftlog.storage.obstore import open_store

SECRET = b"a-cluster-secret-of-enough-bytes"
BLOCK = 64 * 1024


class PeerServer:
    """What the agent's RPC server does for zone cache frames: authenticate, then hand
    each frame to the cache; a frame it refuses closes that connection only."""

    def __init__(self, cache: ZoneCache) -> None:
        self.cache = cache
        self.server: asyncio.Server | None = None
        self.closed_for_protocol_errors = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        handshake = peer_auth.ServerHandshake(SECRET, secrets.token_bytes(32))
        try:
            writer.write(handshake.hello())
            answer = await reader.readexactly(peer_auth.CLIENT_PROOF_BYTES)
            writer.write(handshake.receive_proof(answer))
            while True:
                self.cache.on_frame(await read_body(reader), writer)
        except ProtocolError:
            self.closed_for_protocol_errors += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.close()
        await self.server.wait_closed()


class Zone:
    def __init__(self, shared: ObjectStore) -> None:
        self.shared = shared
        self.members: list[ZoneAgent] = []
        self.caches: dict[str, ZoneCache] = {}
        self.stores: dict[str, MeteredObjectStore] = {}
        self.servers: dict[str, PeerServer] = {}

    async def add(self, agent_id: str, timeout_s: float = 1.0) -> ZoneCache:
        store = MeteredObjectStore(self.shared)
        cache = ZoneCache(
            store,
            SystemClock(),
            me=agent_id,
            members=lambda: self.members,
            transport=PeerClient(SECRET),
            block_bytes=BLOCK,
            cache_bytes=16 * BLOCK,
            peer_timeout_s=timeout_s,
        )
        server = PeerServer(cache)
        address = await server.start()
        self.members = [*self.members, ZoneAgent(agent_id, address)]
        self.caches[agent_id], self.stores[agent_id], self.servers[agent_id] = cache, store, server
        return cache

    def gets(self) -> int:
        return sum(s.requests["get"] for s in self.stores.values())

    async def close(self) -> None:
        for agent_id, cache in self.caches.items():
            with contextlib.suppress(Exception):
                await self.servers[agent_id].stop()
            await cache.close()


@contextlib.asynccontextmanager
async def zone_of(*agent_ids: str) -> AsyncIterator[Zone]:
    zone = Zone(open_store("memory://"))
    for agent_id in agent_ids:
        await zone.add(agent_id)
    try:
        yield zone
    finally:
        await zone.close()


def _data(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


def _key_owned_by(cache: ZoneCache, agent_id: str) -> str:
    for i in range(1000):
        key = f"objects/{i}"
        if cache.owner((key, 0)).agent_id == agent_id:
            return key
    raise AssertionError("no key")


def test_a_zone_fetches_a_block_once_for_all_its_readers() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            key = _key_owned_by(a1, "a1")
            data = _data(3 * BLOCK + 100)  # four blocks
            await zone.shared.put_new(key, [data])
            wanted = [(10, 20), (BLOCK - 5, BLOCK + 5), (3 * BLOCK + 90, 3 * BLOCK + 100)]
            results = await asyncio.gather(
                *(cache.read(key, wanted) for cache in (a1, a2, a1, a2, a2))
            )
            for parts in results:
                assert [bytes(p) for p in parts] == [data[s:e] for s, e in wanted]
            # Blocks 0, 1 and 3 are read: each fetched once in the zone, whoever owns it.
            assert zone.gets() == 3
            assert a1.stats.peer_hits + a2.stats.peer_hits > 0
            assert a1.stats.served + a2.stats.served > 0
            await a2.read(key, [(0, 3 * BLOCK + 100)])  # everything: only block 2 is new
            assert zone.gets() == 4

    asyncio.run(scenario())


def test_the_uploader_warms_the_owner() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            key = _key_owned_by(a1, "a2")
            data = _data(BLOCK // 2)
            await zone.shared.put_new(key, [data])
            a1.warm_object(key, [data[:100], data[100:]], len(data))
            for _ in range(100):  # the warm frame is on its way
                if a2.blocks.peek((key, 0)):
                    break
                await asyncio.sleep(0.01)
            assert a2.stats.warms_kept == 1
            parts = await a1.read(key, [(5, 50)])
            assert bytes(parts[0]) == data[5:50]
            assert zone.gets() == 0

    asyncio.run(scenario())


def test_an_owner_that_is_gone_costs_one_failure_then_its_blocks_move() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2", "a3") as zone:
            a1 = zone.caches["a1"]
            keys = [f"objects/{i}" for i in range(60)]
            owned_by_a3 = [k for k in keys if a1.owner((k, 0)).agent_id == "a3"]
            assert len(owned_by_a3) >= 5
            for key in keys:
                await zone.shared.put_new(key, [_data(1000)])
            await zone.servers["a3"].stop()  # kill: connections reset, the port refuses
            loop = asyncio.get_running_loop()
            started = loop.time()
            for key in owned_by_a3:
                parts = await a1.read(key, [(0, 1000)])
                assert bytes(parts[0]) == _data(1000)
            assert loop.time() - started < 1.0  # refused at once, never the 1 s timeout
            assert a1.stats.fallbacks["unreachable"] == 1  # then a3 is suspect
            # Its blocks went to their next owner, the same one a2 would pick.
            a2 = zone.caches["a2"]
            a2.health.failed("a3", a2._clock.monotonic_s())
            for key in owned_by_a3:
                assert a1.owner((key, 0)) == a2.owner((key, 0))
                await a2.read(key, [(0, 1000)])
            assert zone.gets() == len(owned_by_a3)  # still once per block in the zone

    asyncio.run(scenario())


def test_a_silent_owner_is_left_after_the_timeout_and_remembered() -> None:
    async def scenario() -> None:
        async with zone_of("a1") as zone:
            a1 = zone.caches["a1"]
            a1.peer_timeout_s = 0.3
            silent = await asyncio.start_server(_swallow, "127.0.0.1", 0)
            address = f"127.0.0.1:{silent.sockets[0].getsockname()[1]}"
            zone.members = [*zone.members, ZoneAgent("hung", address)]
            keys = [
                k
                for k in (f"objects/{i}" for i in range(80))
                if a1.owner((k, 0)).agent_id == "hung"
            ]
            for key in keys[:4]:
                await zone.shared.put_new(key, [_data(500)])
            loop = asyncio.get_running_loop()
            started = loop.time()
            for key in keys[:4]:
                assert bytes((await a1.read(key, [(0, 500)]))[0]) == _data(500)
            elapsed = loop.time() - started
            assert 0.3 <= elapsed < 0.9  # one timeout, not four
            assert a1.stats.fallbacks["unreachable"] == 1
            silent.close()

    asyncio.run(scenario())


async def _swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A peer that accepts and never says anything (a paused process)."""
    with contextlib.suppress(Exception):
        await reader.read()
    writer.close()


def test_bad_frames_close_only_their_connection() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            host, _, port = zone.members[0].rpc_address.rpartition(":")
            from driftlog.coordinator.runtime.rpc import authenticate_to_server

            reader, writer = await asyncio.open_connection(host, int(port))
            await authenticate_to_server(reader, writer, SECRET)
            writer.write(b"\x00\x00\x00\x05\x20garb")  # a READ that does not decode
            assert await reader.read() == b""  # closed
            # Others still talk to a1.
            key = _key_owned_by(a2, "a1")
            await zone.shared.put_new(key, [_data(100)])
            assert bytes((await a2.read(key, [(0, 100)]))[0]) == _data(100)
            assert zone.servers["a1"].closed_for_protocol_errors == 1
            assert a2.stats.peer_hits == 1 and a1.stats.served == 1

    asyncio.run(scenario())


def test_a_missing_object_is_reported_as_missing_through_the_owner() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2") as zone:
            a2 = zone.caches["a2"]
            key = _key_owned_by(a2, "a1")
            from driftlog.storage.api import ObjectNotFound

            try:
                await a2.read(key, [(0, 10)])
            except ObjectNotFound:
                pass
            else:
                raise AssertionError("read a missing object")

    asyncio.run(scenario())


def test_an_owner_that_missed_asks_the_agent_that_held_the_block() -> None:
    async def scenario() -> None:
        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            key = _key_owned_by(a1, "a2")
            data = _data(5000)
            await zone.shared.put_new(key, [data])
            await a2.read(key, [(0, 10)])  # a2 owns it: one GET, held there
            assert zone.gets() == 1
            # a1 is asked for it as the next owner (by a peer that suspects a2): before a
            # GET, it asks a2 whether it holds the block, and gets it from there.
            parts = await a1.load(key, 0)
            assert bytes(parts) == data
            assert zone.gets() == 1 and a1.stats.handoffs == 1

    asyncio.run(scenario())


def test_read_ahead_loads_the_next_objects_of_a_sequential_reader() -> None:
    async def scenario() -> None:
        import uuid as uuid_module

        from driftlog.coordinator.api import BatchLocation
        from driftlog.read.cache import BatchCache
        from driftlog.read.zone.prefetch import ReadAhead
        from driftlog.read.zone.readahead import ReadAheadPlanner

        async with zone_of("a1") as zone:
            a1 = zone.caches["a1"]
            # Ten objects, one 1,000-byte batch of ten offsets each.
            for i in range(10):
                await zone.shared.put_new(f"objects/{i:02d}", [_data(1000)])
            log = [
                BatchLocation(f"objects/{i:02d}", 0, 1000, 10 * i, 10 * i + 9, 0, -1)
                for i in range(10)
            ]
            asked: list[int] = []

            async def find_batches(
                topic_id: uuid_module.UUID, partition: int, offset: int, max_bytes: int
            ) -> list[BatchLocation]:
                asked.append(offset)
                found = [loc for loc in log if loc.last_offset >= offset]
                return found[: max(1, max_bytes // 1000)]

            ahead = ReadAhead(ReadAheadPlanner(3000), find_batches, a1, BatchCache(1 << 20))
            topic = uuid_module.uuid4()
            for i in range(3):  # three sequential reads of one object each
                await a1.read(f"objects/{i:02d}", [(0, 1000)])
                ahead.after_reads([(topic, 0, 10 * i, 10 * i + 10, 100)])
            for _ in range(100):
                if a1.blocks.peek(("objects/05", 0)):
                    break
                await asyncio.sleep(0.01)
            assert asked == [30]  # after the second sequential read past the first
            assert all(a1.blocks.peek((f"objects/{i:02d}", 0)) for i in (3, 4, 5))
            gets = zone.gets()
            await a1.read("objects/03", [(0, 1000)])  # already here: no GET
            assert zone.gets() == gets
            await ahead.close()

    asyncio.run(scenario())


def test_a_peer_that_floods_without_reading_is_cut_off_alone() -> None:
    async def scenario() -> None:
        from driftlog.coordinator.runtime.rpc import authenticate_to_server
        from driftlog.read.zone import messages
        from driftlog.read.zone.messages import ReadRequest

        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            key = _key_owned_by(a2, "a1")
            await zone.shared.put_new(key, [_data(BLOCK)])
            host, _, port = zone.members[0].rpc_address.rpartition(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            await authenticate_to_server(reader, writer, SECRET)
            for i in range(600):  # whole-block reads, never reading the answers
                frame = messages.encode_read(ReadRequest(i, False, BLOCK, 0, key, ((0, BLOCK),)))
                writer.write(frame)
                if i % 50 == 0:
                    await asyncio.sleep(0.01)
            for _ in range(200):
                if zone.servers["a1"].closed_for_protocol_errors:
                    break
                await asyncio.sleep(0.02)
            assert zone.servers["a1"].closed_for_protocol_errors == 1
            writer.close()
            # a2 still reads through a1.
            assert bytes((await a2.read(key, [(0, 100)]))[0]) == _data(100)
            assert a2.stats.peer_hits == 1
            assert a1.stats.blocks_fetched == 1

    asyncio.run(scenario())


def test_the_write_path_store_warms_the_owner_at_upload() -> None:
    async def scenario() -> None:
        from driftlog.read.zone.warming import WarmingStore

        async with zone_of("a1", "a2") as zone:
            a1, a2 = zone.caches["a1"], zone.caches["a2"]
            keys = [f"objects/w{i}" for i in range(6)]
            uploads = WarmingStore(zone.stores["a1"], a1)
            for key in keys:
                await uploads.put_new(key, [_data(700), _data(300)])
            owned_by_a2 = [k for k in keys if a1.owner((k, 0)).agent_id == "a2"]
            assert owned_by_a2
            for _ in range(100):
                if all(a2.blocks.peek((k, 0)) for k in owned_by_a2):
                    break
                await asyncio.sleep(0.01)
            for key in keys:  # a1 keeps its own blocks, a2 got the others
                for reader in (a1, a2):
                    assert (
                        bytes((await reader.read(key, [(690, 710)]))[0])
                        == (_data(700) + _data(300))[690:710]
                    )
            assert zone.gets() == 0

    asyncio.run(scenario())
