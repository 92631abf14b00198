"""What every object-store driver (s3, gcs, azure) shares: the key layout, the directory
tree implied by a flat listing, in-process appender exclusion, the move rule, the ranged
reader of one object version, the writer's open/committed/cancelled life, and the stat,
move and delete of the stores whose listings name each object (gcs, azure).

Object stores have no directories: `/a/b` is a directory while some key starts with
`a/b/`. A storage path `/docker/registry/v2/x` is the key `<rootdirectory>/docker/registry/v2/x`
(without the leading `/` when there is no root directory), as in distribution's drivers.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import io
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

from pipeline.errors import (
    InvalidOffset,
    PathExists,
    PathNotFound,
    StorageError,
    StorageUnavailable,
    UnsupportedMethod,
)
from pipeline.storage.driver import FileInfo, FileWriter, StorageDriver
from pipeline.storage.filereader import FileReader

# Temporary objects a driver makes while appending (gcs) live under this name in the root
# directory; listings hide it, as the filesystem driver hides its temporary files.
HIDDEN = ".lading-tmp"


class KeyLayout:
    """Maps storage paths to object keys below an optional root directory (a key prefix)."""

    def __init__(self, root_directory: str = "") -> None:
        self.prefix = root_directory.strip("/")

    def key(self, path: str) -> str:
        return f"{self.prefix}{path}" if self.prefix else path[1:]

    def dir_prefix(self, path: str) -> str:
        """The key prefix of everything below directory `path`."""
        if path == "/":
            return f"{self.prefix}/" if self.prefix else ""
        return self.key(path) + "/"

    def path(self, key: str) -> str:
        return key[len(self.prefix) :] if self.prefix else "/" + key

    def hidden(self, name: str) -> str:
        """The key of a temporary object (hidden from list and walk)."""
        return self.dir_prefix("/") + f"{HIDDEN}/{name}"

    def is_hidden(self, key: str) -> bool:
        return key.startswith(self.dir_prefix("/") + HIDDEN + "/")


def tree(files: Iterable[tuple[str, int, datetime]], base: str) -> list[FileInfo]:
    """Every file and implied directory below `base` ("" for the root), depth first in
    lexical order, from (path, size, modified) of the files. A directory's modification
    time is its newest file's."""
    entries: dict[str, FileInfo] = {}
    for file_path, size, modified in files:
        entries[file_path] = FileInfo(file_path, size, modified, False)
        parent = file_path.rsplit("/", 1)[0]
        while parent != base:
            known = entries.get(parent)
            if known is None or known.modified < modified:
                entries[parent] = FileInfo(parent, 0, modified, True)
            parent = parent.rsplit("/", 1)[0]
    return sorted(entries.values(), key=lambda info: info.path.split("/"))


def walked(files: Iterable[tuple[str, int, datetime]], path: str) -> list[FileInfo]:
    """`walk` of directory `path` from (path, size, modified) of the files a flat listing
    found below it; PathNotFound when there are none (the root always exists)."""
    found = tree(files, "" if path == "/" else path)
    if not found and path != "/":
        raise PathNotFound(path)
    return found


def children(path: str, names: Iterable[str]) -> list[str]:
    """`list` of directory `path` from the names a delimited listing found directly below
    it (a common prefix may end in `/`): full paths, sorted; PathNotFound when there are
    none (the root always exists)."""
    unique = {name.rstrip("/") for name in names} - {""}
    if not unique and path != "/":
        raise PathNotFound(path)
    base = "" if path == "/" else path
    return [f"{base}/{name}" for name in sorted(unique)]


def redirect_method(method: str) -> str:
    """GET or HEAD, the methods a redirect URL serves; UnsupportedMethod otherwise."""
    if method.upper() not in ("GET", "HEAD"):
        raise UnsupportedMethod(f"redirect for {method}")
    return method.upper()


