"""Embedded mode: a job's first attempt runs directly on a pool thread, not through the broker.

In embedded mode the API and the worker share one process, so handing a job to the
in-memory broker buys nothing but cost: publishing the message, the worker's consumer loop
and strategy turning it back into a request, the tracer and the result store the waiter is
called back from were ~47% of the process's GIL time on 4 KiB pushes (py-spy, issue #17),
for a commit that took ~3%. `DirectJobs.submit` gives the job to one of its own threads
instead, which runs it through the same Celery task a scaled-out worker runs (the thin task
of workers/tasks.py, with its delivery policy) and hands the outcome straight back.

What is kept from a worker run:
- the task itself: `task.run` (Celery's auto-retry wrapper around the job function) under a
  request pushed with `Task.push_request`, as the worker's tracer does, so `task.request`
  carries the job id, its queue and `retries = 0`;
- retries go through the broker, with their backoff: a `StorageUnavailable` (any error of
  the job's `JobPolicy.retry_for`) makes Celery's auto-retry publish the job again with its
  countdown and raise `Retry` (an eager `Task.apply` would instead retry at once, inline).
  The embedded worker runs the retry; its result lands in the result backend, from which
  the waiter is then called back (`InProcessBackend.add_result_callback`);
- the `task_prerun` / `task_postrun` signals (the job's log fields, workers/logs.py) and
  `task_retry` (the embedded retry counter, lading/embedded.py); a failure is logged with
  its traceback, as the worker's tracer logs it;
- the result of a job nobody is waiting for yet (`send`: batch-mode commits) is stored in
  the result backend, so a later `wait` finds it; an awaited one (`run`) is not stored:
  the waiter gets the value itself;
- bounded concurrency (`concurrency` threads: `celery.embedded_concurrency`), and `stop()`
  drains the jobs in flight;
- the job runs in a copy of the submitter's context variables, so its log lines also carry
  the request id of the request that sent it.

Not kept: acknowledgements and redelivery (nothing was delivered; a job lost with the
process is lost the same way from the in-memory broker), time limits (the threads pool
enforces none either), task events (off by default; Flower cannot attach to an embedded
registry anyway). Jobs beat schedules, and retries, still go through the broker and the
embedded worker (workers.embedded).

Celery internals leaned on (tests/workers/test_direct.py pins them): the request fields the
retry path reads (`Task.retry` goes through the broker only when the request is not
`called_directly` and not `is_eager`; `signature_from_request` routes by `delivery_info`),
and the auto-retry wrapper being `task.run`.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from celery import Celery, states
from celery.exceptions import Reject, Retry, TaskRevokedError
from celery.signals import task_postrun, task_prerun, task_retry

from pipeline import jobs
from pipeline.errors import JobsUnavailable

__all__ = ["DirectJobs", "Outcome"]

log = logging.getLogger(__name__)

Outcome = Callable[[str, Any], None]
"""`on_done(status, result)`: a Celery state (SUCCESS, FAILURE, REVOKED) and the job's
return value or the exception it raised, called once in the thread that finished the job."""


class DirectJobs:
    """Runs jobs of `app` on `concurrency` threads of its own (see the module)."""

    def __init__(self, app: Celery, concurrency: int, *, name: str = "lading-direct") -> None:
        self._app = app
        self._concurrency = max(1, concurrency)
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._closed = False
        self._hostname = f"{name}@localhost"

    def submit(
        self,
        job: str,
        job_id: str,
        kwargs: dict[str, Any],
        on_done: Outcome | None = None,
        expires: float | None = None,
    ) -> None:
        """Run `job` as `job_id` soon; `on_done` (someone waits) gets its outcome, else its
        result is stored as a worker would store it. `expires` (epoch seconds): a job that
        has not started by then is dropped, as the worker drops an expired message.
        JobsUnavailable once `stop` was called."""
        task = self._app.tasks.get(job)
        queue = jobs.ROUTES.get(job)
        if task is None or queue is None:
            raise ValueError(f"unknown job {job!r}")
        context = contextvars.copy_context()
        with self._lock:
            if self._closed:
                raise JobsUnavailable("the registry is stopping")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix=self._name)
            self._in_flight += 1
            try:
                self._executor.submit(
                    context.run, self._execute, task, queue, job_id, kwargs, on_done, expires
                )
            except BaseException:
                self._in_flight -= 1
                raise

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new jobs and wait up to `timeout` s for those submitted to end (a job
        retried through the broker ends here when its first attempt does)."""
        with self._lock:
            self._closed = True
            drained = self._idle.wait_for(lambda: self._in_flight == 0, timeout)
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=drained, cancel_futures=True)
        if not drained:
            log.warning("direct jobs still running after %ss", timeout)

    @property
    def accepting(self) -> bool:
        """False once `stop` was called."""
        with self._lock:
            return not self._closed

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    # --- in a pool thread ------------------------------------------------------------------

    def _execute(
        self,
        task: Any,
        queue: str,
        job_id: str,
        kwargs: dict[str, Any],
        on_done: Outcome | None,
        expires: float | None,
    ) -> None:
        try:
            status, result = self._attempt(task, queue, job_id, kwargs, on_done is not None, expires)
            if on_done is None:
                return
            if status == states.RETRY:
                # The retry runs on the embedded worker; its result lands in the backend.
                self._await_stored(task, job_id, on_done)
                return
            on_done(status, result)
        except Exception:  # a waiter's bug must not kill the pool thread's accounting
            log.exception("direct job %s: delivering its outcome failed", job_id)
        finally:
            with self._lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.notify_all()

    def _attempt(
        self,
        task: Any,
        queue: str,
        job_id: str,
        kwargs: dict[str, Any],
        awaited: bool,
        expires: float | None,
    ) -> tuple[str, Any]:
        # A waiter wants the result whatever the task declares (as api.jobclient asks in a
        # message); a sent job stores it unless the task ignores results.
        ignore_result = False if awaited else bool(task.ignore_result)
        expiry = datetime.fromtimestamp(expires, UTC) if expires is not None else None
        if expiry is not None and datetime.now(UTC) >= expiry:
            log.info("job %s[%s] expired before it started: dropped", task.name, job_id)
            revoked = TaskRevokedError("expired")
            if not awaited and not ignore_result:
                task.backend.mark_as_revoked(job_id, "expired")
            return states.REVOKED, revoked
        request = {
            "id": job_id,
            "task": task.name,
            "retries": 0,
            "is_eager": False,
            "delivery_info": {
                "exchange": queue,
                "routing_key": queue,
                "priority": None,
                "redelivered": False,
            },
            "hostname": self._hostname,
            "ignore_result": ignore_result,
            "expires": expiry.isoformat() if expiry is not None else None,
            "timelimit": (task.time_limit, task.soft_time_limit),
        }
        task.push_request(request, args=(), kwargs=kwargs, called_directly=False)
        status: str = states.FAILURE
        result: Any = None
        try:
            task_prerun.send(sender=task, task_id=job_id, task=task, args=(), kwargs=kwargs)
            try:
                result = task.run(**kwargs)
                status = states.SUCCESS
            except Retry as retry:
                status, result = states.RETRY, retry
                log.info("Task %s[%s] retry: %s", task.name, job_id, retry)
                task_retry.send(sender=task, request=task.request, reason=retry, einfo=None)
            except Reject as reject:  # the retry could not be published
                result = reject.reason if isinstance(reject.reason, Exception) else reject
                log.error("Task %s[%s] could not be retried: %r", task.name, job_id, result)
            except Exception as exc:
                result = exc
                log.error("Task %s[%s] raised unexpected: %r", task.name, job_id, exc, exc_info=True)
            if not awaited and not ignore_result:
                if status == states.SUCCESS:
                    task.backend.mark_as_done(job_id, result, request=task.request)
                elif status == states.FAILURE:
                    task.backend.mark_as_failure(job_id, result, request=task.request, call_errbacks=False)
        finally:
            try:
                task_postrun.send(
                    sender=task,
                    task_id=job_id,
                    task=task,
                    args=(),
                    kwargs=kwargs,
                    retval=result,
                    state=status,
                )
            finally:
                task.pop_request()
        return status, result

    def _await_stored(self, task: Any, job_id: str, on_done: Outcome) -> None:
        add_callback = getattr(task.backend, "add_result_callback", None)
        if add_callback is None:  # a backend that does not push (tests with others)
            on_done(states.FAILURE, JobsUnavailable("retried job: its result cannot be awaited"))
            return

        def landed(meta: dict[str, Any]) -> None:
            on_done(str(meta.get("status")), meta.get("result"))

        add_callback(job_id, landed)
