"""The id of the request being handled, and the ids of the jobs it sent.

Both live in context variables set by api.logs.RequestLog when a request arrives (inside
api.middleware.RequestMiddleware) and reset when its response was sent, so anything the
request does — log lines (api.logs.JsonFormatter), notification envelopes (api.notify),
the job client — can read them without having the request passed down. The job client
calls `note_job(job_id)` for each job it sends; the request's access-log line lists them
(`jobs`), which links a request to its jobs in Flower and in the worker logs.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

from starlette.types import Scope

from pipeline.infra.logs import request_id  # read by pipeline.infra.logs.JsonFormatter

__all__ = [
    "REQUEST_ID_HEADER",
    "current_job_ids",
    "current_request_id",
    "incoming_id",
    "job_ids",
    "new_id",
    "note_job",
    "request_id",
]

REQUEST_ID_HEADER = "X-Request-Id"
HEADER_KEY = REQUEST_ID_HEADER.lower().encode()
# A client-supplied id is echoed into headers and logs: accept only a safe, short token.
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

job_ids: ContextVar[list[str] | None] = ContextVar("lading_request_jobs", default=None)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return request_id.get()


def current_job_ids() -> list[str]:
    """The ids of the jobs the current request sent so far (a copy; [] outside a request)."""
    return list(job_ids.get() or ())


def note_job(job_id: str) -> None:
    """Record that the current request sent job `job_id` (nothing outside a request).
    The list is shared by reference, so a send from a worker thread the request started
    (anyio copies the context into it) is recorded too."""
    sent = job_ids.get()
    if sent is not None:
        sent.append(job_id)


def new_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4().hex, cheaper


def incoming_id(scope: Scope) -> str | None:
    """The client's `X-Request-Id` when it is a safe token, else None."""
    for name, value in scope.get("headers", ()):
        if name.lower() == HEADER_KEY:
            text = value.decode("latin-1").strip()
            return text if _VALID_ID.match(text) else None
    return None
