"""The local-directory store: durable (fsynced) before put_new returns, create-only, contained.

Real files under tmp_path. fsync goes through the store's injectable seam, and
os.writev / os.link are wrapped, so the tests see the order of events.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import LocalStore

from driftlog.storage.api import (
    ObjectAlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
)
from driftlog.storage.local import LocalObjectStore
from driftlog.storage.obstore import open_store

KEY = "objects/0001764000000000-0123456789abcdef0123456789abcdef"
DATA = [b"first chunk|", b"", b"second|", b"x" * 100_000]
JOINED = b"".join(DATA)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@dataclass
class Recorder:
    """Records writes, links and fsyncs, with what each fsync'd descriptor was."""

    events: list[tuple[str, ...]] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)  # inode -> name, for directories
    fail_file_fsync: bool = False

    def name(self, *paths: Path) -> None:
        for path in paths:
            self.names[path.stat().st_ino] = path.name

    def fsync(self, fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            self.events.append(("fsync-dir", str(st.st_ino)))
        else:
            if self.fail_file_fsync:
                raise OSError(errno.EIO, "injected fsync failure")
            self.events.append(("fsync-file", str(st.st_ino), str(st.st_size)))
        os.fsync(fd)

    def view(self) -> list[tuple[str, ...]]:
        """The events, with directories named (by inode) as `name` recorded them."""
        return [
            (kind, self.names.get(int(rest[0]), f"inode {rest[0]}"))
            if kind == "fsync-dir"
            else (kind, *rest)
            for kind, *rest in self.events
        ]

    def kinds(self) -> list[str]:
        return [event[0] for event in self.events]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    rec = Recorder()
    real_writev, real_link = os.writev, os.link

    def writev(fd: int, buffers: Any) -> int:
        rec.events.append(("write",))
        return real_writev(fd, buffers)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        real_link(src, dst, **kwargs)
        rec.events.append(("link", Path(dst).name))

    monkeypatch.setattr(os, "writev", writev)
    monkeypatch.setattr(os, "link", link)
    yield rec


async def listed(store: LocalObjectStore, prefix: str) -> list[str]:
    return sorted(info.key for page in await pages_of(store, prefix) for info in page)


async def pages_of(store: LocalObjectStore, prefix: str) -> list[list[ObjectInfo]]:
    return [page async for page in store.list_objects(prefix)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_put_new_syncs_file_then_directory_before_returning(
    tmp_path: Path, recorder: Recorder
) -> None:
    root = tmp_path / "store"
    (root / "objects").mkdir(parents=True)
    recorder.name(root, root / "objects")
    store = LocalObjectStore(root, fsync=recorder.fsync)

    async def body() -> None:
        await store.put_new(KEY, DATA)
        recorder.events.append(("returned",))
        await store.close()

    run(body())
    final = root / KEY
    assert final.read_bytes() == JOINED
    inode, size = str(final.stat().st_ino), str(len(JOINED))
    # The first put into a directory also syncs the directory's own entry (once).
    assert recorder.view() == [
        ("fsync-dir", "store"),
        ("write",),
        ("fsync-file", inode, size),  # the linked file, complete, synced before the link
        ("link", final.name),
        ("fsync-dir", "objects"),  # the new entry, synced before put_new returns
        ("returned",),
    ]
    assert leftovers(root / "objects") == []


def test_second_put_in_a_directory_costs_two_fsyncs(tmp_path: Path, recorder: Recorder) -> None:
    store = LocalObjectStore(tmp_path, fsync=recorder.fsync)

    async def body() -> None:
        await store.put_new("objects/a", [b"a"])
        recorder.events.clear()
        await store.put_new("objects/b", [b"b"])
        await store.close()

    run(body())
    assert recorder.kinds() == ["write", "fsync-file", "link", "fsync-dir"]


def test_directories_created_on_the_way_are_synced(tmp_path: Path, recorder: Recorder) -> None:
    recorder.name(tmp_path)
    store = LocalObjectStore(tmp_path / "new-root", fsync=recorder.fsync)
    # The root did not exist: its entry in its parent was synced when it was created.
    assert recorder.view() == [("fsync-dir", tmp_path.name)]
    root = tmp_path / "new-root"
    recorder.name(root)
    recorder.events.clear()

    async def body() -> None:
        await store.put_new("a/b/c", [b"deep"])
        await store.close()

    run(body())
    recorder.name(root / "a", root / "a" / "b")
    assert (root / "a" / "b" / "c").read_bytes() == b"deep"
    assert [e for e in recorder.view() if e[0] in ("fsync-dir", "link")] == [
        ("fsync-dir", "new-root"),  # after mkdir a
        ("fsync-dir", "a"),  # after mkdir a/b
        ("link", "c"),
        ("fsync-dir", "b"),
    ]


def test_put_new_is_create_only(tmp_path: Path, recorder: Recorder) -> None:
    store = LocalObjectStore(tmp_path, fsync=recorder.fsync)

    async def body() -> None:
        await store.put_new(KEY, [b"original"])
        recorder.events.clear()
        with pytest.raises(ObjectAlreadyExists):
            await store.put_new(KEY, [b"replacement"])
        assert [bytes(v) for v in await store.get_ranges(KEY, [(0, 8)])] == [b"original"]
        await store.close()

    run(body())
    assert (tmp_path / KEY).read_bytes() == b"original"
    # A taken key may be the caller's own earlier upload whose answer was lost:
    # the existing object and its entry are made durable before the answer.
    kinds = recorder.kinds()
    assert kinds[-2:] == ["fsync-file", "fsync-dir"]
    assert recorder.events[-2][1] == str((tmp_path / KEY).stat().st_ino)
    assert leftovers(tmp_path / "objects") == []
    assert store.stats.puts == 2 and store.stats.bytes_put == len(b"original")


def test_failed_fsync_leaves_nothing_under_the_key(tmp_path: Path, recorder: Recorder) -> None:
    store = LocalObjectStore(tmp_path, fsync=recorder.fsync)

    async def body() -> None:
        recorder.fail_file_fsync = True
        with pytest.raises(ObjectStoreError, match="injected fsync failure"):
            await store.put_new(KEY, [b"data"])
        assert not (tmp_path / KEY).exists()
        assert leftovers(tmp_path / "objects") == []
        # A retry starts over and stores the object.
        recorder.fail_file_fsync = False
        await store.put_new(KEY, [b"data"])
        await store.close()

    run(body())
    assert (tmp_path / KEY).read_bytes() == b"data"


def test_ranged_reads_are_read_only_views(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    # More chunks than one writev() call takes (IOV_MAX is 1024 on Linux).
    chunks = [bytes([i % 251]) * (i % 7 + 1) for i in range(3000)]
    data = b"".join(chunks)

    async def body() -> None:
        await store.put_new(KEY, chunks)
        ranges = [(0, 10), (10, 10), (100, 4000), (len(data) - 5, len(data))]
        parts = await store.get_ranges(KEY, ranges)
        assert [bytes(p) for p in parts] == [data[a:b] for a, b in ranges]
        assert all(p.readonly for p in parts)
        with pytest.raises(ObjectStoreError):
            await store.get_ranges(KEY, [(len(data) - 5, len(data) + 1)])
        with pytest.raises(ObjectStoreError):
            await store.get_ranges(KEY, [(5, 4)])
        await store.close()

    run(body())
    assert (tmp_path / KEY).read_bytes() == data
    assert store.stats.gets == 3
    assert store.stats.bytes_got == sum(
        b - a for a, b in [(0, 10), (100, 4000), (len(data) - 5, len(data))]
    )


def test_missing_object_is_not_found(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)

    async def body() -> None:
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("objects/nope", [(0, 1)])  # no such directory either
        await store.put_new("objects/there", [b"x"])
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("objects/nope", [(0, 1)])
        with pytest.raises(ObjectNotFound):
            await store.get_ranges("objects/there/below", [(0, 1)])
        await store.close()

    run(body())


def test_delete_is_idempotent(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)

    async def body() -> None:
        await store.put_new(KEY, [b"x"])
        await store.delete(KEY)
        await store.delete(KEY)
        await store.delete("objects/never-there")
        await store.delete("no-directory/never-there")
        with pytest.raises(ObjectNotFound):
            await store.get_ranges(KEY, [(0, 1)])
        # The key is free again.
        await store.put_new(KEY, [b"y"])
        await store.close()

    run(body())
    assert (tmp_path / KEY).read_bytes() == b"y"


def test_delete_many_is_idempotent_and_counts_keys(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    keys = [f"objects/{i}" for i in range(5)]

    async def body() -> None:
        for key in keys:
            await store.put_new(key, [key.encode()])
        await store.put_new("objects/kept", [b"k"])
        await store.delete_many([])
        assert store.stats.deletes == 0  # nothing asked, nothing counted
        # Existing, already deleted and never-existing keys (even in a missing directory).
        await store.delete_many(keys[:2])
        await store.delete_many([*keys, "objects/never", "gone-dir/never"])
        assert store.stats.deletes == 2 + 7
        assert await listed(store, "") == ["objects/kept"]
        for key in keys:
            with pytest.raises(ObjectNotFound):
                await store.get_ranges(key, [(0, 1)])
        await store.close()

    run(body())


def test_listing_comes_in_bounded_pages(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, list_page_size=3)
    keys = [f"objects/{i:02d}" for i in range(10)]

    async def body() -> None:
        before_ms = time.time_ns() // 1_000_000 - 1_000  # file times may lag the clock a little
        for key in keys:
            await store.put_new(key, [b"x" * int(key[-2:])])
        await store.put_new("other/a/b", [b"deep"])
        (tmp_path / "objects" / ".tmp-leftover").write_bytes(b"partial")
        (tmp_path / ".hidden").mkdir()
        (tmp_path / ".hidden" / "file").write_bytes(b"not an object")
        pages = await pages_of(store, "")
        assert all(1 <= len(page) <= 3 for page in pages)
        infos = sorted((info for page in pages for info in page), key=lambda i: i.key)
        assert [i.key for i in infos] == [*keys, "other/a/b"]
        assert [i.size for i in infos] == [*range(10), 4]
        now_ms = time.time_ns() // 1_000_000
        assert all(before_ms <= i.last_modified_ms <= now_ms for i in infos)
        # A plain string prefix, as S3's: it may end inside a segment.
        assert await listed(store, "objects/0") == keys[:10]
        assert await listed(store, "objects/1") == []
        assert await listed(store, "oth") == ["other/a/b"]
        assert await listed(store, "other/a/b") == ["other/a/b"]
        assert await listed(store, "objects/00/x") == []
        await store.close()

    run(body())


def test_listing_tolerates_deletes_between_pages_and_early_exit(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path, list_page_size=2)
    keys = [f"objects/{i}" for i in range(6)]

    async def body() -> None:
        for key in keys:
            await store.put_new(key, [b"x"])
        seen: list[str] = []
        async for page in store.list_objects("objects/"):
            seen.extend(info.key for info in page)
            await store.delete_many(keys)  # everything goes while the listing runs
        assert 2 <= len(seen) <= 6 and set(seen) <= set(keys)
        for key in keys:
            await store.put_new(key, [b"x"])
        pages = store.list_objects("objects/")
        first = await anext(pages)
        assert len(first) == 2
        await pages.aclose()  # type: ignore[attr-defined]
        await store.close()

    run(body())


@pytest.mark.parametrize(
    "key",
    [
        "../escaped",
        "objects/../../escaped",
        "/tmp/absolute",
        "",
        ".",
        "objects/./x",
        "objects//x",
        "objects/",
        "objects/.tmp-0123",
        "nul\0byte",
    ],
)
def test_keys_cannot_leave_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    store = LocalObjectStore(root)
    outside = sorted(p.name for p in tmp_path.iterdir())

    async def body() -> None:
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            await store.put_new(key, [b"x"])
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            await store.get_ranges(key, [(0, 1)])
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            await store.delete(key)
        await store.put_new("objects/kept", [b"x"])
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            await store.delete_many(["objects/kept", key])  # refused whole, before deleting
        assert (root / "objects" / "kept").exists()
        await store.delete_many(["objects/kept"])
        await store.close()

    run(body())
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert [p.name for p in root.iterdir()] == ["objects"]
    assert list((root / "objects").iterdir()) == []


def test_objects_survive_a_reopen_and_are_listed(tmp_path: Path) -> None:
    async def write() -> None:
        store = LocalObjectStore(tmp_path)
        await store.put_new("objects/2", [b"two"])
        await store.put_new("objects/1", [b"one"])
        await store.put_new("other/3", [b"three"])
        await store.close()

    async def read() -> None:
        store = LocalObjectStore(tmp_path)
        (tmp_path / "objects" / ".tmp-leftover-of-a-crash").write_bytes(b"partial")
        assert [bytes(p) for p in await store.get_ranges("objects/1", [(0, 3)])] == [b"one"]
        assert [bytes(p) for p in await store.get_ranges("other/3", [(1, 5)])] == [b"hree"]
        assert await listed(store, "") == ["objects/1", "objects/2", "other/3"]
        assert await listed(store, "objects/") == ["objects/1", "objects/2"]
        assert await listed(store, "ot") == ["other/3"]
        assert await listed(store, "none") == []
        with pytest.raises(ObjectAlreadyExists):
            await store.put_new("objects/1", [b"again"])
        await store.close()

    run(write())
    run(read())


def test_reads_objects_written_by_obstores_local_store(tmp_path: Path) -> None:
    # Stores written before this adapter existed: same key -> root/key layout.
    obstore.put(LocalStore(tmp_path), KEY, b"written by obstore", mode="create")
    store = open_store(f"file://{tmp_path}")
    assert isinstance(store, LocalObjectStore)

    async def body() -> None:
        parts = await store.get_ranges(KEY, [(0, 7), (11, 18)])
        assert [bytes(p) for p in parts] == [b"written", b"obstore"]
        await store.close()

    run(body())


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)

    async def body() -> None:
        await store.close()
        with pytest.raises(ObjectStoreError):
            await store.put_new(KEY, [b"x"])

    run(body())
    assert not (tmp_path / KEY).exists()


def test_open_store_picks_the_local_adapter_only_for_file_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(f"file://{tmp_path}/made"), LocalObjectStore)
    assert (tmp_path / "made").is_dir()
    assert not isinstance(open_store("memory://"), LocalObjectStore)
