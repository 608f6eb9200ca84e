"""The shared cache per zone: the agents of a zone divide the object space by block.

Pure core: `blocks.py` (which aligned blocks cover the byte ranges a read needs),
`ownership.py` (which zone agent owns a block; peers that failed lately),
`block_cache.py` (the bounded LRU of blocks), `readahead.py` (what a sequential
reader will want next). `flight.py` joins concurrent loads of one block into one.
Adapters: `messages.py` (the peer frames, pure), `peers.py` (the client side of the
peer protocol), `cache.py` (`ZoneCache`: a read through the local cache, the owner,
or a direct GET; the owner's side of the protocol). See docs/ARCHITECTURE.md,
"Shared cache per zone".
"""
