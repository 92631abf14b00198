"""Running totals of maintenance work, kept in storage (`paths.maintenance_stats(job)`).

Scrub and garbage collection run in worker processes (or the `lading` CLI), while the
numbers are scraped from the API process's /metrics. Storage is what they share, so every
finished run adds its counts to a small JSON record there and the API reads it at scrape
time. A run updates its record while it still holds the job's exclusive lock, so two
runs never add at the same time; dry runs add nothing (they change nothing either).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from pipeline.errors import PathNotFound, StorageError
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver

log = logging.getLogger("lading.maintenance")

SCRUB = "scrub"
GC = "gc"


def read(driver: StorageDriver, job: str) -> dict[str, int]:
    """The totals of `job` over every run ({} before the first one). A record that cannot
    be parsed reads as empty: it is rebuilt by the next run rather than failing anyone."""
    try:
        raw = json.loads(driver.get_content(paths.maintenance_stats(job)))
    except (PathNotFound, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: int(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def add_run(driver: StorageDriver, job: str, counts: Mapping[str, int]) -> dict[str, int] | None:
    """Add one run's `counts` (and 1 to `runs`) to the record of `job`; the new totals, or
    None when storage refused (logged: the run's own work is done and must not fail)."""
    try:
        totals = read(driver, job)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + int(value)
        totals["runs"] = totals.get("runs", 0) + 1
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record: dict[str, object] = {**totals, "updated_at": stamp}
        driver.put_content(paths.maintenance_stats(job), json.dumps(record, sort_keys=True).encode())
    except StorageError as exc:
        log.warning("could not record %s totals: %s", job, exc)
        return None
    return totals
