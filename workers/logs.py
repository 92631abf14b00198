"""Celery's worker, beat and task logging through Lading's one JSON format (pipeline.infra.logs).

Celery configures logging itself (its own text format on stderr, the root logger taken
over) unless a receiver of its `setup_logging` signal is connected: then it configures
nothing and leaves the handlers to us. `use_json_logging` connects one that installs
pipeline.infra.logs' JSON handler, so worker and beat lines come out as the API's do.

`tag_job_logs` makes every line logged while a job runs — the job's own and Celery's
("succeeded in", "raised unexpected", "retry: Retry in") — carry `job_id`, `job` and
`repository` (when the job has one), from Celery's `task_prerun`/`task_postrun` signals,
which bracket the whole execution of a task in the process and thread that runs it.
"""

from __future__ import annotations

import logging
import os
import threading
from contextvars import Token
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun
from celery.utils.log import get_multiprocessing_logger

from pipeline import jobs
from pipeline.infra.logs import configure_logging, reset_log_fields, set_log_fields

__all__ = ["tag_job_logs", "use_json_logging"]

_tokens: dict[str, Token[Any]] = {}
_lock = threading.Lock()


def use_json_logging(app: Celery, level: str) -> None:
    """Make `app`'s worker or beat, once started in this process, log JSON lines at `level`."""
    app.conf.worker_hijack_root_logger = False
    # Celery's prefork children replace sys.stdout/sys.stderr with a logger proxy when this
    # variable says so (a Celery process that started us may have left it set); our handler
    # writes to sys.stderr, so a proxied stderr would feed every record back into logging.
    app.conf.worker_redirect_stdouts = False
    os.environ.pop("CELERY_LOG_REDIRECT", None)

    def receiver(**_kwargs: Any) -> None:
        configure_logging(level)
        # billiard (the prefork pool) logs to a logger that does not propagate; without a
        # handler Python would print its lines ("Process … exited with …") as plain text.
        billiard = get_multiprocessing_logger()
        billiard.handlers = list(logging.getLogger().handlers)
        billiard.setLevel(logging.ERROR)  # as Celery sets it: its info lines are pool internals

    setup_logging.connect(receiver, weak=False, dispatch_uid="lading-json-logging")


def _job_started(task_id: str | None = None, task: Any = None, kwargs: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    if task_id is None or name not in jobs.ALL_JOBS:
        return
    repository = kwargs.get("repository") if isinstance(kwargs, dict) else None
    token = set_log_fields(job_id=task_id, job=name, repository=repository)
    with _lock:
        _tokens[task_id] = token


def _job_ended(task_id: str | None = None, **_: Any) -> None:
    with _lock:
        token = _tokens.pop(task_id or "", None)
    if token is not None:
        try:
            reset_log_fields(token)
        except ValueError:  # not this context's token (cannot happen with Celery's pools)
            pass


def tag_job_logs() -> None:
    """Connect the job log fields (idempotent: once per process)."""
    task_prerun.connect(_job_started, weak=False, dispatch_uid="lading-job-log-fields")
    task_postrun.connect(_job_ended, weak=False, dispatch_uid="lading-job-log-fields")
