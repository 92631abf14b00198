"""Structured JSON logs: one line per request, and the request id every log line carries.

`RequestLog` takes the client's `X-Request-Id` (or makes one), has it echoed on the
response, keeps it current (api.request_id) for everything the request does, and logs
method, route template, path, status, bytes in/out, duration and the ids of the jobs the
request sent (`jobs`) when the response ends. It runs inside api.middleware's one pure
ASGI middleware (streamed bodies are not buffered). `JsonFormatter` (pipeline.infra.logs, shared
with the workers and beat) renders any log record as one JSON object and adds the current
request id, so lines from deeper code are linked to their request.
"""

from __future__ import annotations

import logging
from contextvars import Token

from starlette.types import Scope

from api.request_id import HEADER_KEY, incoming_id, job_ids, new_id, request_id
from pipeline.infra.logs import JsonFormatter, configure_logging

__all__ = ["JsonFormatter", "RequestLog", "configure_logging"]

access_log = logging.getLogger("lading.access")

_Tokens = tuple[Token[str | None], Token[list[str] | None]]


class RequestLog:
    """The request id and the access log of requests, for api.middleware.RequestMiddleware:
    `begin` when a request arrives, `end` once its response was sent (or it failed)."""

    header_key = HEADER_KEY

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or access_log

    def begin(self, scope: Scope) -> tuple[str, _Tokens]:
        """The request's id (the client's `X-Request-Id` when safe, else a new one), made
        current for everything the request does, with an empty list of the jobs it sends;
        the tokens give both back to `end`."""
        rid = incoming_id(scope) or new_id()
        scope.setdefault("state", {})["request_id"] = rid
        return rid, (request_id.set(rid), job_ids.set([]))

    def end(
        self,
        scope: Scope,
        rid: str,
        token: _Tokens,
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
            sent = job_ids.get()
            if sent:
                fields["jobs"] = list(sent)
            if error is not None:
                fields["error"] = f"{type(error).__name__}: {error}"
            self.logger.info("%s %s %s", scope["method"], scope["path"], status, extra=fields)
        finally:
            job_ids.reset(token[1])
            request_id.reset(token[0])
