"""The storage driver contract every backend implements, modelled on distribution's
`storagedriver.StorageDriver`.

Paths are absolute, `/`-separated, and already validated by `checked.CheckedDriver`
(the one place the path grammar is enforced) before a backend sees them. Backends
translate their own errors (OSError, SDK errors) into `pipeline.errors.StorageError`
subclasses inside the backend module, once; transient failures become
`StorageUnavailable`, the one error jobs retry.

Optional features are declared in `Capabilities`, never discovered by catching
`NotImplementedError`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from pipeline.errors import UnsupportedMethod


@dataclass(frozen=True)
class Capabilities:
    """What a driver offers beyond the core contract.

    redirect:   `redirect_url` returns URLs clients can fetch content from directly.
    walk:       `walk` is native (faster than the generic list/stat recursion).
    local_path: `local_path` returns an OS path, so a server can send the file zero-copy.
    """

    redirect: bool = False
    walk: bool = False
    local_path: bool = False


@dataclass(frozen=True)
class FileInfo:
    """What `stat` knows about a path. Directories have size 0."""

    path: str
    size: int
    modified: datetime
    is_dir: bool


@dataclass(frozen=True)
class UnfinishedWrite:
    """What a writer that never committed or cancelled (its process died) left in the
    backend: an S3 multipart upload, a GCS part object, an Azure blob of uncommitted
    blocks, a filesystem temporary file. `path` is the storage path it was written for
    (or the hidden path of the artifact itself), `modified` when it was last written as
    far as the backend says, `size` the bytes it holds (0 when the backend does not say)."""

    path: str
    modified: datetime
    size: int


class FileWriter(abc.ABC):
    """An appending writer. For a new file (append=False) nothing is visible at the
    path until `commit`; `cancel` discards everything written. For append=True the
    writer continues an existing file; `size` starts at its current size, and `cancel`
    restores the size the file had when the writer was opened."""

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes in the file including everything written so far."""

    @abc.abstractmethod
    def write(self, data: bytes) -> int:
        """Append `data`; return the number of bytes written."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Make everything written durable and visible at the path."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Discard what this writer wrote."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources. Closing without commit or cancel cancels."""

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.cancel()
        self.close()


class StorageDriver(abc.ABC):
    """The contract. Every method may raise `StorageUnavailable` for transient failures."""

    name: str = "abstract"
    capabilities: Capabilities = Capabilities()

    @abc.abstractmethod
    def get_content(self, path: str) -> bytes:
        """The whole content of a file. PathNotFound if absent."""

    @abc.abstractmethod
    def put_content(self, path: str, content: bytes) -> None:
        """Atomically replace (or create) the file at path with content."""

    @abc.abstractmethod
    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        """A readable, seekable binary stream starting at offset. Offset equal to the
        size gives an empty stream; offset past the end or negative → InvalidOffset;
        missing file → PathNotFound. The caller closes it."""

    @abc.abstractmethod
    def writer(self, path: str, append: bool = False) -> FileWriter:
        """A FileWriter for path (see FileWriter for append semantics). append=True on a
        missing file starts it empty."""

    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo:
        """FileInfo for a file or directory. PathNotFound if absent."""

    @abc.abstractmethod
    def list(self, path: str) -> list[str]:
        """Full paths of the direct children of a directory, sorted. PathNotFound if the
        directory does not exist (the root `/` always exists)."""

    @abc.abstractmethod
    def move(self, source: str, dest: str) -> None:
        """Move a file or a directory. PathNotFound if source is absent. The same rule on
        every driver (`objects.check_move`): a file replaces a file; a move onto a directory
        holding files, or of a directory onto a file, raises PathExists and changes nothing
        (an empty directory, which only filesystem and memory can have, counts as absent).
        Atomic on the filesystem (rename); on object stores it is copy-then-delete, so a
        crash in between leaves both copies, never neither."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Delete a file or a directory recursively. PathNotFound if absent."""

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A URL clients may fetch the content from directly (capabilities.redirect)."""
        raise UnsupportedMethod("redirect_url")

    def local_path(self, path: str) -> str | None:
        """The OS path of a file, for zero-copy sending (capabilities.local_path)."""
        raise UnsupportedMethod("local_path")

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        """Discard what writers that died mid-write left behind, last written before
        `before` (dry_run: only report it). Never touches committed files, nor anything
        written at or after `before`: `lading purge-uploads` passes its purge age, so a
        writer still at work is safe. The default is for drivers whose writers leave
        nothing behind when their process dies."""
        return []

    def walk(self, path: str) -> Iterator[FileInfo]:
        """Every file and directory below path, depth first, in lexical order.
        Generic fallback over list/stat; drivers with capabilities.walk override it."""
        for child in self.list(path):
            info = self.stat(child)
            yield info
            if info.is_dir:
                yield from self.walk(child)

    def exists(self, path: str) -> bool:
        """True when a file or directory exists at path."""
        from pipeline.errors import PathNotFound

        try:
            self.stat(path)
        except PathNotFound:
            return False
        return True
