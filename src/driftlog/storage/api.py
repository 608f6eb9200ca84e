"""The object-store seam: what the agent needs from S3-like storage, and nothing more.

Implementations must not retry behind the caller's back: the write path decides
what a failure means (a retriable error to the producer, never an ack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ObjectAlreadyExists(Exception):
    """A create-only put found the key taken."""


class ObjectNotFound(Exception):
    pass


class ObjectStoreError(Exception):
    """Any other failure of the store (network, throttling, server error)."""


@dataclass(slots=True)
class ObjectStoreStats:
    """Requests as Driftlog issued them; one ranged GET call counts once."""

    puts: int = 0
    gets: int = 0
    deletes: int = 0
    bytes_put: int = 0
    bytes_got: int = 0


class ObjectStore(Protocol):
    @property
    def stats(self) -> ObjectStoreStats: ...

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        """Store the concatenated `chunks` under `key`; ObjectAlreadyExists if the key is taken.

        Chunks are passed unjoined: the store copies them once, outside the GIL.
        """
        ...

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        """The bytes of each (start, end) range of one object, end exclusive (read-only views)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...
