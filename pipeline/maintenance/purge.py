"""Upload purging: delete abandoned `_uploads/<uuid>` sessions (distribution's
storage.maintenance.uploadpurging).

A session is abandoned when it was started more than `age` ago AND its data has not been
written within `age` either: a slow multi-day upload that is still receiving chunks is never
cut off just because it started long ago.

Then what writers that died mid-write left in the storage backend itself (S3 multipart
uploads, GCS part objects, Azure uncommitted blobs, filesystem temporary files), last
written more than `age` ago, goes too, through `StorageDriver.purge_unfinished_writes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import PathNotFound
from pipeline.maintenance.locking import exclusive
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.stores.uploads import UploadStatus

Progress = Callable[[int, int | None], None]

LOCK = "_purge_uploads"


def _last_write(registry: Registry, session: UploadStatus) -> float | None:
    """Epoch seconds of the newest write to the session's data (or its directory)."""
    for path in (
        paths.upload_data(session.repository, session.upload_id),
        paths.upload_dir(session.repository, session.upload_id),
    ):
        try:
            return registry.driver.stat(path).modified.timestamp()
        except PathNotFound:
            continue
    return None


def purge_uploads(
    registry: Registry,
    older_than_seconds: float | None = None,
    dry_run: bool | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Remove upload sessions started AND last written more than `older_than_seconds` ago
    (None → storage.maintenance.uploadpurging.age). dry_run: None → that section's dryrun.
    Returns {purged, kept, bytes, dry_run, seconds, sessions: [{repository, upload_id, size,
    started_at}] of the purged ones, unfinished_writes, unfinished_bytes: what dead writers
    left in the backend}, or {"skipped": reason} when a purge is running."""
    purging = registry.settings.storage.upload_purging
    age = purging.age_seconds if older_than_seconds is None else older_than_seconds
    dry = purging.dryrun if dry_run is None else dry_run
    with exclusive(registry, LOCK) as acquired:
        if not acquired:
            return {"skipped": "another upload purge is running"}
        return _purge(registry, float(age), dry, progress)


def _purge(registry: Registry, age: float, dry_run: bool, progress: Progress | None) -> dict[str, Any]:
    started = time.monotonic()
    now = time.time()
    purged: list[dict[str, Any]] = []
    kept = 0
    freed = 0
    seen = 0
    for session in registry.uploads.all_sessions():
        seen += 1
        if progress is not None:
            progress(seen, None)
        last_write = _last_write(registry, session)
        if last_write is None:
            continue  # committed or cancelled while we walked
        if now - session.started_at.timestamp() <= age or now - last_write <= age:
            kept += 1
            continue
        if not dry_run:
            try:
                registry.driver.delete(paths.upload_dir(session.repository, session.upload_id))
            except PathNotFound:
                continue
        freed += session.size
        purged.append(
            {
                "repository": session.repository,
                "upload_id": session.upload_id,
                "size": session.size,
                "started_at": session.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    unfinished = registry.driver.purge_unfinished_writes(datetime.fromtimestamp(now - age, UTC), dry_run)
    return {
        "purged": len(purged),
        "kept": kept,
        "bytes": freed,
        "unfinished_writes": len(unfinished),
        "unfinished_bytes": sum(w.size for w in unfinished),
        "dry_run": dry_run,
        "seconds": round(time.monotonic() - started, 3),
        "sessions": purged,
    }
