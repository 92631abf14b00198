"""A tiny reverse proxy for tests: forwards every request to an upstream registry, records
each one (method, path, status), and can corrupt a blob's bytes on the way back.

Put it between Lading and the upstream to count exactly what Lading asks the upstream
(`count(...)`), to stop the "upstream" without touching it (`stop()`: the port refuses
connections), and to serve a corrupted blob (`corrupt.add(digest)`)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    status: int


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream  # host:port
        self.requests: list[Seen] = []
        self.corrupt: set[str] = set()  # blob digests whose first byte is flipped
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self._lock:
            return sum(
                1 for s in self.requests if (method is None or s.method == method) and contains in s.path
            )

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn = http.client.HTTPConnection(proxy.upstream, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                except OSError:
                    proxy._record(Seen(self.command, self.path, 502))
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy._record(Seen(self.command, self.path, response.status))
                data_length = response.getheader("content-length")
                payload = None if data_length is not None else response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                size = int(data_length) if data_length is not None else len(payload or b"")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if self.command == "HEAD":
                    conn.close()
                    return
                if payload is not None:
                    self.wfile.write(payload)
                    conn.close()
                    return
                flip = self.command == "GET" and any(f"/blobs/{d}" in self.path for d in proxy.corrupt)
                try:
                    while True:
                        chunk = response.read(256 * 1024)
                        if not chunk:
                            break
                        if flip:
                            chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                            flip = False
                        self.wfile.write(chunk)
                except OSError:
                    pass
                finally:
                    conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        return Handler


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    try:
        yield proxy
    finally:
        try:
            proxy.stop()
        except OSError:
            pass
