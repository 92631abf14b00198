"""Reconcile: finish or forget work that was lost when the broker restarted, and clean up
after a killed garbage collection.

What can soundly be recovered from storage alone:

- Batch-mode blob commits (`paths.pending_commit`, written by the API when it answered 202
  without waiting). The record names the repository, digest and upload session, which is
  all a commit needs. A record older than the commit timeout whose session still holds
  data means its job was lost (or failed): the commit runs again here, inline — it is
  idempotent, so a job that is merely slow loses nothing. A record whose session is gone is
  settled: committed (the blob is linked) or abandoned (cancelled or purged) — either way
  the record is removed. A commit that fails again (digest mismatch) keeps its record,
  marked with the error, so it is not re-hashed on every run.
- Garbage-collection leftovers (trash and candidate markers of a killed run): trashed blobs
  go back, markers are dropped — only while no collection is running.

An upload session without a pending record cannot be committed: only the client knows the
digest it meant, so such sessions are left to the upload purger.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pipeline import paths
from pipeline.blob_commit import commit_blob
from pipeline.digest import Digest
from pipeline.digest_dirs import digests_in
from pipeline.errors import BlobUnknown, PathNotFound, RegistryError
from pipeline.maintenance.gc import LOCK as GC_LOCK
from pipeline.maintenance.gc import recover
from pipeline.maintenance.inventory import iter_repositories
from pipeline.maintenance.locking import exclusive
from pipeline.registry import Registry
from pipeline.uploads import is_upload_id, parse_started_at

Progress = Callable[[int, int | None], None]

LOCK = "_reconcile"


def _records(registry: Registry, repo: str) -> Iterator[tuple[Digest, dict[str, Any]]]:
    driver = registry.driver
    for digest in digests_in(driver, paths.pending_commits_dir(repo)):
        try:
            record = json.loads(driver.get_content(paths.pending_commit(repo, digest)))
        except (PathNotFound, ValueError):
            continue
        if isinstance(record, dict):
            yield digest, record


def _age(record: dict[str, Any], now: float) -> float:
    try:
        return now - parse_started_at(str(record.get("created", ""))).timestamp()
    except ValueError:
        return float("inf")  # unreadable time: old enough to look at


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
        for digest, record in _records(registry, repo):
            seen += 1
            if progress is not None:
                progress(seen, None)
            if "reconciled" in record:
                out["failed_earlier"] += 1
            elif _age(record, now) < stale:
                out["waiting"] += 1
            else:
                outcome = _settle(registry, repo, digest, record, out["failed"])
                if outcome is not None:
                    out[outcome] += 1
    return out


def _settle(
    registry: Registry, repo: str, digest: Digest, record: dict[str, Any], failed: list[dict[str, Any]]
) -> str | None:
    """Commit again or forget one stale record; the outcome's counter name, None if it failed."""
    path = paths.pending_commit(repo, digest)
    upload_id = str(record.get("upload_id", ""))
    if is_upload_id(upload_id) and registry.driver.exists(paths.upload_data(repo, upload_id)):
        try:
            commit_blob(registry, repo, upload_id, str(digest), None)
        except RegistryError as exc:
            record["reconciled"] = {"error": exc.to_payload(), "at": datetime.now(UTC).isoformat()}
            registry.driver.put_content(path, json.dumps(record).encode())
            failed.append({"repository": repo, "digest": str(digest), "error": exc.to_payload()})
            return None
        outcome = "recommitted"
    else:
        try:
            registry.repo_blobs.stat(repo, digest)
            outcome = "committed"
        except BlobUnknown:
            outcome = "abandoned"
    with contextlib.suppress(PathNotFound):
        registry.driver.delete(path)
    return outcome
