"""In-memory storage driver, for tests and throwaway registries. Thread-safe."""

from __future__ import annotations

import io
import threading
from datetime import datetime, timezone
from typing import BinaryIO

from pipeline.errors import InvalidOffset, PathNotFound
from pipeline.storage.driver import Capabilities, FileInfo, FileWriter, StorageDriver


def _parent_dirs(path: str) -> list[str]:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


class MemoryDriver(StorageDriver):
    """Files are bytes in a dict; directories are implied by the files below them."""

    name = "inmemory"
    capabilities = Capabilities()

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, datetime]] = {}
        self._lock = threading.RLock()

    def _is_dir(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return path == "/" or any(p.startswith(prefix) for p in self._files)

    def get_content(self, path: str) -> bytes:
        with self._lock:
            try:
                return self._files[path][0]
            except KeyError:
                raise PathNotFound(path) from None

    def put_content(self, path: str, content: bytes) -> None:
        with self._lock:
            self._files[path] = (bytes(content), datetime.now(timezone.utc))

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        data = self.get_content(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(path, offset)
        stream = io.BytesIO(data)
        stream.seek(offset)
        return stream

    def writer(self, path: str, append: bool = False) -> FileWriter:
        with self._lock:
            existing = self._files.get(path, (b"", None))[0] if append else b""
        return _MemoryWriter(self, path, existing)

    def stat(self, path: str) -> FileInfo:
        with self._lock:
            if path in self._files:
                data, modified = self._files[path]
                return FileInfo(path, len(data), modified, False)
            if self._is_dir(path):
                prefix = path.rstrip("/") + "/"
                latest = max(
                    (m for p, (_, m) in self._files.items() if p.startswith(prefix)),
                    default=datetime.now(timezone.utc),
                )
                return FileInfo(path, 0, latest, True)
        raise PathNotFound(path)

    def list(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            if path != "/" and not self._is_dir(path):
                raise PathNotFound(path)
            children = {prefix + p[len(prefix):].split("/", 1)[0] for p in self._files if p.startswith(prefix)}
        return sorted(children)

    def move(self, source: str, dest: str) -> None:
        with self._lock:
            try:
                self._files[dest] = (self._files.pop(source)[0], datetime.now(timezone.utc))
            except KeyError:
                raise PathNotFound(source) from None

    def delete(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        with self._lock:
            doomed = [p for p in self._files if p == path or p.startswith(prefix)]
            if not doomed:
                raise PathNotFound(path)
            for p in doomed:
                del self._files[p]


class _MemoryWriter(FileWriter):
    def __init__(self, driver: MemoryDriver, path: str, existing: bytes) -> None:
        self._driver = driver
        self._path = path
        self._buffer = bytearray(existing)
        self._done = False

    @property
    def size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def commit(self) -> None:
        self._driver.put_content(self._path, bytes(self._buffer))
        self._done = True

    def cancel(self) -> None:
        self._buffer = bytearray()
        self._done = True

    def close(self) -> None:
        self._done = True
