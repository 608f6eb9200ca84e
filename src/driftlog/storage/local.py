"""The local-directory object store (`file://`, the embedded default): one file per object.

Owns the mapping of keys to files (`root/key`, the layout obstore's LocalStore used,
so objects written before this adapter existed stay readable) and the durability of
what it stores. obstore's LocalStore never fsyncs, while the coordinator's SQLite
commits do: after a power loss the coordinator could point at a missing or empty
object. This adapter closes that hole.

Durability guarantee: when `put_new` returns, the object's bytes, its directory
entry and the entry of every directory on the way from the root have been fsynced,
so after a crash or power loss the whole object is under its key. Until it returns,
nothing or the whole object may be there, never part of one. How:

1. write the chunks to a new temporary file in the destination directory
   (`.tmp-<hex>`; keys never have a segment starting with a dot) and fsync it;
2. `link()` it to the key: unlike `rename()`, a link never replaces an existing
   name, so the put is create-only (a taken key is `ObjectAlreadyExists`) and the key
   only ever names a complete, fsynced file;
3. unlink the temporary name, then fsync the directory (one fsync makes both the
   new name and the removal durable).

A put that finds its key taken fsyncs the existing object and its directory before
raising `ObjectAlreadyExists`: the write path counts a taken key on a retry as its
own earlier, unacknowledged upload, so the object must be durable by then too.
After a crash, temporary files of puts that never returned may remain; `list_objects`
skips them. A delete is not fsynced: an object that reappears after a crash is an
unreferenced orphan, which deleting it meant anyway.

Blocking calls run on a small thread pool of the store's own, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from driftlog.storage.api import (
    LIST_PAGE_SIZE,
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreStats,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# writev() takes at most IOV_MAX buffers per call (1024 on Linux).
try:
    _IOV_MAX = max(os.sysconf("SC_IOV_MAX"), 16)
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024

_TEMP_PREFIX = ".tmp-"


def _write_all(fd: int, chunks: Sequence[bytes]) -> None:
    """Write every chunk, in order, with as few writev() calls as the kernel allows."""
    views = [memoryview(c).cast("B") for c in chunks if len(c)]
    i = 0
    while i < len(views):
        written = os.writev(fd, views[i : i + _IOV_MAX])
        if written <= 0:
            raise OSError(f"writev wrote {written} bytes")
        while written:
            if written >= len(views[i]):
                written -= len(views[i])
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


def _pread_exact(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length:
        return data
    buf = bytearray(data)
    while len(buf) < length:
        more = os.pread(fd, length - len(buf), offset + len(buf))
        if not more:
            end = offset + length
            raise ObjectStoreError(
                f"range {offset}-{end} ends beyond the object ({offset + len(buf)} bytes)"
            )
        buf += more
    return bytes(buf)


class LocalObjectStore:
    """Objects as files under `root`; `put_new` returns only once the object is durable.

    `fsync` is the seam tests use to see what was synced, and when.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: Callable[[int], None] = os.fsync,
        max_workers: int = 8,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._root = Path(os.path.abspath(root))
        self._fsync = fsync
        self._list_page_size = list_page_size
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="driftlog-local-store")
        # Directories whose entry (in their parent) this process has made durable.
        self._durable_dirs: set[Path] = set()
        self.stats = ObjectStoreStats()
        self._create_root()

    @property
    def root(self) -> Path:
        return self._root

    # ------------------------------------------------------------------ the seam

    async def put_new(self, key: str, chunks: Sequence[bytes]) -> None:
        self.stats.puts += 1
        path = self._path(key)
        try:
            await self._run(self._put, key, path, chunks)
        except (OSError, RuntimeError) as e:
            raise ObjectStoreError(f"put {key}: {e}") from e
        self.stats.bytes_put += sum(len(c) for c in chunks)

    async def get_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[memoryview]:
        self.stats.gets += 1
        path = self._path(key)
        for start, end in ranges:
            if start < 0 or end < start:
                raise ObjectStoreError(f"get {key}: bad range {start}-{end}")
        try:
            parts = await self._run(self._get, path, list(ranges))
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFound(key) from e
        except (ObjectStoreError, OSError, RuntimeError) as e:
            raise ObjectStoreError(f"get {key}: {e}") from e
        out = [memoryview(p) for p in parts]  # views of bytes: read-only
        self.stats.bytes_got += sum(len(p) for p in out)
        return out

    async def delete(self, key: str) -> None:
        self.stats.deletes += 1
        path = self._path(key)
        try:
            await self._run(os.unlink, path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except (OSError, RuntimeError) as e:
            raise ObjectStoreError(f"delete {key}: {e}") from e

    async def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        paths = [self._path(key) for key in keys]  # a bad key fails before anything is deleted
        self.stats.deletes += len(keys)
        try:
            await self._run(self._unlink_all, paths)
        except (OSError, RuntimeError) as e:
            raise ObjectStoreError(f"delete of {len(keys)} objects: {e}") from e

    async def list_objects(self, prefix: str) -> AsyncIterator[list[ObjectInfo]]:
        pages = self._iter_pages(prefix)
        try:
            while True:
                try:
                    # One page per hop to the thread pool: directories are read as we go.
                    page = await self._run(lambda: next(pages, None))
                except (OSError, RuntimeError) as e:
                    raise ObjectStoreError(f"list {prefix!r}: {e}") from e
                if page is None:
                    return
                yield page
        finally:
            # ValueError: a cancelled caller left the generator running in its thread;
            # it closes its directories when it is collected.
            with contextlib.suppress(ValueError):
                pages.close()

    async def close(self) -> None:
        # Calls already running finish; new ones fail with ObjectStoreError.
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ blocking parts

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def _path(self, key: str) -> Path:
        """`root/key`; refuses keys that could leave the root or collide with temporary files."""
        parts = key.split("/")
        if not key or "\0" in key or any(not p or p.startswith(".") for p in parts):
            raise ObjectStoreError(
                f"invalid object key {key!r}: must be a relative path whose segments"
                " are not empty and do not start with '.'"
            )
        return self._root.joinpath(*parts)

    def _put(self, key: str, path: Path, chunks: Sequence[bytes]) -> None:
        directory = path.parent
        self._make_durable(directory)
        temp = directory / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                _write_all(fd, chunks)
                self._fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, path)
            except FileExistsError:
                self._sync_existing(path)
                raise ObjectAlreadyExists(key) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        self._sync_dir(directory)

    def _sync_existing(self, path: Path) -> None:
        """Make an object found under a taken key durable, as a put of it would have."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)
        self._sync_dir(path.parent)

    def _sync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _create_root(self) -> None:
        """Create the root and its missing parents, fsyncing the directory each was made in.

        A root that already exists is left as it is (its parent may not even be readable).
        """
        created: list[Path] = []
        current = self._root
        while not current.is_dir() and current != current.parent:
            created.append(current)
            current = current.parent
        for path in reversed(created):
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not path.is_dir():
                    raise
            self._sync_dir(path.parent)
        self._durable_dirs.add(self._root)

    def _make_durable(self, directory: Path) -> None:
        """Create `directory` (under the root) and its missing parents; fsync each one's parent.

        Once per directory and process, whether it existed or not: a crashed process,
        or obstore's LocalStore, may have created it without making it durable.
        """
        if directory in self._durable_dirs:
            return
        missing: list[Path] = []
        current = directory
        while current not in self._durable_dirs:  # stops at the root at the latest
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(path).st_mode):
                    raise NotADirectoryError(f"{path} is not a directory") from None
            self._sync_dir(path.parent)
            # Only once its entry is durable: another thread that finds it here skips the sync.
            self._durable_dirs.add(path)

    def _get(self, path: Path, ranges: list[tuple[int, int]]) -> list[bytes]:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return [_pread_exact(fd, start, end - start) for start, end in ranges]
        finally:
            os.close(fd)

    @staticmethod
    def _unlink_all(paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(path)

    def _iter_pages(self, prefix: str) -> Generator[list[ObjectInfo], None, None]:
        """Pages of objects under `prefix`, scanning directories lazily (os.walk would hold
        a whole directory's names, millions for `objects/`). Skips temporary files."""
        page: list[ObjectInfo] = []
        pending: list[tuple[str, str]] = [(str(self._root), "")]  # (directory, its key prefix)
        while pending:
            directory, base = pending.pop()
            try:
                entries = os.scandir(directory)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed since its parent was read
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    key = base + entry.name
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            sub = key + "/"
                            if sub.startswith(prefix) or prefix.startswith(sub):
                                pending.append((entry.path, sub))
                            continue
                        if not key.startswith(prefix):
                            continue
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted while we list
                    if stat.S_ISREG(st.st_mode):
                        page.append(ObjectInfo(key, st.st_size, st.st_mtime_ns // 1_000_000))
                        if len(page) >= self._list_page_size:
                            yield page
                            page = []
        if page:
            yield page
