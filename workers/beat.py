"""The beat schedule of Lading's maintenance jobs, driven by settings.

Only one `celery beat` may run per schedule; each maintenance job still takes its own lock,
so a duplicate trigger is harmless. An entry expires after one interval, so a backlog
(workers down for a day) runs each job once when they return, not once per missed tick.
The jobs read their parameters from the worker's settings; they take no kwargs here.
"""

from __future__ import annotations

from typing import Any

from pipeline import jobs
from pipeline.config import Settings


def _entry(job: str, interval: float) -> dict[str, Any]:
    return {
        "task": job,
        "schedule": float(interval),
        "kwargs": {},
        "options": {"queue": jobs.ROUTES[job], "expires": float(interval)},
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """`beat_schedule` entries: scrub and gc when enabled, upload purging when enabled
    (distribution's storage.maintenance.uploadpurging), reconcile always."""
    maintenance = settings.maintenance
    purging = settings.storage.upload_purging
    schedule: dict[str, dict[str, Any]] = {}
    if maintenance.scrub_enabled:
        schedule["lading-scrub"] = _entry(jobs.SCRUB, maintenance.scrub_interval_seconds)
    if purging.enabled:
        schedule["lading-purge-uploads"] = _entry(jobs.PURGE_UPLOADS, purging.interval_seconds)
    if maintenance.gc_enabled:
        schedule["lading-garbage-collect"] = _entry(jobs.GARBAGE_COLLECT, maintenance.gc_interval_seconds)
    if any(u.ttl_seconds > 0 for u in settings.proxy.upstreams):
        # Pull-through cache expiry: often enough that content outlives its ttl by at most a tenth.
        shortest = min(u.ttl_seconds for u in settings.proxy.upstreams if u.ttl_seconds > 0)
        schedule["lading-proxy-expire"] = _entry(jobs.PROXY_EXPIRE, max(60.0, min(3600.0, shortest / 10)))
    schedule["lading-reconcile"] = _entry(jobs.RECONCILE, maintenance.reconcile_interval_seconds)
    return schedule
