"""Structured JSON logs: one line per request, and the request id every log line carries.

`RequestLogMiddleware` (pure ASGI, so streamed bodies are not buffered) takes the
client's `X-Request-Id` (or makes one), echoes it on the response, keeps it in the
`request_id` context variable for everything the request does (the job client logs job
ids with it), and logs method, route template, path, status, bytes in/out and duration
when the response ends. `JsonFormatter` renders any log record as one JSON object and adds
the current request id, so lines from deeper code are linked to their request.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import route_of

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
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


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """Send every log record (root logger) to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RequestLogMiddleware:
    """Pure ASGI middleware: request id in, request id out, one access-log line per request."""

    def __init__(self, app: ASGIApp, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.logger = logger or access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _incoming_id(scope) or uuid.uuid4().hex
        token = request_id.set(rid)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 0
        length_header = 0
        bytes_in = 0
        bytes_out = 0
        rid_header = (_HEADER_KEY, rid.encode())

        async def receive_counting() -> Message:
            nonlocal bytes_in
            message = await receive()
            if message["type"] == "http.request":
                bytes_in += len(message.get("body", b""))
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out, length_header
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER_KEY]
                for name, value in headers:
                    if name.lower() == b"content-length":
                        length_header = int(value)
                message = {**message, "headers": [*headers, rid_header]}
            elif kind == "http.response.body":
                bytes_out += len(message.get("body", b""))
            elif kind in ("http.response.pathsend", "http.response.zerocopysend"):
                bytes_out += length_header
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive_counting, send_with_id)
        except BaseException as exc:
            error = exc
            raise
        finally:
            fields = {
                "method": scope["method"],
                "route": route_of(scope),
                "path": scope["path"],
                "status": status or 500,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "request_id": rid,
                "client": (scope.get("client") or ("", 0))[0],
            }
            if error is not None:
                fields["error"] = f"{type(error).__name__}: {error}"
            self.logger.info(
                "%s %s %s", scope["method"], scope["path"], fields["status"], extra=fields
            )
            request_id.reset(token)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == _HEADER_KEY:
            text = value.decode("latin-1").strip()
            return text if _VALID_ID.match(text) else None
    return None
