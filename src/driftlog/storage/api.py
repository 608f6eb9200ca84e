"""The object-store seam: what the agent needs from S3-like storage, and nothing more.

Implementations must not retry behind the caller's back: the write path decides
what a failure means (a retriable error to the producer, never an ack).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

# Objects per page of a listing: S3's own page size, so one page costs one LIST request.
LIST_PAGE_SIZE = 1000


class ObjectAlreadyExists(Exception):
    """A create-only put found the key taken."""


class ObjectNotFound(Exception):
    pass


class ObjectStoreError(Exception):
    """Any other failure of the store (network, throttling, server error)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    last_modified_ms: int  # wall clock, as the store reports it


@dataclass(slots=True)
class ObjectStoreStats:
    """Requests as Driftlog issued them; one ranged GET call counts once.

    `deletes` counts keys: a bulk delete of 1,000 keys counts 1,000.
    """

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

    async def delete(self, key: str) -> None:
        """Delete one object; a key that does not exist is not an error."""
        ...

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete these objects (bulk requests where the store has them).

        Idempotent: keys that do not exist are not an error. On ObjectStoreError any
        subset may already be deleted; calling again with the same keys is the retry.
        """
        ...

    def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        """Every object whose key starts with `prefix` (a plain string prefix, as S3's).

        Yields non-empty pages of at most LIST_PAGE_SIZE objects, so memory stays
        bounded however many objects the store holds; the order is unspecified. Not a
        snapshot: objects put or deleted while the listing runs may or may not appear.
        Any page may fail with ObjectStoreError (each is a request of its own).
        """
        ...

    async def close(self) -> None: ...
