"""The one behavioural contract every storage driver passes.

A driver's test module subclasses `DriverContract` and overrides the `driver` fixture to
return a fresh, empty backend (built with `lock_timeout` of about a second, so the
appender-exclusion test stays quick). It may also override `leftovers` to report backend
artifacts a user must never be left with (temporary files, half-finished uploads),
`unfinished` (default: `leftovers`) and `abandon` to report and make what a writer whose
process died leaves behind, for `purge_unfinished_writes`, and a
network driver overrides `bytes_sent` with a counter of the request body bytes its client
sent (a wrapped transport), which proves appends never send stored bytes again.

Tests reach the backend through `CheckedDriver`, as every store does.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.errors import (
    InvalidOffset,
    InvalidPath,
    PathExists,
    PathNotFound,
    StorageError,
    StorageUnavailable,
)
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import FileInfo, StorageDriver

KiB = 1024
MiB = 1024 * KiB
SIZES = [0, 1, 4 * KiB, 1 * MiB, 32 * MiB]
S3_MIN_PART = 5 * MiB  # the smallest non-final part of an S3 multipart upload
# Appends around part/block boundaries: S3's 5 MiB minimum part (and one byte either side),
# then several 10 MiB appends, as distribution's driver suites do.
BOUNDARY_APPENDS = [1, S3_MIN_PART - 2, 1, 1, S3_MIN_PART + 1, 10 * MiB, 10 * MiB, 10 * MiB, 17]
REQUEST_OVERHEAD = 64 * KiB  # bodies that are not data (block lists, compose requests, ...)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 7919 + seed).randbytes(size)


def walked(driver: StorageDriver, path: str = "/") -> list[tuple[str, bool]]:
    return [(info.path, info.is_dir) for info in driver.walk(path)]


def files_below(driver: StorageDriver, path: str = "/") -> list[str]:
    return [info.path for info in driver.walk(path) if not info.is_dir]


BAD_PATHS = [
    "",
    "a",
    "a/b",
    "/a/",
    "//",
    "/a//b",
    "//a",
    "/.",
    "/..",
    "/a/./b",
    "/a/../b",
    "/a/b/..",
    "/a/../../etc/passwd",
    "/a b",
    "/a/b\x00c",
    "/a\\b",
    "/a/b:c",
    "/a/b?c",
    "/a/b*",
    "/caf\u00e9",
    "/a/\n",
]


class DriverContract:
    """Inherit this; override `driver`. Every test starts from an empty store."""

    @pytest.fixture
    def driver(self) -> StorageDriver:
        raise NotImplementedError("a driver test module must override the `driver` fixture")

    @pytest.fixture
    def leftovers(self) -> Callable[[], list[str]]:
        return lambda: []

    @pytest.fixture
    def unfinished(self, leftovers: Callable[[], list[str]]) -> Callable[[], list[str]]:
        """What a writer whose process died left behind, which `purge_unfinished_writes`
        must remove once it is old enough."""
        return leftovers

    @pytest.fixture
    def abandon(self) -> Callable[[StorageDriver, str], object]:
        """Leave at `path` what a writer killed mid-write leaves (returns the writer: the
        test keeps it, so nothing ever commits or cancels it)."""

        def crash(d: StorageDriver, path: str) -> object:
            w = d.writer(path)
            w.write(payload(6 * MiB, seed=7))  # past every driver's part / block / chunk size
            return w

        return crash

    @pytest.fixture
    def bytes_sent(self) -> Callable[[], int] | None:
        """Request body bytes the driver's client has sent so far (None: no network)."""
        return None

    @pytest.fixture
    def resent_below(self) -> int:
        """An append to a file smaller than this may send its stored bytes again (S3: a
        multipart part other than the last must be at least 5 MiB, so a smaller object
        cannot be copied server-side into one). Zero for every other driver."""
        return 0

    @pytest.fixture
    def d(self, driver: StorageDriver, leftovers: Callable[[], list[str]]) -> Iterator[StorageDriver]:
        checked = CheckedDriver(driver)
        yield checked
        assert leftovers() == [], "the driver left temporary artifacts behind"

    # --- round trips -------------------------------------------------------------------

    @pytest.mark.parametrize("size", SIZES)
    def test_put_content_round_trip(self, d: StorageDriver, size: int) -> None:
        data = payload(size)
        d.put_content("/docker/registry/v2/blobs/x/data", data)
        assert d.get_content("/docker/registry/v2/blobs/x/data") == data
        assert d.stat("/docker/registry/v2/blobs/x/data").size == size
        with d.reader("/docker/registry/v2/blobs/x/data") as stream:
            assert stream.read() == data

    @pytest.mark.parametrize("size", SIZES)
    def test_writer_round_trip_in_chunks(self, d: StorageDriver, size: int) -> None:
        data = payload(size, seed=1)
        w = d.writer("/w/data")
        for start in range(0, size, 64 * KiB + 3):
            assert w.write(data[start : start + 64 * KiB + 3]) == len(data[start : start + 64 * KiB + 3])
        assert w.size == size
        w.commit()
        w.close()
        assert d.get_content("/w/data") == data
        assert d.stat("/w/data").size == size
        assert files_below(d) == ["/w/data"]

    def test_put_content_replaces_whole_file(self, d: StorageDriver) -> None:
        d.put_content("/f", b"a much longer first version")
        d.put_content("/f", b"short")
        assert d.get_content("/f") == b"short"
        assert d.stat("/f").size == 5

    def test_unusual_but_valid_names(self, d: StorageDriver) -> None:
        for path in ["/a/.hidden", "/a/..b", "/a/b-c_d.e", "/A/Z/0", "/a/..."]:
            d.put_content(path, path.encode())
            assert d.get_content(path) == path.encode()

    # --- readers -------------------------------------------------------------------------

    @pytest.mark.parametrize("offset", [0, 1, 4095, 4096, 9999, 10000])
    def test_reader_at_offset(self, d: StorageDriver, offset: int) -> None:
        data = payload(10000)
        d.put_content("/r", data)
        with d.reader("/r", offset) as stream:
            assert stream.read() == data[offset:]

    def test_reader_at_end_is_empty(self, d: StorageDriver) -> None:
        d.put_content("/r", b"abc")
        with d.reader("/r", 3) as stream:
            assert stream.read() == b""
        d.put_content("/empty", b"")
        with d.reader("/empty", 0) as stream:
            assert stream.read() == b""

    @pytest.mark.parametrize("offset", [4, 1000, -1])
    def test_reader_outside_file_is_invalid_offset(self, d: StorageDriver, offset: int) -> None:
        d.put_content("/r", b"abc")
        with pytest.raises(InvalidOffset):
            d.reader("/r", offset)

    def test_reader_is_seekable(self, d: StorageDriver) -> None:
        d.put_content("/r", b"0123456789")
        with d.reader("/r", 5) as stream:
            assert stream.read(2) == b"56"
            stream.seek(1)
            assert stream.read(3) == b"123"
            stream.seek(-2, io.SEEK_END)
            assert stream.read() == b"89"

    def test_reader_of_missing_file(self, d: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            d.reader("/missing")

    # --- new-file writers ----------------------------------------------------------------

    def test_writer_appends_then_commits(self, d: StorageDriver) -> None:
        w = d.writer("/up/data")
        w.write(b"hello ")
        w.write(b"world")
        assert w.size == 11
        assert not d.exists("/up/data"), "a new file is invisible until commit"
        w.commit()
        w.close()
        assert d.get_content("/up/data") == b"hello world"

    def test_writer_cancel_leaves_nothing(self, d: StorageDriver) -> None:
        w = d.writer("/up/data")
        w.write(payload(100 * KiB))
        w.cancel()
        w.close()
        assert not d.exists("/up/data")
        with pytest.raises(PathNotFound):
            d.get_content("/up/data")
        assert files_below(d) == []

    def test_close_without_commit_cancels(self, d: StorageDriver) -> None:
        w = d.writer("/up/data")
        w.write(b"half")
        w.close()
        assert not d.exists("/up/data")
        assert files_below(d) == []

    def test_exception_in_with_block_cancels(self, d: StorageDriver) -> None:
        with pytest.raises(RuntimeError), d.writer("/up/data") as w:
            w.write(b"half")
            raise RuntimeError("client went away")
        assert not d.exists("/up/data")

    def test_with_block_commit(self, d: StorageDriver) -> None:
        with d.writer("/up/data") as w:
            w.write(b"whole")
            w.commit()
        assert d.get_content("/up/data") == b"whole"

    def test_cancelled_rewrite_keeps_the_old_file(self, d: StorageDriver) -> None:
        d.put_content("/f", b"precious")
        w = d.writer("/f")
        w.write(b"garbage that must never become visible")
        w.cancel()
        assert d.get_content("/f") == b"precious"
        assert files_below(d) == ["/f"]

    def test_rewrite_replaces_on_commit_only(self, d: StorageDriver) -> None:
        d.put_content("/f", b"old")
        w = d.writer("/f")
        w.write(b"new content")
        assert d.get_content("/f") == b"old"
        w.commit()
        assert d.get_content("/f") == b"new content"

    def test_writer_refuses_use_after_commit(self, d: StorageDriver) -> None:
        w = d.writer("/f")
        w.write(b"x")
        w.commit()
        with pytest.raises(StorageError):
            w.write(b"y")
        with pytest.raises(StorageError):
            w.commit()
        w.cancel()  # a late cancel is harmless and does not undo the commit
        w.close()
        assert d.get_content("/f") == b"x"

    # --- appending writers ---------------------------------------------------------------

    def test_append_continues_existing_content(self, d: StorageDriver) -> None:
        d.put_content("/up/data", b"hello")
        w = d.writer("/up/data", append=True)
        assert w.size == 5
        w.write(b" world")
        assert w.size == 11
        w.commit()
        w.close()
        assert d.get_content("/up/data") == b"hello world"

    def test_append_sessions_accumulate(self, d: StorageDriver) -> None:
        chunks = [payload(n, seed=n) for n in (1, 300 * KiB, 0, 17, 2 * MiB)]
        for chunk in chunks:
            w = d.writer("/up/data", append=True)
            w.write(chunk)
            w.commit()
            w.close()
        assert d.get_content("/up/data") == b"".join(chunks)

    def test_append_cancel_restores_old_size(self, d: StorageDriver) -> None:
        d.put_content("/up/data", b"hello")
        w = d.writer("/up/data", append=True)
        w.write(payload(3 * MiB))
        w.cancel()
        w.close()
        assert d.get_content("/up/data") == b"hello"
        assert d.stat("/up/data").size == 5
        w2 = d.writer("/up/data", append=True)
        assert w2.size == 5
        w2.write(b"!")
        w2.commit()
        assert d.get_content("/up/data") == b"hello!"

    def test_append_to_missing_file_starts_empty(self, d: StorageDriver) -> None:
        w = d.writer("/up/new", append=True)
        assert w.size == 0
        w.write(b"first")
        w.commit()
        w.close()
        assert d.get_content("/up/new") == b"first"

    def test_cancelled_append_to_missing_file_leaves_no_file(self, d: StorageDriver) -> None:
        w = d.writer("/up/new", append=True)
        w.write(b"first")
        w.cancel()
        assert not d.exists("/up/new")
        assert files_below(d) == []

    def test_second_appender_is_refused_while_first_is_open(self, d: StorageDriver) -> None:
        d.put_content("/up/data", b"base")
        first = d.writer("/up/data", append=True)
        first.write(b"-one")
        with pytest.raises(StorageUnavailable):
            d.writer("/up/data", append=True)
        first.commit()
        first.close()
        second = d.writer("/up/data", append=True)
        assert second.size == 8
        second.write(b"-two")
        second.commit()
        assert d.get_content("/up/data") == b"base-one-two"

    def test_waiting_appender_continues_after_first_closes(self, d: StorageDriver) -> None:
        first = d.writer("/up/data", append=True)
        first.write(b"aaa")
        outcome: dict[str, object] = {}
        calling = threading.Event()

        def second_appender() -> None:
            try:
                calling.set()
                w = d.writer("/up/data", append=True)
                outcome["size"] = w.size
                w.write(b"bbb")
                w.commit()
            except Exception as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=second_appender)
        thread.start()
        assert calling.wait(10)
        # The second appender must still be waiting (not refused, not writing) while the
        # first is open: give it a moment to return, well inside the drivers' 1 s lock wait.
        thread.join(timeout=0.2)
        assert thread.is_alive() and outcome == {}, outcome
        first.write(b"AAA")
        first.commit()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome
        assert outcome["size"] == 6
        assert d.get_content("/up/data") == b"aaaAAAbbb"

    def test_appends_across_part_and_block_boundaries(
        self, d: StorageDriver, bytes_sent: Callable[[], int] | None, resent_below: int
    ) -> None:
        """Appends of 1 B, 5 MiB - 2, 1, 1, 5 MiB + 1 and three of 10 MiB, each its own
        writer as a PATCH is: the content is the concatenation, and no append sends again
        the bytes already stored (counted on the wire for network drivers)."""
        d.put_content("/up/data", b"")
        whole = hashlib.sha256()
        stored = 0
        boundaries = []
        for i, size in enumerate(BOUNDARY_APPENDS):
            chunk = payload(size, seed=100 + i)
            before = bytes_sent() if bytes_sent else 0
            w = d.writer("/up/data", append=True)
            assert w.size == stored
            for start in range(0, size, 3 * MiB + 5):  # writes that straddle chunk sizes too
                w.write(chunk[start : start + 3 * MiB + 5])
            w.commit()
            w.close()
            if bytes_sent is not None:
                sent = bytes_sent() - before
                allowed = size + REQUEST_OVERHEAD + (stored if stored < resent_below else 0)
                assert size <= sent <= allowed, f"append {i} of {size} B sent {sent} B with {stored} B stored"
            whole.update(chunk)
            stored += size
            boundaries.append(stored)
            assert d.stat("/up/data").size == stored
        assert hashlib.sha256(d.get_content("/up/data")).hexdigest() == whole.hexdigest()
        data = d.get_content("/up/data")
        for edge in boundaries[:-1]:
            start = max(edge - 3, 0)
            with d.reader("/up/data", start) as stream:
                assert stream.read(7) == data[start : start + 7]

    # --- what dead writers leave ---------------------------------------------------------

    def test_purge_unfinished_writes_removes_only_what_a_dead_writer_left_once_old(
        self,
        d: StorageDriver,
        unfinished: Callable[[], list[str]],
        abandon: Callable[[StorageDriver, str], object],
    ) -> None:
        d.put_content("/keep/data", b"kept")
        writer = abandon(d, "/uploads/crashed/data")
        left, visible = unfinished(), files_below(d)
        young = d.purge_unfinished_writes(datetime.now(UTC) - timedelta(hours=1))
        assert young == [] and unfinished() == left, "a write newer than the age is left alone"
        later = datetime.now(UTC) + timedelta(minutes=1)  # everything so far counts as old
        dry = d.purge_unfinished_writes(later, dry_run=True)
        assert len(dry) == len(left) and unfinished() == left, "a dry run removes nothing"
        purged = d.purge_unfinished_writes(later)
        assert sorted(w.path for w in purged) == sorted(w.path for w in dry)
        assert unfinished() == []
        assert files_below(d) == visible and d.get_content("/keep/data") == b"kept"
        assert d.purge_unfinished_writes(later) == []
        del writer

    # --- stat ----------------------------------------------------------------------------

    def test_stat_file_and_directories(self, d: StorageDriver) -> None:
        d.put_content("/a/b/c", b"12345")
        f = d.stat("/a/b/c")
        assert (f.path, f.size, f.is_dir) == ("/a/b/c", 5, False)
        assert isinstance(f.modified, datetime) and f.modified.tzinfo is not None
        for directory in ("/a", "/a/b"):
            info = d.stat(directory)
            assert (info.path, info.size, info.is_dir) == (directory, 0, True)
        assert d.stat("/").is_dir

    def test_stat_of_empty_store_root(self, d: StorageDriver) -> None:
        assert d.stat("/").is_dir
        assert d.exists("/")

    # --- list ----------------------------------------------------------------------------

    def test_list_returns_direct_children_sorted_full_paths(self, d: StorageDriver) -> None:
        for path in ["/a/x", "/a/b/d/e", "/a/b/c", "/a/b0", "/a/B", "/a/b-", "/z"]:
            d.put_content(path, b"")
        assert d.list("/a") == ["/a/B", "/a/b", "/a/b-", "/a/b0", "/a/x"]
        assert d.list("/a/b") == ["/a/b/c", "/a/b/d"]
        assert d.list("/") == ["/a", "/z"]

    def test_list_of_empty_root(self, d: StorageDriver) -> None:
        assert d.list("/") == []

    def test_list_of_missing_directory(self, d: StorageDriver) -> None:
        d.put_content("/a/file", b"")
        with pytest.raises(PathNotFound):
            d.list("/missing")
        with pytest.raises(PathNotFound):
            d.list("/a/nothing/below")

    def test_list_of_a_file_is_not_found(self, d: StorageDriver) -> None:
        d.put_content("/a/file", b"")
        with pytest.raises(PathNotFound):
            d.list("/a/file")

    # --- move ----------------------------------------------------------------------------

    def test_move_to_new_path_creates_parents(self, d: StorageDriver) -> None:
        d.put_content("/up/u1/data", b"blob bytes")
        d.move("/up/u1/data", "/blobs/sha256/ab/abcd/data")
        assert d.get_content("/blobs/sha256/ab/abcd/data") == b"blob bytes"
        assert not d.exists("/up/u1/data")

    def test_move_overwrites_existing_dest(self, d: StorageDriver) -> None:
        d.put_content("/src", b"new")
        d.put_content("/dst", b"old and longer")
        d.move("/src", "/dst")
        assert d.get_content("/dst") == b"new"
        assert not d.exists("/src")
        assert files_below(d) == ["/dst"]

    def test_move_of_a_directory_moves_everything_below(self, d: StorageDriver) -> None:
        """Garbage collection parks a blob directory elsewhere and may move it back."""
        d.put_content("/blobs/ab/abc/data", b"blob")
        d.put_content("/blobs/ab/abc/sub/x", b"x")
        d.put_content("/blobs/ab/abcd/data", b"sibling")
        d.move("/blobs/ab/abc", "/trash/abc")
        assert d.get_content("/trash/abc/data") == b"blob"
        assert d.get_content("/trash/abc/sub/x") == b"x"
        assert not d.exists("/blobs/ab/abc")
        assert d.get_content("/blobs/ab/abcd/data") == b"sibling"
        d.move("/trash/abc", "/blobs/ab/abc")
        assert sorted(files_below(d)) == ["/blobs/ab/abc/data", "/blobs/ab/abc/sub/x", "/blobs/ab/abcd/data"]

    def test_move_of_a_directory_onto_a_directory_holding_files_changes_nothing(
        self, d: StorageDriver
    ) -> None:
        """One rule on every driver (gc relies on it to notice a blob stored again while
        its old copy was in the trash): never merge, never replace a populated directory."""
        before = {"/src/a": b"new a", "/src/b/c": b"new c", "/dst/a": b"old a", "/dst/z": b"old z"}
        for path, content in before.items():
            d.put_content(path, content)
        with pytest.raises(PathExists):
            d.move("/src", "/dst")
        assert sorted(files_below(d)) == sorted(before)
        for path, content in before.items():
            assert d.get_content(path) == content

    def test_move_of_a_file_onto_a_directory_holding_files_changes_nothing(self, d: StorageDriver) -> None:
        d.put_content("/src", b"file")
        d.put_content("/dst/inner", b"inner")
        with pytest.raises(PathExists):
            d.move("/src", "/dst")
        assert d.get_content("/src") == b"file"
        assert d.get_content("/dst/inner") == b"inner"
        assert sorted(files_below(d)) == ["/dst/inner", "/src"]

    def test_move_of_a_directory_onto_a_file_changes_nothing(self, d: StorageDriver) -> None:
        d.put_content("/src/a", b"a")
        d.put_content("/dst", b"file")
        with pytest.raises(PathExists):
            d.move("/src", "/dst")
        assert sorted(files_below(d)) == ["/dst", "/src/a"]
        assert d.get_content("/dst") == b"file"

    def test_move_of_a_directory_into_itself_changes_nothing(self, d: StorageDriver) -> None:
        d.put_content("/src/a", b"a")
        with pytest.raises(PathExists):
            d.move("/src", "/src/deeper")
        assert files_below(d) == ["/src/a"]

    def test_move_onto_itself_changes_nothing(self, d: StorageDriver) -> None:
        d.put_content("/dir/f", b"f")
        d.move("/dir/f", "/dir/f")
        d.move("/dir", "/dir")
        assert d.get_content("/dir/f") == b"f"
        with pytest.raises(PathNotFound):
            d.move("/nothing", "/nothing")

    def test_move_onto_a_directory_whose_files_were_deleted(self, d: StorageDriver) -> None:
        """Deleting the last file leaves an empty directory on a filesystem and nothing on
        an object store; either way the path counts as free."""
        d.put_content("/dst/old", b"old")
        d.delete("/dst/old")
        d.put_content("/src/new", b"new")
        d.move("/src", "/dst")
        assert d.get_content("/dst/new") == b"new"
        assert files_below(d) == ["/dst/new"]
        d.put_content("/other/old", b"old")
        d.delete("/other/old")
        d.put_content("/file", b"file")
        d.move("/file", "/other")
        assert d.get_content("/other") == b"file"

    def test_move_of_missing_source(self, d: StorageDriver) -> None:
        d.put_content("/dst", b"untouched")
        with pytest.raises(PathNotFound):
            d.move("/missing", "/dst")
        assert d.get_content("/dst") == b"untouched"

    # --- delete --------------------------------------------------------------------------

    def test_delete_file(self, d: StorageDriver) -> None:
        d.put_content("/a/f", b"x")
        d.put_content("/a/g", b"y")
        d.delete("/a/f")
        assert not d.exists("/a/f")
        assert d.get_content("/a/g") == b"y"

    def test_delete_is_recursive_and_spares_prefix_siblings(self, d: StorageDriver) -> None:
        for path in ["/a/b/c", "/a/b/d/e", "/a/bc/x", "/a/b.c", "/a/b-", "/ab"]:
            d.put_content(path, path.encode())
        d.delete("/a/b")
        assert not d.exists("/a/b")
        assert not d.exists("/a/b/d/e")
        assert sorted(files_below(d)) == ["/a/b-", "/a/b.c", "/a/bc/x", "/ab"]
        for path in files_below(d):
            assert d.get_content(path) == path.encode()

    def test_delete_root_empties_the_store(self, d: StorageDriver) -> None:
        d.put_content("/a/b", b"x")
        d.put_content("/c", b"y")
        d.delete("/")
        assert d.list("/") == []
        assert walked(d) == []

    def test_missing_paths_are_not_found(self, d: StorageDriver) -> None:
        d.put_content("/a/present", b"x")
        for call in (d.get_content, d.stat, d.delete):
            with pytest.raises(PathNotFound):
                call("/a/absent")
            with pytest.raises(PathNotFound):
                call("/nowhere/at/all")
        assert not d.exists("/a/absent")
        assert d.get_content("/a/present") == b"x"

    def test_directory_is_not_a_file(self, d: StorageDriver) -> None:
        d.put_content("/a/b/c", b"x")
        with pytest.raises(PathNotFound):
            d.get_content("/a/b")
        with pytest.raises(PathNotFound):
            d.reader("/a/b")

    # --- path grammar --------------------------------------------------------------------

    @pytest.mark.parametrize("bad", BAD_PATHS)
    def test_invalid_paths_are_rejected_everywhere(self, d: StorageDriver, bad: str) -> None:
        d.put_content("/ok", b"ok")
        calls: list[Callable[[], object]] = [
            lambda: d.get_content(bad),
            lambda: d.put_content(bad, b"x"),
            lambda: d.reader(bad),
            lambda: d.writer(bad),
            lambda: d.writer(bad, append=True),
            lambda: d.stat(bad),
            lambda: d.list(bad),
            lambda: d.move(bad, "/ok2"),
            lambda: d.move("/ok", bad),
            lambda: d.delete(bad),
            lambda: list(d.walk(bad)),
            lambda: d.exists(bad),
        ]
        for call in calls:
            with pytest.raises(InvalidPath):
                call()
        assert files_below(d) == ["/ok"]

    # --- concurrency ---------------------------------------------------------------------

    def test_concurrent_writers_of_one_path_leave_one_whole_content(self, d: StorageDriver) -> None:
        contents = [payload(512 * KiB, seed=i) for i in range(6)]
        barrier = threading.Barrier(len(contents))
        errors: list[BaseException] = []

        def write(content: bytes) -> None:
            try:
                w = d.writer("/blobs/same/data")
                barrier.wait(timeout=30)
                for start in range(0, len(content), 32 * KiB):
                    w.write(content[start : start + 32 * KiB])
                w.commit()
                w.close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(c,)) for c in contents]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert d.get_content("/blobs/same/data") in contents
        assert files_below(d) == ["/blobs/same/data"]

    def test_readers_never_see_a_partial_replacement(self, d: StorageDriver) -> None:
        versions = [payload(256 * KiB, seed=1), payload(256 * KiB, seed=2)]
        d.put_content("/f", versions[0])
        stop = threading.Event()
        seen: list[bytes] = []

        def rewrite() -> None:
            for i in range(40):
                if stop.is_set():
                    return
                d.put_content("/f", versions[i % 2])

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            for _ in range(40):
                seen.append(d.get_content("/f"))
        finally:
            stop.set()
            writer.join(timeout=60)
        assert all(s in versions for s in seen)

    # --- walk ----------------------------------------------------------------------------

    def test_walk_is_depth_first_in_lexical_order(self, d: StorageDriver) -> None:
        for path in ["/w/a/c", "/w/a-b", "/w/b/d/e", "/w/B", "/w/a/b", "/x"]:
            d.put_content(path, b"12")
        assert walked(d) == [
            ("/w", True),
            ("/w/B", False),
            ("/w/a", True),
            ("/w/a/b", False),
            ("/w/a/c", False),
            ("/w/a-b", False),
            ("/w/b", True),
            ("/w/b/d", True),
            ("/w/b/d/e", False),
            ("/x", False),
        ]
        assert walked(d, "/w/b") == [("/w/b/d", True), ("/w/b/d/e", False)]
        infos: list[FileInfo] = list(d.walk("/w/a"))
        assert [(i.path, i.size) for i in infos] == [("/w/a/b", 2), ("/w/a/c", 2)]

    def test_walk_of_missing_directory(self, d: StorageDriver) -> None:
        with pytest.raises(PathNotFound):
            list(d.walk("/missing"))

    def test_walk_of_empty_store(self, d: StorageDriver) -> None:
        assert walked(d) == []
