"""A webhook receiver on 127.0.0.1 for notification tests: a real HTTP server in a thread
that records every request, and can be told to fail or be stopped and started again on the
same port (an endpoint that is down for a while)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        self.arrived = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    receiver.requests.append(
                        {
                            "path": self.path,
                            "headers": dict(self.headers.items()),
                            "body": json.loads(body),
                            "status": receiver.status,
                        }
                    )
                    receiver.arrived.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted_events(self) -> list[dict[str, Any]]:
        """Every event of every request answered 2xx (duplicates included)."""
        with self.arrived:
            return [e for r in self.requests if r["status"] < 300 for e in r["body"]["events"]]

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id in `ids` was accepted at least once; the ids still missing."""
        with self.arrived:
            self.arrived.wait_for(lambda: ids <= {e["id"] for e in self.accepted_events()}, timeout)
            return ids - {e["id"] for e in self.accepted_events()}