class AppendGuard:
    """Appenders of one object exclude each other within this process (a bounded wait,
    then StorageUnavailable); across processes the upload store's offset check, and each
    driver's conditional commit, are the guard."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: set[tuple[str, str]] = set()

    def acquire(self, key: tuple[str, str], timeout: float, path: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: key not in self._held, timeout):
                raise StorageUnavailable(f"{path}: another writer is appending to this file")
            self._held.add(key)

    def release(self, key: tuple[str, str]) -> None:
        with self._cond:
            self._held.discard(key)
            self._cond.notify_all()

    @contextlib.contextmanager
    def opening(self, key: tuple[str, str], timeout: float, path: str) -> Iterator[None]:
        """Acquire `key` for an appender being opened; release it again if opening fails
        (the writer releases it once it is committed or cancelled)."""
        self.acquire(key, timeout, path)
        try:
            yield
        except BaseException:
            self.release(key)
            raise


def check_move(
    source: str, dest: str, source_is_dir: bool, dest_is_file: bool, dest_has_children: bool
) -> None:
    """The one move rule of every driver: a file replaces a file; nothing ever lands on a
    directory that holds something, and a directory never replaces a file (PathExists,
    nothing changed). An empty directory (only the filesystem and memory drivers have
    them) counts as absent."""
    if dest_has_children:
        raise PathExists(dest, f"cannot move {source} onto a directory that holds files")
    if source_is_dir and dest_is_file:
        raise PathExists(dest, f"cannot move the directory {source} onto a file")
    if source_is_dir and (dest + "/").startswith(source + "/"):
        raise PathExists(dest, f"cannot move the directory {source} into itself")


def chunks(data: bytes | bytearray | memoryview, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


class RangeReader(FileReader):
    """FileReader whose reads are ranged GETs of the one version of an object seen at
    open: `read_range(start, length)` pins it (an ETag, a generation), so a file replaced
    mid-read fails instead of mixing two versions."""

    def __init__(
        self, driver: StorageDriver, path: str, size: int, read_range: Callable[[int, int], bytes]
    ) -> None:
        super().__init__(driver, path, size)
        self._read_range = read_range

    def _open(self) -> Any:
        if self._stream is None:
            self._stream = _RangeStream(self)  # type: ignore[assignment]
        return self._stream


class _RangeStream:
    def __init__(self, reader: RangeReader) -> None:
        self._reader = reader
        self._position = reader.tell()

    def read(self, n: int) -> bytes:
        r = self._reader
        n = min(n, r.size - self._position)
        if n <= 0:
            return b""
        data = r._read_range(self._position, n)
        self._position += len(data)
        return data

    def close(self) -> None:
        pass


class ObjectWriter(FileWriter):
    """The life every object-store writer shares: open, then committed or cancelled once.
    `commit` runs `_commit` and cancels if it fails; `cancel` runs `_abort`; both end with
    `_finished` (appenders release their guard there). Writing after either, or a second
    commit, is a StorageError; a second cancel, or close, does nothing."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._buffer = bytearray()
        self._state = "open"
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        """Buffer `data`; once `_ready` says enough is buffered, `_send` it. A failed send
        cancels the writer."""
        self._check_open()
        self._buffer += data
        self._size += len(data)
        if self._ready():
            try:
                self._send()
            except BaseException:
                self.cancel()
                raise
        return len(data)

    def _ready(self) -> bool:
        """Whether the buffer holds enough to send a part / block / chunk."""
        return False

    def _send(self) -> None:
        """Send what the buffer holds to the backend (part of the object, not yet visible)."""

    def _check_open(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._path}: writer already {self._state}")

    def commit(self) -> None:
        self._check_open()
        try:
            self._commit()
        except BaseException:
            self.cancel()
            raise
        self._state = "committed"
        self._buffer = bytearray()
        self._finished()

    def cancel(self) -> None:
        if self._state != "open":
            return
        self._state = "cancelled"
        self._buffer = bytearray()
        try:
            self._abort()
        finally:
            self._finished()

    @abc.abstractmethod
    def _commit(self) -> None:
        """Make what was written visible at the path."""

    def _abort(self) -> None:
        """Discard what was sent so far (nothing to do by default)."""

    def _finished(self) -> None:
        """Hook for writers holding resources until they are done."""

    def close(self) -> None:
        self.cancel()


