"""One thin Celery task per job name, and the delivery policy each one runs under.

A task only turns primitive kwargs into a call of `pipeline.handlers.run_job` on the
worker process's one `Registry`; everything it knows about Celery is the policy table
below, declared on the task decorator:

- ingest / verify / notify jobs are acknowledged late and re-queued when the process
  running them dies (`acks_late` + `reject_on_worker_lost`); every job is idempotent, so a
  redelivery repeats work and never corrupts or loses it.
- maintenance jobs are acknowledged on receipt: beat triggers them again on schedule, and a
  multi-hour scan must not hold a message for hours.
- advance-digest jobs are acknowledged on receipt and store no result when sent fire and
  forget: a lost one only means the commit hashes more (`JobPolicy.store_result`).
- only `StorageUnavailable` (transient storage failure) is retried, with exponential
  backoff and full jitter; `JobPolicy.retry_for` is where a job adds its own retryable error.
- time limits are enforced by the prefork pool only (threads and solo ignore them).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from redis.exceptions import RedisError

from pipeline import jobs
from pipeline.config import Settings
from pipeline.errors import DeliveryFailed, JobFailed, StorageUnavailable
from pipeline.handlers import run_job
from pipeline.infra.coordination import coordination_for
from pipeline.registry import Registry, build_registry
from pipeline.stores.deadletter import DeadLetters
from workers.leases import LEASE

log = logging.getLogger(__name__)

HOUR = 3600.0


@dataclass(frozen=True)
class JobPolicy:
    """How one job is delivered, retried and bounded."""

    soft_time_limit: float  # SoftTimeLimitExceeded raised inside the job (prefork only)
    time_limit: float  # the pool process is killed (prefork only)
    max_retries: int  # StorageUnavailable retries before the job fails
    retry_backoff: int  # first retry countdown in seconds; doubles each time
    retry_backoff_max: int  # cap on one countdown (before jitter)
    acks_late: bool = True
    # False: a sent (fire-and-forget) job's result is not stored; a client that runs the
    # job and waits for it still gets one (api.jobclient asks for it in the message).
    store_result: bool = True
    # What is retried (a notification delivery adds DeliveryFailed: endpoint unreachable).
    retry_for: tuple[type[Exception], ...] = (StorageUnavailable,)


# A commit re-reads what the saved hash state has not covered and moves the data: a
# multi-GB blob on slow storage takes minutes, so an hour is the bound, not the norm.
_BIG_BLOB = JobPolicy(
    soft_time_limit=HOUR, time_limit=HOUR + 60, max_retries=5, retry_backoff=1, retry_backoff_max=30
)
# An advance only saves a hash state the commit may use: nobody waits for it, and one that
# is lost (acknowledged on receipt, its worker killed) only means the commit hashes more.
# So no result is stored and no redelivery bookkeeping or delivery count is paid for it.
_ADVANCE = JobPolicy(
    soft_time_limit=HOUR,
    time_limit=HOUR + 60,
    max_retries=5,
    retry_backoff=1,
    retry_backoff_max=30,
    acks_late=False,
    store_result=False,
)
_VERIFY_BLOB = JobPolicy(
    soft_time_limit=HOUR, time_limit=HOUR + 60, max_retries=5, retry_backoff=1, retry_backoff_max=60
)
# Bounded by the 4 MiB manifest and one stat per reference, but it may wait for the
# repository lock behind other commits.
_MANIFEST = JobPolicy(
    soft_time_limit=900, time_limit=960, max_retries=5, retry_backoff=1, retry_backoff_max=60
)
# Maintenance walks the whole store and is re-triggered by beat: acknowledged on receipt.
_MAINTENANCE = JobPolicy(
    soft_time_limit=6 * HOUR,
    time_limit=6 * HOUR + 120,
    max_retries=3,
    retry_backoff=30,
    retry_backoff_max=600,
    acks_late=False,
)
# One webhook delivery is one short HTTP request; an endpoint that is down is retried 15
# times, countdowns 2 s doubling up to 10 min: ~75 min at most, ~40 min on average (jitter).
_NOTIFY = JobPolicy(
    soft_time_limit=60,
    time_limit=90,
    max_retries=15,
    retry_backoff=2,
    retry_backoff_max=600,
    retry_for=(StorageUnavailable, DeliveryFailed),
)

# A proxy fetch is one upstream download (a blob: as long as a big layer takes on the
# network); an unreachable upstream is answered by the job itself, never retried.
_PROXY_FETCH = JobPolicy(
    soft_time_limit=HOUR, time_limit=HOUR + 60, max_retries=3, retry_backoff=1, retry_backoff_max=10
)

POLICIES: dict[str, JobPolicy] = {
    jobs.COMMIT_BLOB: _BIG_BLOB,
    jobs.ADVANCE_DIGEST: _ADVANCE,
    jobs.COMMIT_MANIFEST: _MANIFEST,
    jobs.TARSUM: _VERIFY_BLOB,
    jobs.DEEP_VERIFY: _VERIFY_BLOB,
    jobs.SCRUB: _MAINTENANCE,
    jobs.PURGE_UPLOADS: _MAINTENANCE,
    jobs.GARBAGE_COLLECT: _MAINTENANCE,
    jobs.RECONCILE: _MAINTENANCE,
    jobs.NOTIFY_EVENT: _NOTIFY,
    jobs.PROXY_MANIFEST: _PROXY_FETCH,
    jobs.PROXY_BLOB: _PROXY_FETCH,
    jobs.PROXY_WARM: _MAINTENANCE,
    jobs.PROXY_EXPIRE: _MAINTENANCE,
}


def visibility_timeout() -> int:
    """Seconds a delivered, unacknowledged message stays invisible (Redis broker): the
    lease of a held message, renewed while its worker lives (workers.leases), so a killed
    worker's jobs come back within it instead of after the longest job's time limit."""
    return LEASE


class RegistryHolder:
    """Builds the worker process's one `Registry` on first use (after a prefork fork, so
    no connection is shared between processes), or hands out the one it was given."""

    def __init__(self, factory: Callable[[], Registry], registry: Registry | None = None) -> None:
        self._factory = factory
        self._registry = registry
        self._lock = threading.Lock()

    def get(self) -> Registry:
        registry = self._registry
        if registry is None:
            with self._lock:
                if self._registry is None:
                    self._registry = self._factory()
                registry = self._registry
        return registry


class DeliveryGuard:
    """Counts the redeliveries of late-acknowledged jobs in the coordination Redis and
    parks a job started more than `MAX_DELIVERIES` times (pipeline.stores.deadletter): a
    job that kills its process is not redelivered forever. No Redis (embedded mode): no
    guard — a job that kills the process kills the whole registry there anyway.

    A first delivery costs nothing: only a message the broker delivers again is counted
    (its `delivery_info["redelivered"]`, which kombu's Redis transport sets on every
    message it puts back — a rejected one, a dead worker's after its lease, a closed
    channel's — and RabbitMQ sets natively; Celery reads the same flag for
    `worker_deduplicate_successful_tasks`). So the count of a job that died N times is N
    at its N+1st start, as when every start was counted, one Redis round trip per job
    cheaper (tests/workers/test_poison.py)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._letters: DeadLetters | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.enabled = not settings.celery.embedded and coordination_for(settings).redis is not None

    def letters(self) -> DeadLetters | None:
        if not self.enabled:
            return None
        with self._lock:
            if self._letters is None or self._pid != os.getpid():  # one client per process
                target = coordination_for(self._settings).redis
                assert target is not None
                self._letters = DeadLetters(target.client())
                self._pid = os.getpid()
            return self._letters

    def admit(self, name: str, request: Any, kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """None if the job may run; else the failed envelope of the job, now parked."""
        letters = self.letters()
        job_id = getattr(request, "id", None)
        if letters is None or not job_id:
            return None
        delivery = getattr(request, "delivery_info", None) or {}
        if not delivery.get("redelivered"):
            return None  # a first start; if its process dies, the job comes back redelivered
        attempt = int(getattr(request, "retries", 0) or 0)
        try:
            # Redeliveries so far, this one included: the starts are one more.
            died, previous = letters.start(job_id, attempt, str(getattr(request, "hostname", "") or ""))
            if died + 1 <= letters.max_deliveries:
                return None
            error = f"the process running it died {died} times (last on {previous or 'an unknown worker'})"
            queue = str(delivery.get("routing_key") or jobs.ROUTES.get(name, ""))
            letters.park(job_id, name, kwargs, died, error, queue)
        except RedisError as exc:
            log.warning("could not count the deliveries of job %s: %s", job_id, exc)
            return None
        log.error("job %s (%s) parked: %s; see `lading jobs dead`", job_id, name, error)
        return jobs.failed(
            JobFailed({"job_id": job_id, "reason": "the job failed repeatedly and was set aside"})
        )


_GUARDS: weakref.WeakKeyDictionary[Celery, DeliveryGuard] = weakref.WeakKeyDictionary()


def guard_of(app: Celery) -> DeliveryGuard | None:
    """The delivery guard `register_tasks` gave `app`."""
    return _GUARDS.get(app)


def register_tasks(
    app: Celery,
    settings: Settings,
    registry: Registry | None = None,
    factory: Callable[[], Registry] | None = None,
) -> RegistryHolder:
    """Register one task per name in `pipeline.jobs.ALL_JOBS` on `app`. Without a
    `registry`, each worker process builds its own on its first job with `factory`
    (lading.composition passes one), by default `pipeline.registry.build_registry`."""
    holder = RegistryHolder(factory or (lambda: build_registry(settings)), registry)
    missing = set(jobs.ALL_JOBS) - set(POLICIES)
    if missing:
        raise RuntimeError(f"no delivery policy for jobs {sorted(missing)}")
    guard = _GUARDS[app] = DeliveryGuard(settings)
    for name in jobs.ALL_JOBS:
        register_job(app, name, POLICIES[name], _runner(holder, name), guard)
    return holder


def _runner(holder: RegistryHolder, name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def run(kwargs: dict[str, Any]) -> dict[str, Any]:
        return run_job(holder.get(), name, kwargs)

    return run


def register_job(
    app: Celery,
    name: str,
    policy: JobPolicy,
    run: Callable[[dict[str, Any]], dict[str, Any]],
    guard: DeliveryGuard | None,
) -> None:
    """Register task `name` running `run(kwargs)` under `policy`; late-acknowledged jobs
    go through `guard` first (a job redelivered too often is parked, not run)."""

    def job(self: Any, **kwargs: Any) -> dict[str, Any]:
        if guard is not None and policy.acks_late:
            parked = guard.admit(name, self.request, kwargs)
            if parked is not None:
                return parked
        return run(kwargs)

    job.__name__ = job.__qualname__ = name.rsplit(".", 1)[-1]
    job.__doc__ = f"Runs the {name} job (pipeline.handlers) on queue {jobs.ROUTES.get(name, '-')}."
    app.task(
        name=name,
        bind=True,
        shared=False,  # registered on this app only, not on every app the process creates
        acks_late=policy.acks_late,
        reject_on_worker_lost=policy.acks_late,
        autoretry_for=policy.retry_for,
        retry_backoff=policy.retry_backoff,
        retry_backoff_max=policy.retry_backoff_max,
        retry_jitter=True,
        max_retries=policy.max_retries,
        soft_time_limit=policy.soft_time_limit,
        time_limit=policy.time_limit,
        ignore_result=not policy.store_result,
        track_started=False,
    )(job)
