"""Local-filesystem storage driver, on distribution's on-disk tree.

Storage path `/docker/registry/v2/x` is the file `<root>/docker/registry/v2/x`, so a root
written by CNCF distribution's filesystem driver is served as is, and the other way round.

Where Lading is stricter than distribution:
- `put_content` and new-file writers are atomic: bytes go to a unique temporary sibling
  (`.lading-tmp-*`) and `os.replace` moves the complete file into place, so readers and
  concurrent writers of one path only ever see a complete file (the last rename wins).
  Temporary files are hidden from `list` and `walk`, and removed on cancel.
- Appending writers hold an exclusive `flock` on the file while open, so two appenders of
  one upload cannot interleave; the second waits (bounded) and then gets StorageUnavailable.

OSError is translated to `pipeline.errors` in one place, `_translate`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import secrets
import shutil
import stat as stat_mode
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

from pipeline.errors import (
    InvalidOffset,
    InvalidPath,
    PathExists,
    PathNotFound,
    StorageError,
    StorageUnavailable,
)
from pipeline.storage.driver import Capabilities, FileInfo, FileWriter, StorageDriver, UnfinishedWrite
from pipeline.storage.objects import check_move

TEMP_PREFIX = ".lading-tmp-"
_Entries = list[os.DirEntry[str]]  # spelled here: the driver's own `list` method shadows the builtin
_WRITE_BUFFER = 1 << 20  # writes are gathered to this size before reaching the kernel
_SMALL_PART = 64 * 1024  # smaller writes are packed into one buffer, larger ones kept as is
_MAX_PARTS = 64  # parts per writev, far below IOV_MAX (1024)
_READ_BUFFER = 256 * 1024
_OPEN_FLAGS = os.O_CLOEXEC

# Errors an operator or a retry can clear: full/quota'd disks, I/O errors, exhausted
# descriptors, stale NFS handles, a filesystem remounted read-only.
_TRANSIENT = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EAGAIN,
        errno.EWOULDBLOCK,
        errno.EBUSY,
        errno.EINTR,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOLCK,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.EROFS,
    }
)


def _translate(exc: OSError, path: str, *, reading: bool) -> StorageError:
    """The one map from OSError to driver errors.

    When reading, a directory where a file was expected (or a file where a directory was
    expected) means "no such file"; when writing it is a conflict, not a missing path.
    """
    code = exc.errno
    if code == errno.ENOENT or (reading and code in (errno.ENOTDIR, errno.EISDIR)):
        return PathNotFound(path)
    if code in _TRANSIENT:
        return StorageUnavailable(f"{path}: {exc.strerror or exc}")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY):
        return StorageError(f"{path}: conflicts with an existing file or directory ({exc.strerror})")
    return StorageError(f"{path}: {exc.strerror or exc}")


@contextlib.contextmanager
def _os_errors(path: str, *, reading: bool = False) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _translate(exc, path, reading=reading) from exc


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, UTC)


def _writev_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> None:
    views = [memoryview(part).cast("B") for part in parts]
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:])
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | _OPEN_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _RawFile(io.FileIO):
    """A FileIO whose late read errors (EIO on a failing disk, ...) are translated too."""

    storage_path = ""

    def readinto(self, buffer: Any) -> int | None:
        with _os_errors(self.storage_path, reading=True):
            return super().readinto(buffer)

    def readall(self) -> bytes:
        with _os_errors(self.storage_path, reading=True):
            return super().readall()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        with _os_errors(self.storage_path, reading=True):
            return super().seek(offset, whence)


class FilesystemDriver(StorageDriver):
    """Files under `root`. `fsync=True` makes every commit durable (file and directory)
    before it returns; the default relies on the OS like distribution does.
    `lock_timeout` bounds how long an appending writer waits for another appender."""

    name = "filesystem"
    capabilities = Capabilities(local_path=True, walk=True)

    def __init__(self, root: str, fsync: bool = False, lock_timeout: float = 30.0) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"FilesystemDriver({self.root!r})"

    def _full(self, path: str) -> str:
        if "/" + TEMP_PREFIX in path:
            raise InvalidPath(path, f"names starting with {TEMP_PREFIX!r} are reserved for temporary files")
        return self.root if path == "/" else self.root + path

    # --- reading ---------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        full = self._full(path)
        with _os_errors(path, reading=True), open(full, "rb", buffering=0) as f:
            return f.readall()

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        full = self._full(path)
        with _os_errors(path, reading=True):
            raw = _RawFile(full, "rb")
        raw.storage_path = path
        try:
            with _os_errors(path, reading=True):
                size = os.fstat(raw.fileno()).st_size
                if offset < 0 or offset > size:
                    raise InvalidOffset(path, offset)
                if offset:
                    raw.seek(offset)
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(raw, buffer_size=_READ_BUFFER)

    def stat(self, path: str) -> FileInfo:
        full = self._full(path)
        try:
            with _os_errors(path, reading=True):
                st = os.stat(full)
        except PathNotFound:
            if path == "/":
                return FileInfo("/", 0, datetime.now(UTC), True)
            raise
        is_dir = stat_mode.S_ISDIR(st.st_mode)
        return FileInfo(path, 0 if is_dir else st.st_size, _mtime(st), is_dir)

    def list(self, path: str) -> list[str]:
        full = self._full(path)
        try:
            with _os_errors(path, reading=True), os.scandir(full) as entries:
                names = sorted(e.name for e in entries if not e.name.startswith(TEMP_PREFIX))
        except PathNotFound:
            if path == "/":
                return []
            raise
        prefix = "" if path == "/" else path
        return [f"{prefix}/{name}" for name in names]

    def walk(self, path: str) -> Iterator[FileInfo]:
        full = self._full(path)
        try:
            with _os_errors(path, reading=True):
                top = self._sorted_entries(full)
        except PathNotFound:
            if path == "/":
                return
            raise
        yield from self._walk(top, "" if path == "/" else path)

    @staticmethod
    def _sorted_entries(directory: str) -> _Entries:
        with os.scandir(directory) as entries:
            return sorted((e for e in entries if not e.name.startswith(TEMP_PREFIX)), key=lambda e: e.name)

    def _walk(self, entries: _Entries, prefix: str) -> Iterator[FileInfo]:
        for entry in entries:
            child = f"{prefix}/{entry.name}"
            try:
                with _os_errors(child, reading=True):
                    st = entry.stat()
            except PathNotFound:
                continue  # removed while we walked: it is simply not there any more
            is_dir = stat_mode.S_ISDIR(st.st_mode)
            yield FileInfo(child, 0 if is_dir else st.st_size, _mtime(st), is_dir)
            if is_dir:
                try:
                    with _os_errors(child, reading=True):
                        below = self._sorted_entries(entry.path)
                except PathNotFound:
                    continue
                yield from self._walk(below, child)

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        """Temporary files of new-file writers whose process died (a live writer removes
        its own on cancel), found by walking the whole tree."""
        purged: list[UnfinishedWrite] = []
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                if not name.startswith(TEMP_PREFIX):
                    continue
                full = os.path.join(directory, name)
                path = full[len(self.root) :]
                try:
                    with _os_errors(path, reading=True):
                        st = os.stat(full)
                        if _mtime(st) >= before:
                            continue
                        if not dry_run:
                            os.unlink(full)
                except PathNotFound:
                    continue  # committed or cancelled while we walked
                purged.append(UnfinishedWrite(path, _mtime(st), st.st_size))
        return purged

    def local_path(self, path: str) -> str | None:
        full = self._full(path)
        with _os_errors(path, reading=True):
            st = os.stat(full)
        if stat_mode.S_ISDIR(st.st_mode):
            raise PathNotFound(path)
        return full

    # --- writing ---------------------------------------------------------------------

    def put_content(self, path: str, content: bytes) -> None:
        writer = _NewFileWriter(self, path)
        try:
            writer.write(content)
            writer.commit()
        finally:
            writer.close()

    def writer(self, path: str, append: bool = False) -> FileWriter:
        if append:
            return _AppendWriter(self, path)
        return _NewFileWriter(self, path)

    def move(self, source: str, dest: str) -> None:
        """See `objects.check_move`: the same rule as every driver; an empty directory at
        dest counts as absent (object stores cannot have one)."""
        src, dst = self._full(source), self._full(dest)
        with _os_errors(source, reading=True):
            source_is_dir = stat_mode.S_ISDIR(os.stat(src).st_mode)
        try:
            dest_is_dir = stat_mode.S_ISDIR(os.stat(dst).st_mode)
            dest_exists = True
        except (FileNotFoundError, NotADirectoryError):
            dest_is_dir = dest_exists = False
        with _os_errors(dest, reading=True):
            has_children = dest_is_dir and bool(os.listdir(dst))
        check_move(source, dest, source_is_dir, dest_exists and not dest_is_dir, has_children)
        with _os_errors(dest):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if dest_is_dir and not source_is_dir:
                os.rmdir(dst)  # empty, checked above
        try:
            os.replace(src, dst)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise PathExists(dest, f"cannot move {source}: the destination was filled meanwhile") from exc
            raise _translate(exc, source, reading=False) from exc
        if self.fsync:
            with _os_errors(dest):
                _fsync_dir(os.path.dirname(dst))

    def delete(self, path: str) -> None:
        full = self._full(path)
        if path == "/":
            for child in self.list("/"):
                with contextlib.suppress(PathNotFound):
                    self._delete_tree(child, self._full(child))
            return
        self._delete_tree(path, full)

    @staticmethod
    def _delete_tree(path: str, full: str) -> None:
        def vanished_is_fine(_func: Any, _name: str, excinfo: Any) -> None:
            if not isinstance(excinfo[1], FileNotFoundError):
                raise excinfo[1]

        with _os_errors(path, reading=True):
            st = os.lstat(full)
        with _os_errors(path):
            if stat_mode.S_ISDIR(st.st_mode):
                shutil.rmtree(full, onerror=vanished_is_fine)
            else:
                os.unlink(full)

    def _prepare_parent(self, path: str, full: str) -> str:
        parent = os.path.dirname(full)
        with _os_errors(path):
            os.makedirs(parent, exist_ok=True)
        return parent


class _BufferedFd:
    """Gathers writes up to _WRITE_BUFFER bytes and hands them to the kernel in one
    `writev`. Parts of _SMALL_PART bytes or more are kept by reference (an immutable copy
    only if the caller's object is mutable and must outlive the call), so a request body's
    chunks reach the file with no copy in Python; smaller ones are packed into one buffer,
    so a stream of tiny writes neither holds an object per write nor overflows IOV_MAX."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.parts: list[bytes | bytearray | memoryview] = []
        self.pending = 0
        self._tail: bytearray | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        size = len(data) if isinstance(data, bytes | bytearray) else memoryview(data).nbytes
        if size < _SMALL_PART:
            if self._tail is None:
                self._tail = bytearray()
                self.parts.append(self._tail)
            self._tail += data
        else:
            self._tail = None
            self.parts.append(data)
        self.pending += size
        if self.pending >= _WRITE_BUFFER or len(self.parts) >= _MAX_PARTS:
            self.flush()
        elif size >= _SMALL_PART and not isinstance(data, bytes):
            self.parts[-1] = bytes(data)  # the caller may reuse its buffer after we return

    def flush(self) -> None:
        parts = self.parts
        if parts:
            self.discard()
            _writev_all(self.fd, parts)

    def discard(self) -> None:
        self.parts = []
        self.pending = 0
        self._tail = None


class _FdWriter(FileWriter):
    """What both filesystem writers share: buffered writes to an open descriptor."""

    _path: str
    _state: str
    _size: int
    _out: _BufferedFd | None

    @property
    def size(self) -> int:
        return self._size

    def _check_open(self) -> _BufferedFd:
        if self._state != "open" or self._out is None:
            raise StorageError(f"{self._path}: writer already {self._state}")
        return self._out

    def write(self, data: bytes) -> int:
        out = self._check_open()
        with _os_errors(self._path):
            out.write(data)
        self._size += len(data)
        return len(data)


class _NewFileWriter(_FdWriter):
    """Writes a unique temporary sibling; commit renames it over the path."""

    def __init__(self, driver: FilesystemDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._final = driver._full(path)
        self._state = "open"
        self._size = 0
        self._temp = ""
        self._out: _BufferedFd | None = None
        parent = os.path.dirname(self._final)
        for attempt in range(3):
            driver._prepare_parent(path, self._final)
            temp = os.path.join(parent, TEMP_PREFIX + secrets.token_hex(8))
            try:
                with _os_errors(path):
                    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666)
            except PathNotFound:
                if attempt == 2:
                    raise
                continue  # the parent was deleted between makedirs and open; make it again
            self._temp = temp
            self._out = _BufferedFd(fd)
            break

    def commit(self) -> None:
        out = self._check_open()
        try:
            with _os_errors(self._path):
                out.flush()
                if self._driver.fsync:
                    os.fsync(out.fd)
                os.close(out.fd)
                self._out = None
                os.replace(self._temp, self._final)
                if self._driver.fsync:
                    _fsync_dir(os.path.dirname(self._final))
        except BaseException:
            self._discard()
            self._state = "cancelled"
            raise
        self._state = "committed"

    def _discard(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                os.close(self._out.fd)
            self._out = None
        if self._temp:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)

    def cancel(self) -> None:
        if self._state == "open":
            self._discard()
            self._state = "cancelled"

    def close(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":
            self._discard()


class _AppendWriter(_FdWriter):
    """Continues the file in place under an exclusive flock; cancel truncates back."""

    def __init__(self, driver: FilesystemDriver, path: str) -> None:
        self._driver = driver
        self._path = path
        self._full = driver._full(path)
        self._state = "open"
        deadline = time.monotonic() + driver.lock_timeout
        fd, self._created = self._open_locked(deadline)
        with _os_errors(path):
            self._start = os.lseek(fd, 0, os.SEEK_END)
        self._out: _BufferedFd | None = _BufferedFd(fd)
        self._size = self._start

    def _open_locked(self, deadline: float) -> tuple[int, bool]:
        """Open (creating if needed) and lock the file that is at the path *now*: a file
        another writer removed or replaced while we waited for its lock is not ours."""
        while True:
            self._driver._prepare_parent(self._path, self._full)
            created = True
            with _os_errors(self._path):
                try:
                    fd = os.open(self._full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666)
                except FileExistsError:
                    created = False
                    try:
                        fd = os.open(self._full, os.O_WRONLY | _OPEN_FLAGS)
                    except FileNotFoundError:
                        fd = -1  # removed between the two opens; try again
            if fd < 0:
                if time.monotonic() >= deadline:
                    raise StorageUnavailable(f"{self._path}: file kept changing while opening it")
                continue
            try:
                self._lock(fd, deadline)
                with _os_errors(self._path):
                    mine = os.fstat(fd)
                    try:
                        there = os.stat(self._full)
                    except FileNotFoundError:
                        there = None
            except BaseException:
                os.close(fd)
                raise
            if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                return fd, created
            os.close(fd)
            if time.monotonic() >= deadline:
                raise StorageUnavailable(f"{self._path}: file kept changing while waiting for its lock")

    def _lock(self, fd: int, deadline: float) -> None:
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _translate(exc, self._path, reading=False) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageUnavailable(f"{self._path}: another writer is appending to this file")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.1)

    def commit(self) -> None:
        out = self._check_open()
        try:
            with _os_errors(self._path):
                out.flush()
                if self._driver.fsync:
                    os.fsync(out.fd)
        except BaseException:
            self.cancel()
            raise
        self._release()
        self._state = "committed"

    def _release(self) -> None:
        if self._out is not None:
            with contextlib.suppress(OSError):
                os.close(self._out.fd)  # also drops the flock
            self._out = None

    def cancel(self) -> None:
        if self._state != "open" or self._out is None:
            return
        self._state = "cancelled"
        fd = self._out.fd
        self._out.discard()
        try:
            with _os_errors(self._path):
                if self._created and self._still_ours(fd):
                    os.unlink(self._full)
                else:
                    os.ftruncate(fd, self._start)
        finally:
            self._release()

    def _still_ours(self, fd: int) -> bool:
        try:
            mine, there = os.fstat(fd), os.stat(self._full)
        except FileNotFoundError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def close(self) -> None:
        self.cancel()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":
            with contextlib.suppress(Exception):
                self.cancel()
