"""Structured JSON logs: one line per request, and the request id every log line carries.

`RequestLog` takes the client's `X-Request-Id` (or makes one), has it echoed on the
response, keeps it in the `request_id` context variable for everything the request does
(the job client logs job ids with it), and logs method, route template, path, status,
bytes in/out and duration when the response ends. It runs inside api.middleware's one
pure ASGI middleware (streamed bodies are not buffered); `RequestLogMiddleware` is that
middleware with the request log alone. `JsonFormatter` renders any log record as one JSON
object and adds the current request id, so lines from deeper code are linked to their
request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Scope

from api.middleware import RequestMiddleware

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

request_id: ContextVar[str | None] = ContextVar("lading_request_id", default=None)

access_log = logging.getLogger("lading.access")

# Attributes every LogRecord has; anything else passed via `extra=` becomes a JSON field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return request_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, msg, request_id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted, not when the handler was
    made: a stream captured at configuration time (a test runner's, a redirected one) may be
    closed by the time a background thread (the embedded worker's beat) logs."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """Send every log record (root logger) to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


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
