"""Reconcile: finish or forget work that was lost when the broker restarted, and clean up
after a killed garbage collection.

What can soundly be recovered from storage alone:

- Batch-mode blob commits (pipeline.stores.pending records, written by the API when it answered
  202 without waiting). The record names the repository, digest and upload session, which is
  all a commit needs. A record older than the commit timeout whose session still holds
  data means its job was lost (or failed): the commit runs again here, inline — it is
  idempotent, so a job that is merely slow loses nothing. A record whose session is gone is
  settled: committed (the blob is linked) or abandoned (cancelled or purged) — either way
  the record is removed. A commit that fails again (digest mismatch) keeps its record,
  marked with the error (`PendingCommits.mark_failed`), so it is not re-hashed on every
  run and a manifest PUT naming the blob answers that error at once.
- Garbage-collection leftovers (trash and candidate markers of a killed run): trashed blobs
  go back, markers are dropped — only while no collection is running.

An upload session without a pending record cannot be committed: only the client knows the
digest it meant, so such sessions are left to the upload purger.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pipeline.blob_commit import commit_blob
from pipeline.errors import BlobUnknown, RegistryError
from pipeline.maintenance.gc import LOCK as GC_LOCK
from pipeline.maintenance.gc import recover
from pipeline.maintenance.inventory import iter_repositories
from pipeline.maintenance.locking import exclusive
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.stores.pending import PendingCommit
from pipeline.stores.uploads import is_upload_id

Progress = Callable[[int, int | None], None]

LOCK = "_reconcile"


def reconcile(
    registry: Registry, stale_after_seconds: float | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Settle batch-mode commit records older than `stale_after_seconds` (None → the
    configured commit timeout) and recover garbage-collection leftovers.

    Returns {pending: {waiting, recommitted, committed, abandoned, failed: [...],
    failed_earlier},
    gc: {restored, markers} | {"skipped": ...}, seconds}."""
    stale = registry.settings.celery.commit_timeout if stale_after_seconds is None else stale_after_seconds
    with exclusive(registry, LOCK) as acquired:
        if not acquired:
            return {"skipped": "another reconcile is running"}
        started = time.monotonic()
        pending = _settle_pending(registry, float(stale), progress)
        with exclusive(registry, GC_LOCK) as gc_free:
            leftovers: dict[str, Any] = (
                dict(recover(registry)) if gc_free else {"skipped": "garbage collection is running"}
            )
        return {"pending": pending, "gc": leftovers, "seconds": round(time.monotonic() - started, 3)}


def _settle_pending(registry: Registry, stale: float, progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "waiting": 0,
        "recommitted": 0,
        "committed": 0,
        "abandoned": 0,
        "failed": [],
        "failed_earlier": 0,
    }
    now = time.time()
    seen = 0
    for repo in iter_repositories(registry.driver):
        for record in registry.pending.records(repo):
            seen += 1
            if progress is not None:
                progress(seen, None)
            if record.failed is not None:
                out["failed_earlier"] += 1
            elif record.age(now) < stale:
                out["waiting"] += 1
            else:
                outcome = _settle(registry, record, out["failed"])
                if outcome is not None:
                    out[outcome] += 1
    return out


def _settle(registry: Registry, record: PendingCommit, failed: list[dict[str, Any]]) -> str | None:
    """Commit again or forget one stale record; the outcome's counter name, None if it failed
    (the record is then kept, marked with the error: the API answers it at once)."""
    repo, digest = record.repository, record.digest
    if is_upload_id(record.upload_id) and registry.driver.exists(paths.upload_data(repo, record.upload_id)):
        try:
            commit_blob(registry, repo, record.upload_id, str(digest), None)
        except RegistryError as exc:
            registry.pending.mark_failed(record, exc)
            failed.append({"repository": repo, "digest": str(digest), "error": exc.to_payload()})
            return None
        outcome = "recommitted"
    else:
        try:
            registry.repo_blobs.stat(repo, digest)
            outcome = "committed"
        except BlobUnknown:
            outcome = "abandoned"
    registry.pending.clear(repo, digest)
    return outcome
