"""The storage path grammar, and the one driver wrapper that enforces it.

A storage path is `/` or one or more `/segment` parts, each segment made of
`[A-Za-z0-9._-]` and never `.` or `..` — distribution's `PathRegexp` plus the dot-segment
rule. `CheckedDriver` validates every path before the wrapped backend sees it, so no
backend has to defend against traversal (`/a/../../etc`) or ambiguous spellings (`/a//b`,
`/a/`) on its own. `factory.driver_from_settings` always returns one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import BinaryIO

from pipeline.errors import InvalidPath, PathNotFound
from pipeline.storage.driver import FileInfo, FileWriter, StorageDriver, UnfinishedWrite

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def validate_path(path: str) -> str:
    """Return `path` if it follows the grammar, else raise InvalidPath saying why."""
    if not isinstance(path, str):
        raise InvalidPath(repr(path), f"path must be a string, got {type(path).__name__}")
    if path == "/":
        return path
    if not path.startswith("/"):
        raise InvalidPath(path, "path must be absolute (start with '/')")
    if path.endswith("/"):
        raise InvalidPath(path, "path must not end with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise InvalidPath(path, "path must not contain an empty segment ('//')")
        if segment in (".", ".."):
            raise InvalidPath(path, f"path must not contain a {segment!r} segment")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidPath(path, f"segment {segment!r} has characters outside [A-Za-z0-9._-]")
    return path


class CheckedDriver(StorageDriver):
    """Validates every path, then delegates to `inner` unchanged."""

    def __init__(self, inner: StorageDriver) -> None:
        self._inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities

    @property
    def inner(self) -> StorageDriver:
        """The wrapped backend (for tests and diagnostics; stores use the wrapper)."""
        return self._inner

    def __repr__(self) -> str:
        return f"CheckedDriver({self._inner!r})"

    def get_content(self, path: str) -> bytes:
        return self._inner.get_content(validate_path(path))

    def put_content(self, path: str, content: bytes) -> None:
        self._inner.put_content(validate_path(path), content)

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        return self._inner.reader(validate_path(path), offset)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return self._inner.writer(validate_path(path), append)

    def stat(self, path: str) -> FileInfo:
        return self._inner.stat(validate_path(path))

    def list(self, path: str) -> list[str]:
        return self._inner.list(validate_path(path))

    def move(self, source: str, dest: str) -> None:
        """A move onto itself changes nothing on any driver (an object store's
        copy-then-delete would otherwise delete it)."""
        if validate_path(source) == validate_path(dest):
            if not self._inner.exists(source):
                raise PathNotFound(source)
            return
        self._inner.move(source, dest)

    def delete(self, path: str) -> None:
        self._inner.delete(validate_path(path))

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        return self._inner.redirect_url(validate_path(path), method)

    def local_path(self, path: str) -> str | None:
        return self._inner.local_path(validate_path(path))

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        return self._inner.purge_unfinished_writes(before, dry_run)

    def walk(self, path: str) -> Iterator[FileInfo]:
        return self._inner.walk(validate_path(path))

    def exists(self, path: str) -> bool:
        return self._inner.exists(validate_path(path))
