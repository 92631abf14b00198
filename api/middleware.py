"""The one pure ASGI middleware every HTTP request passes through, with one receive and one
send wrapper however many concerns it serves (a wrapper per concern used to cost a coroutine
call per response message each).

Per request, each part optional:
- the request id (api.logs.RequestLog, api.request_id): taken from the client or made,
  current while the app runs, set as the response's `X-Request-Id`;
- fixed response headers set on every response (the API version, see api.app);
- endpoints answered before the app (GET/HEAD on the metrics and health paths): logged, not
  counted in the metrics;
- once the response is sent: the request counted in api.metrics.Metrics and one access-log
  line written by the RequestLog, both labelled with `route_of(scope)`: the route template
  the app set in `scope["lading.route"]` (api.routes.router sets it on every request).

lading.embedded wraps the app in one instance doing all of it (api.app's own instance only
sets the version header when the app is used without lading.embedded).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:  # both import this module
    from api.logs import RequestLog
    from api.metrics import Metrics

__all__ = ["UNMATCHED", "RequestMiddleware", "route_of"]

UNMATCHED = "<unmatched>"
_CONTENT_LENGTH = b"content-length"
_FILE_SENDS = ("http.response.pathsend", "http.response.zerocopysend")


def route_of(scope: Scope) -> str:
    """The route template a request matched, never the raw path: `scope["lading.route"]`
    (set by the registry router and by this middleware's endpoints), else the Starlette
    route's path template, else "<unmatched>"."""
    explicit = scope.get("lading.route")
    if isinstance(explicit, str):
        return explicit
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMiddleware:
    """Request id, fixed headers, metrics and the access log around `app` (see module).

    `log` / `metrics`: what to record (None: nothing). `headers`: (name, value) pairs set
    on every response, replacing the app's own. `endpoints`: path -> ASGI app answering
    GET/HEAD on that exact path instead of `app`."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        log: RequestLog | None = None,
        metrics: Metrics | None = None,
        headers: Iterable[tuple[str, str]] = (),
        endpoints: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.log = log
        self.metrics = metrics
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self.endpoints = dict(endpoints or {})
        replaced = {name for name, _ in self.headers}
        if log is not None:
            replaced.add(log.header_key)
        self.replaced = frozenset(replaced)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = self.app
        log = self.log
        metrics = self.metrics
        method = scope["method"]
        if self.endpoints and method in ("GET", "HEAD"):
            endpoint = self.endpoints.get(scope["path"])
            if endpoint is not None:
                scope["lading.route"] = scope["path"]
                app = endpoint
                metrics = None
        start = time.perf_counter()
        added = self.headers
        replaced = self.replaced
        rid = ""
        token: Any = None
        if log is not None:
            rid, token = log.begin(scope)
            added = [*added, (log.header_key, rid.encode("latin-1"))]
        status = 0
        length_header = 0
        bytes_in = 0
        bytes_out = 0

        async def receive_counting() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def send_wrapped(message: Message) -> None:
            nonlocal status, bytes_out, length_header
            kind = message["type"]
            if kind == "http.response.body":
                bytes_out += len(message.get("body", b""))
            elif kind == "http.response.start":
                status = int(message["status"])
                headers = []
                for name, value in message.get("headers", ()):
                    lower = name.lower()
                    if lower in replaced:
                        continue
                    if lower == _CONTENT_LENGTH:
                        length_header = int(value)
                    headers.append((name, value))
                headers.extend(added)
                message = {**message, "headers": headers}
            elif kind in _FILE_SENDS:
                bytes_out += length_header  # the server sends the file itself
            await send(message)

        counting = log is not None or metrics is not None
        upload = metrics.request_started(method, scope["path"]) if metrics is not None else False
        error: BaseException | None = None
        try:
            await app(scope, receive_counting if counting else receive, send_wrapped)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if counting:
                seconds = time.perf_counter() - start
                route = route_of(scope)
                code = status or 500
                try:
                    if metrics is not None:
                        metrics.request_finished(method, route, code, seconds, bytes_in, bytes_out, upload)
                finally:
                    if log is not None:
                        log.end(scope, rid, token, route, code, bytes_in, bytes_out, seconds, error)