class ListedObjectStore(StorageDriver):
    """`stat`, `move` and `delete` of an object store whose listings yield objects with a `name`
    (the key): copy-then-delete, and deletion of a key with everything below it. The
    driver supplies the requests."""

    layout: KeyLayout

    @abc.abstractmethod
    def _head(self, path: str) -> Any:
        """The object's metadata, or None when absent."""

    @abc.abstractmethod
    def _keys(self, prefix: str, path: str, limit: int | None = None) -> Iterator[Any]:
        """The objects whose keys start with `prefix` (errors name `path`)."""

    @abc.abstractmethod
    def _copy(self, path: str, source_key: str, dest_key: str) -> None:
        """Server-side copy of one object."""

    @abc.abstractmethod
    def _delete_keys(self, path: str, keys: Sequence[str]) -> None:
        """Delete these objects; one already gone is not an error."""

    @abc.abstractmethod
    def _size_and_modified(self, obj: Any) -> tuple[int, datetime]:
        """The size and modification time of an object from `_head` or `_keys`."""

    @abc.abstractmethod
    def _version(self, head: Any) -> Any:
        """What pins the one version of an object `_head` saw (an ETag, a generation)."""

    @abc.abstractmethod
    def _read_range(self, path: str, version: Any, start: int, length: int) -> bytes:
        """`length` bytes from `start` of that version of the object."""

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        head = self._head(path)
        if head is None:
            raise PathNotFound(path)
        size = self._size_and_modified(head)[0]
        if offset < 0 or offset > size:
            raise InvalidOffset(path, offset)
        read = functools.partial(self._read_range, path, self._version(head))
        raw = RangeReader(self, path, size, read)
        raw.seek(offset)
        return io.BufferedReader(raw, buffer_size=1024 * 1024)

    def _any_below(self, path: str) -> Any:
        return next(self._keys(self.layout.dir_prefix(path), path, limit=1), None)

    def walk(self, path: str) -> Iterator[FileInfo]:
        files = [
            (self.layout.path(obj.name), *self._size_and_modified(obj))
            for obj in self._keys(self.layout.dir_prefix(path), path)
            if not self.layout.is_hidden(obj.name)
        ]
        yield from walked(files, path)

    def stat(self, path: str) -> FileInfo:
        if path == "/":
            return FileInfo("/", 0, datetime.now(UTC), True)
        head = self._head(path)
        if head is not None:
            size, modified = self._size_and_modified(head)
            return FileInfo(path, size, modified, False)
        first = self._any_below(path)
        if first is None:
            raise PathNotFound(path)
        return FileInfo(path, 0, self._size_and_modified(first)[1], True)

    def move(self, source: str, dest: str) -> None:
        source_is_dir = self._head(source) is None
        if source_is_dir and self._any_below(source) is None:
            raise PathNotFound(source)
        check_move(
            source,
            dest,
            source_is_dir,
            dest_is_file=source_is_dir and self._head(dest) is not None,
            dest_has_children=self._any_below(dest) is not None,
        )
        if not source_is_dir:
            self._copy(source, self.layout.key(source), self.layout.key(dest))
            self._delete_keys(source, [self.layout.key(source)])
            return
        source_prefix, dest_prefix = self.layout.dir_prefix(source), self.layout.dir_prefix(dest)
        keys = [b.name for b in self._keys(source_prefix, source)]
        for key in keys:
            self._copy(source, key, dest_prefix + key[len(source_prefix) :])
        self._delete_keys(source, keys)

    def delete(self, path: str) -> None:
        if path == "/":
            keys = [b.name for b in self._keys(self.layout.dir_prefix(path), path)]
        else:
            key = self.layout.key(path)
            below = key + "/"
            keys = [b.name for b in self._keys(key, path) if b.name == key or b.name.startswith(below)]
            if not keys:
                raise PathNotFound(path)
        self._delete_keys(path, keys)
