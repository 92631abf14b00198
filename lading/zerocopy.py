"""Zero-copy file responses for uvicorn's httptools protocol: the ASGI
`http.response.zerocopysend` extension, served with `os.sendfile`.

uvicorn has neither `http.response.pathsend` nor `http.response.zerocopysend`, so a blob
download used to cost a 1 MiB read into Python, a copy into the transport and a write per
chunk, one after the other; distribution (Go's net/http) hands the socket to `sendfile`.
`FileSends` makes our protocol subclass (`lading.http_limits`) do the same:

- each request's scope offers `http.response.zerocopysend` on plain-TCP connections (not
  under TLS: the kernel would send the file unencrypted);
- a `{"type": "http.response.zerocopysend", "file", "offset", "count", "more_body"}` message
  is sent by `os.sendfile` from the file's descriptor straight to the socket, in a worker
  thread that waits for the socket with `poll` while the client drains it. The thread
  works on duplicates of both descriptors, so neither the app closing its file nor uvicorn
  closing a dropped connection can let it write into a descriptor number reused meanwhile;
- the message's bytes count against the response's Content-Length exactly as body bytes
  do (uvicorn's own bookkeeping completes the response and keeps the connection's
  framing), and a response uvicorn must frame itself (chunked), bytes still in the
  transport's buffer, or every sendfile slot in use make it fall back to reading the file
  in chunks and sending them as ordinary body messages;
- the client going away ends the copy (the socket errors, or the app's task is cancelled
  and the thread stops at its next wake-up); a file shorter than `count` or a failed copy
  closes the connection (a truncated body is never framed as complete) and `send` raises
  OSError, as ASGI servers do for a client that left.

It relies on uvicorn's `RequestResponseCycle` (its `send`, `transport`, `disconnected`,
`response_started`, `response_complete`, `chunked_encoding`, `expected_content_length`,
`keep_alive`) and on the protocol building `self.cycle` in `on_headers_complete`;
tests/lading/test_bodies.py fails if those change.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["ZEROCOPYSEND", "FileSends"]

ZEROCOPYSEND = "http.response.zerocopysend"
# Threads that may be copying at once; past that, downloads fall back to chunked reads
# (which share anyio's default pool) rather than wait.
MAX_SENDING = 128
_POLL_MS = 500  # how often a thread waiting for a stalled client checks it was stopped
_FALLBACK_CHUNK = 1024 * 1024
_sendfile = os.sendfile  # tests count calls through this name

_Send = Callable[[Any], Awaitable[None]]


class FileSends:
    """Zero-copy sends for one server's connections (one instance per protocol class)."""

    def __init__(self, max_sending: int = MAX_SENDING) -> None:
        self.max_sending = max_sending
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made in the server's event loop
            self._limiter = anyio.CapacityLimiter(self.max_sending)
        return self._limiter

    def wrap(self, cycle: Any) -> None:
        """Make `cycle.send` (a uvicorn RequestResponseCycle's) accept zerocopysend."""
        original: _Send = cycle.send

        async def send(message: Any) -> None:
            if message["type"] == ZEROCOPYSEND:
                await self._zerocopy(cycle, original, message)
            else:
                await original(message)

        cycle.send = send

    async def _zerocopy(self, cycle: Any, original: _Send, message: Any) -> None:
        if cycle.disconnected:
            return
        if not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"Unexpected ASGI message {ZEROCOPYSEND!r} outside a response body.")
        fd = message["file"].fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = max(0, os.fstat(fd).st_size - offset)
        more_body = bool(message.get("more_body", False))
        end = {"type": "http.response.body", "body": b"", "more_body": more_body}
        transport = cycle.transport
        if cycle.scope["method"] == "HEAD" or count == 0:
            await original(end)
            return
        sock = transport.get_extra_info("socket")
        if (
            sock is None
            or cycle.chunked_encoding
            or transport.is_closing()
            or transport.get_write_buffer_size()
            or self.limiter.available_tokens < 1
        ):
            await _copy_in_chunks(fd, offset, count, original, more_body)
            return
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        job = _Copy(sock.fileno(), fd, offset, count)
        try:
            sent = await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True, limiter=self.limiter)
        except BaseException:
            job.stop()  # cancelled (client gone, shutdown): the thread ends at its next wake-up
            raise
        cycle.expected_content_length -= sent
        if sent < count:
            if not cycle.disconnected:
                cycle.keep_alive = False
                transport.close()
            raise OSError(f"sent {sent} of {count} bytes: client gone or file shorter than announced")
        await original(end)


class _Copy:
    """One sendfile copy, run in a worker thread, on duplicates of the socket's and the
    file's descriptors: closing either original (the app closing its file, uvicorn closing
    a dropped connection) cannot make the copy write into a descriptor number reused
    meanwhile. Whoever ends it closes the duplicates: the thread when it ran, `stop` when
    it never started."""

    def __init__(self, sock: int, fd: int, offset: int, count: int) -> None:
        self.offset = offset
        self.count = count
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._started = False
        self.out_fd = os.dup(sock)
        try:
            self.in_fd = os.dup(fd)
        except BaseException:
            os.close(self.out_fd)
            raise

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            if not self._started:
                self._close()

    def _close(self) -> None:
        os.close(self.out_fd)
        os.close(self.in_fd)

    def run(self) -> int:
        """Send the bytes; how many were sent (fewer if the socket failed, the file ended
        early or `stop` was called)."""
        with self._lock:
            if self._stopped.is_set():
                return 0
            self._started = True
        sent = 0
        try:
            poller = select.poll()
            poller.register(self.out_fd, select.POLLOUT)
            while sent < self.count and not self._stopped.is_set():
                try:
                    n = _sendfile(self.out_fd, self.in_fd, self.offset + sent, self.count - sent)
                except BlockingIOError:
                    poller.poll(_POLL_MS)
                    continue
                if n == 0:
                    break  # the file ended early
                sent += n
        except OSError:
            pass  # the client reset the connection, or the file could not be read
        finally:
            self._close()
        return sent


async def _copy_in_chunks(fd: int, offset: int, count: int, send: _Send, more_body: bool) -> None:
    """The fallback: pread chunks in a thread, send each as a body message."""
    remaining = count
    while remaining > 0:
        chunk = await anyio.to_thread.run_sync(os.pread, fd, min(_FALLBACK_CHUNK, remaining), offset)
        if not chunk:
            raise OSError("file shorter than announced")
        offset += len(chunk)
        remaining -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0 or more_body})
