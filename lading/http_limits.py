"""Bounds on request heads, enforced where the bytes arrive: before parsing finishes, before
any route or auth code runs.

uvicorn's httptools protocol has no limit on the request line and header block: llhttp
hands httptools each header in pieces and httptools concatenates them until the header
ends, so an unterminated 128 MiB header is 128 MiB (and quadratic copying) per connection,
and a connection that dribbles one byte a minute is kept forever. Go's net/http, under
distribution, stops reading at `MaxHeaderBytes` (1 MiB) and answers 431.

`limited_protocol(limits)` is uvicorn's httptools protocol with three guards:

- **size**: at most `max_header_bytes` from the start of a request to the end of its
  headers. A read that would cross the limit is fed only up to it; if the parser has not
  seen the end of the headers by then, the client gets `431 Request Header Fields Too
  Large` and the connection is closed. (Bytes of a pipelined request that arrive in the
  same read as the end of the previous one are not counted: at most one socket read, 256 KiB
  under uvloop.)
- **count**: more than `max_headers` header fields → 431.
- **time**: the head must be complete within `header_timeout` seconds of the connection
  opening, or of its first byte for later requests on a keep-alive connection (Go's
  `ReadHeaderTimeout`); otherwise the connection is closed. Idle keep-alive time between
  requests is uvicorn's `timeout_keep_alive`.

It also serves the ASGI `http.response.zerocopysend` extension with sendfile
(`lading.zerocopy`), and hands request bodies to the app uncopied: uvicorn appends every
piece httptools parses to a bytearray and copies that again into each `http.request`
message (two copies of every uploaded byte); here the pieces are kept as they are and a
message carries the one piece received (or, rarely, several joined). Reading still pauses
past uvicorn's 64 KiB, so what a connection holds is unchanged.

It subclasses `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` (uvicorn's `http`
option accepts a protocol class) and relies on its parser callbacks `on_message_begin`,
`on_header`, `on_headers_complete`, `on_body`, `on_message_complete`, on `send_400_response`
for a parser error, and on its `RequestResponseCycle.receive` answering from the cycle's
`body`, `more_body` and `message_event`; tests/lading/test_http_limits.py and
tests/lading/test_bodies.py fail if those change.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lading.zerocopy import ZEROCOPYSEND, FileSends

__all__ = ["HeadLimits", "limited_protocol"]

log = logging.getLogger("lading.server")

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 35\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"431 Request Header Fields Too Large"
)


@dataclass(frozen=True)
class HeadLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float


class _TooManyHeaders(Exception):
    pass


class _Body:
    """The request body pieces received and not yet handed to the app."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def take(self) -> bytes:
        parts = self.parts
        if not parts:
            return b""
        self.parts, self.size = [], 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _wrap_receive(cycle: Any, body: _Body) -> None:
    """`cycle.receive` answering with the pieces in `body` (uvicorn's own `cycle.body`
    stays empty: `on_body` below never fills it)."""
    original = cycle.receive

    async def receive() -> Any:
        message = await original()
        if message["type"] == "http.request":
            message["body"] = body.take()
        return message

    cycle.receive = receive


class _LimitedHttpToolsProtocol(HttpToolsProtocol):
    limits: HeadLimits  # set on the subclass limited_protocol makes
    file_sends: FileSends  # likewise: zero-copy file responses (lading.zerocopy)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._too_large = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started: float | None = None  # loop time of the current head's first byte
        self._body = _Body()  # the current request's (a new one per request)

    # --- the timer ---------------------------------------------------------------------
    # One timer per connection, not per request: a head's start is only noted, and a timer
    # that fires while no head is late re-arms for the current head's remaining time (or
    # not at all between requests). A timer created and cancelled for every request was
    # 4% of the API's CPU at 8 concurrent small pushes.

    def _start_head_timer(self) -> None:
        if self._head_started is None:
            self._head_started = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        started = self._head_started
        if not self._in_head or started is None or self.transport.is_closing():
            return  # between requests: the next head's first byte arms it again
        remaining = started + self.limits.header_timeout - self.loop.time()
        if remaining > 0:  # this head started after the timer did
            self._head_timer = self.loop.call_later(remaining, self._head_timed_out)
            return
        log.info("closing a connection whose request head took over %gs", self.limits.header_timeout)
        self.transport.close()

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        self._start_head_timer()
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what fits; the rest is accepted only if the head ended within it.
        self._head_bytes += room
        if room > 0:
            super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._in_head:
            self._reject(f"header block over {self.limits.max_header_bytes} bytes")
            return
        super().data_received(data[room:])

    # --- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()
        if self.scheme == "http":  # never under TLS: sendfile would bypass the encryption
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope.setdefault("extensions", {})[ZEROCOPYSEND] = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._too_large = True
            raise _TooManyHeaders  # httptools aborts the parse; uvicorn calls send_400_response
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_started = None  # the timer, if pending, finds no late head and lapses
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before:
            self._body = _Body()
            _wrap_receive(cycle, self._body)
            if self.scheme == "http":
                self.file_sends.wrap(cycle)

    def on_body(self, body: bytes) -> None:
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        held = self._body
        held.parts.append(body)
        held.size += len(body)
        if held.size > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._reject(f"more than {self.limits.max_headers} header fields")
        else:
            super().send_400_response(msg)

    def _reject(self, why: str) -> None:
        log.info("431 to %s: %s", self.client, why)
        self._stop_head_timer()
        self.transport.write(_431)
        self.transport.close()


def limited_protocol(limits: HeadLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class bounded by `limits` (pass as `Config(http=...)`),
    with zero-copy file responses (`lading.zerocopy`)."""
    attributes = {"limits": limits, "file_sends": FileSends()}
    return type("LimitedHttpToolsProtocol", (_LimitedHttpToolsProtocol,), attributes)
