"""Moving bytes between HTTP and storage without holding a blob in memory.

- `write_body`: a request body -> a `FileWriter`. Incoming chunks (uvicorn delivers up to
  256 KiB) are gathered, uncopied, into ~1 MiB batches; each batch is written in a worker
  thread while the next one is being received (one batch in flight, so memory stays
  bounded). A client that
  disconnects mid-body raises `ClientDisconnect`; the caller cancels the writer, so no
  partial chunk is ever kept.
- `parse_range`: the one Range header parser (single `bytes=` range; anything else is
  ignored as RFC 9110 allows, except an unsatisfiable range, which is a 416).
- `ContentResponse`: sends `length` bytes of a readable stream (a blob from any driver, or
  an OS file when the driver has a local path). When the stream is an OS file and the
  server offers the ASGI `http.response.zerocopysend` extension (lading.server's protocol
  does, on plain TCP), the server sends the file itself (sendfile: no copy through Python,
  ranges too); else, for the whole file and a server offering `http.response.pathsend`,
  the server sends the path. Otherwise reads run in a thread with 1 MiB chunks. It stops as
  soon as the client goes away.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Awaitable, Callable, Mapping
from typing import BinaryIO

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from pipeline.storage.driver import FileWriter

BUFFER_SIZE = 1024 * 1024
READ_CHUNK = 1024 * 1024
ZEROCOPYSEND = "http.response.zerocopysend"
PATHSEND = "http.response.pathsend"


async def write_body(request: Request, writer: FileWriter, buffer_size: int | None = None) -> int:
    """Stream the request body into `writer` (not committed here); return the bytes written.

    Raises starlette.requests.ClientDisconnect if the client goes away; the caller cancels."""
    buffer_size = buffer_size or BUFFER_SIZE
    send_stream, receive_stream = anyio.create_memory_object_stream[list[bytes]](1)
    written = 0

    async def consume(stream: MemoryObjectReceiveStream[list[bytes]]) -> None:
        nonlocal written
        async with stream:
            async for parts in stream:
                written += await anyio.to_thread.run_sync(_write_parts, writer, parts)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, receive_stream)
            async with send_stream:
                try:
                    # The chunks as received, not copied into one buffer: the writer takes
                    # each (the filesystem driver hands them to one writev).
                    parts: list[bytes] = []
                    gathered = 0
                    async for chunk in request.stream():
                        if not chunk:
                            continue
                        parts.append(chunk)
                        gathered += len(chunk)
                        if gathered >= buffer_size:
                            await send_stream.send(parts)
                            parts, gathered = [], 0
                    if parts:
                        await send_stream.send(parts)
                except anyio.BrokenResourceError:
                    pass  # the writer failed; the task group raises its error
    except BaseExceptionGroup as group:
        # Callers handle plain errors (ClientDisconnect, StorageUnavailable, ...), not groups.
        raise first_error(group) from None
    return written


def _write_parts(writer: FileWriter, parts: list[bytes]) -> int:
    """One thread hop: write each part; the bytes written."""
    total = 0
    for part in parts:
        total += writer.write(part)
    return total


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error in a (nested) exception group, preferring real errors to the
    cancellations they caused."""
    leaves: list[BaseException] = []
    todo: list[BaseException] = [group]
    while todo:
        exc = todo.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            todo[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    cancelled = anyio.get_cancelled_exc_class()
    for exc in leaves:
        if not isinstance(exc, cancelled):
            return exc
    return leaves[0]


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it exceeds `limit` bytes (the rest is not read)."""
    declared = decimal(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


_RANGE = re.compile(r"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$")
MAX_DIGITS = 19  # a byte offset or count fits Go's int64, as distribution parses them


def decimal(text: str | None) -> int | None:
    """The value of `text` if it is a plain non-negative decimal number of at most
    MAX_DIGITS ASCII digits, else None (Unicode digits such as `²` or `٣`, signs, spaces,
    5,000-digit numbers: never an int() that raises or takes quadratic time)."""
    if text is None or not 0 < len(text) <= MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)


class RangeNotSatisfiable(Exception):
    """The Range header names no byte of the content (answer 416, `bytes */<size>`)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range, or None to send everything.

    Multiple ranges and malformed headers are ignored (a full 200 answer), as RFC 9110
    permits; a well-formed range past the end, or with a number too long for an int64
    (Go's http.ServeContent under distribution answers those 416 too), raises
    RangeNotSatisfiable."""
    if not header:
        return None
    m = _RANGE.match(header)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if len(first) > MAX_DIGITS or len(last) > MAX_DIGITS:
        raise RangeNotSatisfiable()
    if not first:  # suffix range: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable()
    return start, min(end, size - 1)


class ContentResponse(Response):
    """`length` bytes of `stream` (already positioned at the first byte to send; closed here).

    `stream` is None for HEAD answers and empty bodies. `path` (optional) says `stream` is
    the OS file at that path: a server offering zerocopysend sends `length` bytes of it from
    the stream's position; with `whole=True` (the file holds exactly these bytes) a server
    offering pathsend sends the path."""

    def __init__(
        self,
        stream: BinaryIO | None,
        length: int,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        path: str | None = None,
        whole: bool = False,
    ) -> None:
        self.stream = stream
        self.length = length
        self.path = path
        self.whole = whole
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        merged = dict(headers or {})
        merged["Content-Length"] = str(length)
        self.init_headers(merged)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, self.stream = self.stream, None
        try:
            start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            await send(start)
            if stream is None or scope.get("method") == "HEAD" or self.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            extensions = scope.get("extensions") or {}
            if self.path is not None and ZEROCOPYSEND in extensions and _is_os_file(stream):
                message = {
                    "type": ZEROCOPYSEND,
                    "file": stream,
                    "offset": stream.tell(),
                    "count": self.length,
                    "more_body": False,
                }
                await self._until_disconnect(lambda: _send_file(send, message), receive)
                return
            if self.path is not None and self.whole and PATHSEND in extensions:
                await send({"type": PATHSEND, "path": self.path})
                return
            await self._until_disconnect(lambda: self._stream(stream, send), receive)
        finally:
            if stream is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(stream.close)

    async def _until_disconnect(self, sending: Callable[[], Awaitable[None]], receive: Receive) -> None:
        async with anyio.create_task_group() as tg:

            async def stream_then_stop() -> None:
                await sending()
                tg.cancel_scope.cancel()

            async def stop_on_disconnect() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stream_then_stop)
            tg.start_soon(stop_on_disconnect)

    async def _stream(self, stream: BinaryIO, send: Send) -> None:
        remaining = self.length
        try:
            while remaining > 0:
                chunk = await anyio.to_thread.run_sync(stream.read, min(READ_CHUNK, remaining))
                if not chunk:
                    # Storage holds fewer bytes than announced: end the connection rather
                    # than pretend a short body is complete.
                    raise OSError("content ended early")
                remaining -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        except OSError:
            # Client gone (ASGI 2.4 servers raise on send) or a short storage read.
            return


async def _send_file(send: Send, message: dict[str, object]) -> None:
    try:
        await send(message)
    except OSError:
        return  # client gone (the server has ended the connection)


def _is_os_file(stream: BinaryIO) -> bool:
    """True if `stream` reads a regular OS file (what sendfile can send from)."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation), or closed
        return False
