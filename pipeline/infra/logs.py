"""One structured log format for every Lading process: the API, workers, beat, the CLI.

`JsonFormatter` renders a log record as one JSON object per line — time, level, logger,
msg, then the fields of the current context and any `extra=` fields — so one log
pipeline reads the API's request lines and a worker's job lines alike.
`configure_logging` sends the root logger there (stderr by default).

Context fields: `request_id` (set by the API for everything a request does) and
`log_fields(...)` (set by the workers around each job: job id, job name, repository).
Both are context variables, so they follow a request or a job across awaits and stay
apart between threads of a threads pool.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "JsonFormatter",
    "configure_logging",
    "log_fields",
    "request_id",
    "reset_log_fields",
    "set_log_fields",
]

request_id: ContextVar[str | None] = ContextVar("lading_request_id", default=None)
_fields: ContextVar[tuple[tuple[str, Any], ...]] = ContextVar("lading_log_fields", default=())

# Attributes every LogRecord has; anything else passed via `extra=` becomes a JSON field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
    "data",  # Celery's copy of a log call's arguments (its own formatter's)
}


def set_log_fields(**fields: Any) -> Token[tuple[tuple[str, Any], ...]]:
    """From now on (in this context) every record carries `fields` (None values are left
    out) until `reset_log_fields` is given the returned token."""
    merged = {**dict(_fields.get()), **{k: v for k, v in fields.items() if v is not None}}
    return _fields.set(tuple(merged.items()))


def reset_log_fields(token: Token[tuple[tuple[str, Any], ...]]) -> None:
    _fields.reset(token)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Every record logged inside the block (in this context) carries `fields`."""
    token = set_log_fields(**fields)
    try:
        yield
    finally:
        reset_log_fields(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, msg, request_id, context fields,
    extra fields, exc (a formatted traceback, when there is one)."""

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
        for key, value in _fields.get():
            entry.setdefault(key, value)
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
    """Send every log record (root logger) and Python warning to `stream` (stderr) as
    JSON lines."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python warnings too, as `py.warnings` records
