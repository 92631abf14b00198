"""A seekable, lazily opened reader over one stored file — distribution's `fileReader`.

`FileReader` keeps a logical offset. Seeking only moves that offset; the driver stream is
opened on the next read, at the offset, and reused while reads stay sequential. So a
client that seeks around (range requests, resumed pulls) costs one `driver.reader` call
per discontinuity, and one that reads straight through costs one in total — which matters
on object stores, where each open is a request.

Unlike distribution, a file that vanished between `stat` and the first read raises
PathNotFound instead of reading as empty, so a truncated body is never mistaken for a
complete one.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

from pipeline.storage.driver import StorageDriver


class FileReader(io.RawIOBase):
    """Reads `path` (of known `size`) through `driver`. Reads stop at `size` (bytes a
    still-growing file gained later are not returned); reads at or past it return b""
    without touching the driver; SEEK_END is relative to `size`. Wrap it in
    `io.BufferedReader` where a `BinaryIO` is wanted."""

    def __init__(self, driver: StorageDriver, path: str, size: int) -> None:
        super().__init__()
        self.driver = driver
        self.path = path
        self.size = size
        self._offset = 0
        self._stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_not_closed()
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_not_closed()
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._offset + offset
        elif whence == os.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence!r}")
        if target < 0:
            raise ValueError(f"cannot seek to negative position {target}")
        if target != self._offset:
            self._drop_stream()
            self._offset = target
        return self._offset

    def readinto(self, buffer: Any) -> int:
        self._check_not_closed()
        remaining = self.size - self._offset
        view = memoryview(buffer).cast("B")[: max(remaining, 0)]
        if not view:
            return 0
        stream = self._open()
        readinto = getattr(stream, "readinto", None)
        if readinto is not None:
            n = readinto(view) or 0
        else:
            data = stream.read(len(view))
            n = len(data)
            view[:n] = data
        self._offset += n
        return n

    def readall(self) -> bytes:
        """Everything from the offset to `size`, in one driver read where possible."""
        self._check_not_closed()
        chunks = []
        while self._offset < self.size:
            data = self._open().read(self.size - self._offset)
            if not data:
                break
            chunks.append(data)
            self._offset += len(data)
        return b"".join(chunks)

    def _open(self) -> BinaryIO:
        if self._stream is None:
            self._stream = self.driver.reader(self.path, self._offset)
        return self._stream

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def _check_not_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed FileReader")

    def close(self) -> None:
        if not self.closed:
            self._drop_stream()
        super().close()
