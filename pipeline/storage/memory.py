"""In-memory storage driver, for tests and throwaway registries. Thread-safe.

It mirrors the filesystem driver wherever a caller could tell the difference: directories
are explicit and outlive the files deleted from them, writers create their parent
directories when opened, a new-file writer shows nothing until commit, an appending
writer extends the stored file in place under an exclusive per-path lock (a second
appender waits, bounded, then gets StorageUnavailable), and a file cannot be written
where a directory is (or below a file).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from pipeline.errors import InvalidOffset, PathNotFound, StorageError, StorageUnavailable
from pipeline.storage.driver import Capabilities, FileInfo, FileWriter, StorageDriver
from pipeline.storage.objects import check_move


def _now() -> datetime:
    return datetime.now(UTC)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _join(directory: str, name: str) -> str:
    return f"/{name}" if directory == "/" else f"{directory}/{name}"


@dataclass
class _File:
    data: bytearray
    modified: datetime = field(default_factory=_now)


@dataclass
class _Dir:
    children: set[str] = field(default_factory=set)
    modified: datetime = field(default_factory=_now)


class MemoryDriver(StorageDriver):
    """A tree of `_Dir` and `_File` nodes keyed by full path."""

    name = "inmemory"
    capabilities = Capabilities()

    def __init__(self, lock_timeout: float = 30.0) -> None:
        self.lock_timeout = lock_timeout
        self._files: dict[str, _File] = {}
        self._dirs: dict[str, _Dir] = {"/": _Dir()}
        self._lock = threading.RLock()
        self._appending = threading.Condition(self._lock)
        self._appenders: set[str] = set()

    def __repr__(self) -> str:
        return "MemoryDriver()"

    # --- tree bookkeeping (callers hold self._lock) -----------------------------------

    def _mkdirs(self, path: str) -> None:
        if path in self._dirs:
            return
        if path in self._files:
            raise StorageError(f"{path}: conflicts with an existing file")
        parent = _parent(path)
        self._mkdirs(parent)
        self._dirs[path] = _Dir()
        self._link(parent, path)

    def _link(self, parent: str, path: str) -> None:
        directory = self._dirs[parent]
        directory.children.add(path.rsplit("/", 1)[1])
        directory.modified = _now()

    def _unlink(self, path: str) -> None:
        directory = self._dirs.get(_parent(path))
        if directory is not None:
            directory.children.discard(path.rsplit("/", 1)[1])
            directory.modified = _now()

    def _store(self, path: str, node: _File) -> None:
        if path in self._dirs:
            raise StorageError(f"{path}: conflicts with an existing directory")
        self._mkdirs(_parent(path))
        self._files[path] = node
        self._link(_parent(path), path)

    def _subtree(self, path: str) -> tuple[list[str], list[str]]:
        """(files, dirs) at or below path."""
        prefix = path + "/"
        files = [p for p in self._files if p.startswith(prefix)]
        dirs = [p for p in self._dirs if p == path or p.startswith(prefix)]
        return files, dirs

    def _remove(self, path: str) -> None:
        if path in self._files:
            del self._files[path]
        elif path in self._dirs:
            files, dirs = self._subtree(path)
            for p in files:
                del self._files[p]
            for p in dirs:
                del self._dirs[p]
        else:
            raise PathNotFound(path)
        self._unlink(path)

    # --- the contract ------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        with self._lock:
            node = self._files.get(path)
            if node is None:
                raise PathNotFound(path)
            return bytes(node.data)

    def put_content(self, path: str, content: bytes) -> None:
        with self._lock:
            self._store(path, _File(bytearray(content)))

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        data = self.get_content(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(path, offset)
        stream = io.BytesIO(data)
        stream.seek(offset)
        return stream

    def writer(self, path: str, append: bool = False) -> FileWriter:
        if append:
            return _MemoryAppendWriter(self, path)
        with self._lock:
            self._mkdirs(_parent(path))
        return _MemoryWriter(self, path)

    def stat(self, path: str) -> FileInfo:
        with self._lock:
            node = self._files.get(path)
            if node is not None:
                return FileInfo(path, len(node.data), node.modified, False)
            directory = self._dirs.get(path)
            if directory is not None:
                return FileInfo(path, 0, directory.modified, True)
        raise PathNotFound(path)

    def list(self, path: str) -> list[str]:
        with self._lock:
            directory = self._dirs.get(path)
            if directory is None:
                raise PathNotFound(path)
            return [_join(path, name) for name in sorted(directory.children)]

    def move(self, source: str, dest: str) -> None:
        with self._lock:
            if source == dest:
                if not self.exists(source):
                    raise PathNotFound(source)
                return
            source_is_dir = source not in self._files
            if source_is_dir and source not in self._dirs:
                raise PathNotFound(source)
            dest_dir = self._dirs.get(dest)
            check_move(source, dest, source_is_dir, dest in self._files, bool(dest_dir and dest_dir.children))
            if dest_dir is not None:
                self._remove(dest)  # an empty directory counts as absent
            if not source_is_dir:
                node = self._files.pop(source)
                self._unlink(source)
                self._store(dest, node)
                return
            self._move_dir(source, dest)

    def _move_dir(self, source: str, dest: str) -> None:
        files, dirs = self._subtree(source)
        self._mkdirs(_parent(dest))
        for p in sorted(dirs):
            self._dirs[dest + p[len(source) :]] = self._dirs.pop(p)
        for p in files:
            self._files[dest + p[len(source) :]] = self._files.pop(p)
        self._unlink(source)
        self._link(_parent(dest), dest)

    def delete(self, path: str) -> None:
        with self._lock:
            if path == "/":
                for name in list(self._dirs["/"].children):
                    self._remove(_join("/", name))
                return
            self._remove(path)

    # --- append locking ---------------------------------------------------------------

    def _acquire_append(self, path: str) -> None:
        with self._appending:
            if not self._appending.wait_for(lambda: path not in self._appenders, self.lock_timeout):
                raise StorageUnavailable(f"{path}: another writer is appending to this file")
            self._appenders.add(path)

    def _release_append(self, path: str) -> None:
        with self._appending:
            self._appenders.discard(path)
            self._appending.notify_all()


class _MemoryWriter(FileWriter):
    """Buffers everything; commit stores it in one step."""

    def __init__(self, driver: MemoryDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._buffer = bytearray()
        self._state = "open"

    @property
    def size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> int:
        if self._state != "open":
            raise StorageError(f"{self._path}: writer already {self._state}")
        self._buffer += data
        return len(data)

    def commit(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._path}: writer already {self._state}")
        driver = self._driver
        with driver._lock:
            # Like a rename on disk: the directory the writer was opened in must still exist.
            if _parent(self._path) not in driver._dirs:
                self.cancel()
                raise PathNotFound(self._path)
            driver._store(self._path, _File(self._buffer))
        self._buffer = bytearray()
        self._state = "committed"

    def cancel(self) -> None:
        if self._state == "open":
            self._buffer = bytearray()
            self._state = "cancelled"

    def close(self) -> None:
        self.cancel()


class _MemoryAppendWriter(FileWriter):
    """Extends the stored file in place; cancel truncates it back (or removes a file
    this writer created)."""

    def __init__(self, driver: MemoryDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        driver._acquire_append(path)
        try:
            with driver._lock:
                node = driver._files.get(path)
                self._created = node is None
                if node is None:
                    node = _File(bytearray())
                    driver._store(path, node)
        except BaseException:
            driver._release_append(path)
            raise
        self._node = node
        self._start = len(node.data)
        self._written = 0
        self._state = "open"

    @property
    def size(self) -> int:
        return self._start + self._written

    def write(self, data: bytes) -> int:
        if self._state != "open":
            raise StorageError(f"{self._path}: writer already {self._state}")
        with self._driver._lock:
            self._node.data += data
            self._node.modified = _now()
        self._written += len(data)
        return len(data)

    def commit(self) -> None:
        if self._state != "open":
            raise StorageError(f"{self._path}: writer already {self._state}")
        self._state = "committed"
        self._driver._release_append(self._path)

    def cancel(self) -> None:
        if self._state != "open":
            return
        self._state = "cancelled"
        self._written = 0
        driver = self._driver
        try:
            with driver._lock:
                if self._created and driver._files.get(self._path) is self._node:
                    del driver._files[self._path]
                    driver._unlink(self._path)
                else:
                    del self._node.data[self._start :]
        finally:
            driver._release_append(self._path)

    def close(self) -> None:
        self.cancel()
