"""Structured JSON logs: one line per request, and the request id every log line carries.

`RequestLog` takes the client's `X-Request-Id` (or makes one), has it echoed on the
response, keeps it in the `request_id` context variable for everything the request does
(the job client logs job ids with it), and logs method, route template, path, status,
bytes in/out and duration when the response ends. It runs inside api.middleware's one
pure ASGI middleware (streamed bodies are not buffered); `RequestLogMiddleware` is that
middleware with the request log alone. `JsonFormatter` (pipeline.logs, shared with the
workers and beat) renders any log record as one JSON object and adds the current request
id, so lines from deeper code are linked to their request.
"""

from __future__ import annotations

import logging
import os
import re
from contextvars import Token

from starlette.types import ASGIApp, Scope

from api.middleware import RequestMiddleware
from pipeline.logs import JsonFormatter, configure_logging, request_id

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestLog",
    "RequestLogMiddleware",
    "configure_logging",
    "current_request_id",
    "request_id",
]

REQUEST_ID_HEADER = "X-Request-Id"
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# A client-supplied id is echoed into headers and logs: accept only a safe, short token.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

access_log = logging.getLogger("lading.access")


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return request_id.get()


class RequestLog:
    """The request id and the access log of requests, for api.middleware.RequestMiddleware:
    `begin` when a request arrives, `end` once its response was sent (or it failed)."""

    header_key = _HEADER_KEY

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or access_log

    def begin(self, scope: Scope) -> tuple[str, Token[str | None]]:
        """The request's id (the client's `X-Request-Id` when safe, else a new one), made
        current for everything the request does; the token gives it back to `end`."""
        rid = _incoming_id(scope) or os.urandom(16).hex()  # as random as uuid4().hex, cheaper
        scope.setdefault("state", {})["request_id"] = rid
        return rid, request_id.set(rid)

    def end(
        self,
        scope: Scope,
        rid: str,
        token: Token[str | None],
        route: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        seconds: float,
        error: BaseException | None = None,
    ) -> None:
        """Write the request's access-log line and stop it being the current request."""
        try:
            if not self.logger.isEnabledFor(logging.INFO):
                return  # e.g. log level warn: skip building the line
            fields = {
                "method": scope["method"],
                "route": route,
                "path": scope["path"],
                "status": status,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": round(seconds * 1000, 3),
                "request_id": rid,
                "client": (scope.get("client") or ("", 0))[0],
            }
            if error is not None:
                fields["error"] = f"{type(error).__name__}: {error}"
            self.logger.info("%s %s %s", scope["method"], scope["path"], status, extra=fields)
        finally:
            request_id.reset(token)


class RequestLogMiddleware(RequestMiddleware):
    """Pure ASGI middleware: request id in, request id out, one access-log line per request
    (the request log alone; lading.embedded combines it with metrics in one middleware)."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        super().__init__(app, log=RequestLog(logger))


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == _HEADER_KEY:
            text = value.decode("latin-1").strip()
            return text if _VALID_ID.match(text) else None
    return None
